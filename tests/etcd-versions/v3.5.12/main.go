// The etcd 3.5.12 server, built from the Go module proxy for the harness's version tests
// (scripts/etcd-version.sh 3.5.12 builds it into target/etcd/v3.5.12/etcd): a 3.5 release with
// etcd-io/etcd#17507 (progress requests ignored after one deferred), which 3.5.8-3.5.12 have.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
