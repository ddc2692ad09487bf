//go:build tools

// Package tools pins the kube-apiserver command so `go mod tidy` keeps its dependencies;
// scripts/test-kube builds it with `go build k8s.io/kubernetes/cmd/kube-apiserver`.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
