// The etcd 3.7.3 server, built from the Go module proxy for the harness's version tests
// (scripts/etcd-version.sh 3.7 builds it into target/etcd/v3.7/etcd).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
