//! The Kubernetes test tier's harness: tests against a real kube-apiserver and etcd.
//!
//! `scripts/test-kube` builds kube-apiserver and etcd from their Go modules (`tools/kube`), starts
//! them on loopback with `scripts/kube-cluster` (real PKI, client-certificate and service-account
//! token authentication, authorization `Node,RBAC`, kubeadm's admission plugins), installs the
//! mesh charts into `istio-system`, and runs this crate's tests with `AMBIT_KUBE_ENV` naming the
//! file of `KEY=VALUE` lines that describes the cluster ([`Env`]). Outside that script every test
//! here fails at once, saying so: none of them passes by skipping.
//!
//! - [`Cluster`]: the admin's client, namespaces, service accounts, TokenRequest tokens,
//!   kubeconfigs of service accounts, `kubectl` and `helm` run with a given kubeconfig, restart of
//!   the API server.
//! - [`TestPod`] and [`Kubelet`]: pods as a cluster has them, and the node's part. Pods are
//!   created with `spec.nodeName` (no scheduler runs); a [`Kubelet`] registers its Node and writes
//!   pod status (`status.podIP`, Ready) through the status subresource and mints projected tokens,
//!   with the node's own client certificate (`system:node:<name>`), so the Node authorizer and
//!   NodeRestriction judge it exactly as they judge a kubelet.
//! - [`RoleProcess`]: an `ambit` role (control plane, node proxy, capture agent) as a process
//!   pointed at the API server; its pid is registered so the script stops it if the test cannot.
//! - [`PrivateCluster`]: a second API server and etcd for a test that changes cluster-wide objects
//!   (CRDs, ClusterRoles) and must see them alone, such as installing and uninstalling the charts.
//!
//! What stands in for the controllers that do not run here (no controller-manager, scheduler or
//! kubelet):
//! - service-account controller: [`Cluster::namespace`] creates the `default` ServiceAccount;
//!   other service accounts are created by the test or a chart;
//! - root-CA publisher: [`Cluster::namespace`] creates ConfigMap `kube-root-ca.crt` with the
//!   cluster CA, as the controller-manager's publisher does;
//! - scheduler: pods carry `spec.nodeName`; kubelet: [`Kubelet`];
//! - endpoint reconciler: the API server advertises 127.0.0.1, which its reconciler refuses, so it
//!   runs with `--endpoint-reconciler-type=none` and Service `kubernetes` has no endpoints;
//! - ClusterRole aggregation: nothing, so `view`, `edit` and `admin` grant nothing; tests bind
//!   Roles of their own;
//! - namespace controller and garbage collector: nothing; tests use fresh names
//!   ([`unique_name`]) instead of deleting and reusing namespaces.
//!
//! Invariant: every process a test starts is stopped when its handle drops, and its pid file in
//! `AMBIT_KUBE_PIDS` lets `scripts/test-kube` stop it even when the test process dies first.

mod cluster;
mod env;
mod kubelet;
mod pid;
mod private;
mod process;

pub use cluster::{Cluster, TokenOptions, ToolRun, unique_name};
pub use env::{ENV_VAR, Env};
pub use kubelet::{Kubelet, TestPod};
pub use private::PrivateCluster;
pub use process::RoleProcess;
