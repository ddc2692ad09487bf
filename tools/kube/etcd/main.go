// Command etcd is the etcd server, for the Kubernetes test tier (scripts/test-kube).
//
// It is etcd's own entry point (go.etcd.io/etcd/server/v3/etcdmain) with its own flags, built in the
// same module as kube-apiserver so that both use the etcd version that Kubernetes release pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
