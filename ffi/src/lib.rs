//! C ABI over etcd-registry (in progress).
