module github.com/etcd-registry/etcd-registry/go

go 1.24
