//! Python module over etcd-registry (in progress).
