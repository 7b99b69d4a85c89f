module github.com/etcd-registry/etcd-registry/bench/go

go 1.24

require github.com/etcd-registry/etcd-registry/go v0.0.0

replace github.com/etcd-registry/etcd-registry/go => ../../go
