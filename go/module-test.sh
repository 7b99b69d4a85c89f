#!/usr/bin/env bash
# The outside-the-repository path of go/README.md, done as a user would, in a temporary directory:
#
#   1. installs the C library once: ffi/install.sh --prefix PREFIX (one command)
#   2. a new module (go mod init example.com/svc) adds this package with
#      go mod edit -replace ...=<repo>/go (publishing is not possible here; a published
#      version would be `go get github.com/etcd-registry/etcd-registry/go@vX.Y.Z`), go mod tidy
#   3. go build with only PKG_CONFIG_PATH=PREFIX/lib/pkgconfig set: no build tag, no CGO_* flag,
#      no edit inside the module (checked with git afterwards)
#   4. runs the service under `etcd-harness run` without LD_LIBRARY_PATH: it registers, lists
#      and watches a node and prints Version(), which must be Cargo.toml's version
#
#   go/module-test.sh     (go/run-tests.sh runs it; needs target/debug/libetcd_registry.{a,so}
#                          and target/debug/etcd-harness: cargo build -p etcd-registry-ffi -p etcd-harness)
#
# The service is built with an empty GOCACHE, as on a new machine: cgo does not hash pkg-config's
# output into its cache keys, so a warm cache could hand back a package built against another
# prefix (see go/README.md).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
harness="${ETCD_HARNESS_BIN:-$target/debug/etcd-harness}"
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
# shellcheck source=../scripts/lib.sh
. "$repo/scripts/lib.sh"

work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
module_before="$(git -C "$repo" status --porcelain -- go)"

echo "== 1. ffi/install.sh --prefix $work/prefix (the debug build this suite made; users: release)"
"$repo/ffi/install.sh" --prefix "$work/prefix" --profile debug --no-build

echo "== 2. a service outside the repository: go mod init, go mod edit -replace, go mod tidy"
mkdir "$work/svc"
cd "$work/svc"
cat > main.go <<'GO'
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	etcdregistry "github.com/etcd-registry/etcd-registry/go"
)

func main() {
	endpoints := strings.Split(os.Getenv("ETCD_ENDPOINTS"), ",")
	reg, err := etcdregistry.NewEtcdRegistry(endpoints, "/services", "", "", 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	watch, err := reg.WatchService(ctx, "svc")
	if err != nil {
		log.Fatal(err)
	}
	defer watch.Close()
	node := etcdregistry.Node{Name: "node-1", Info: map[string]string{"address": "10.0.0.5:8080"}}
	done, errChan, err := reg.RegisterNode(ctx, "svc", node, 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	select {
	case <-done:
	case err := <-errChan:
		log.Fatalf("registration failed: %v", err)
	}
	nodes, err := reg.GetServiceNodes("svc")
	if err != nil {
		log.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].Name != "node-1" || nodes[0].Info["address"] != "10.0.0.5:8080" {
		log.Fatalf("listed %v", nodes)
	}
	for event := range watch.Events() {
		if event.Node.Name == "node-1" {
			fmt.Printf("watched %s %s\n", event.Type, event.Node.Name)
			break
		}
	}
	fmt.Printf("listed %s %v\n", nodes[0].Name, nodes[0].Info)
	fmt.Printf("version %s\n", etcdregistry.Version())
}
GO
clean_env=(env -u CGO_CFLAGS -u CGO_LDFLAGS -u GOFLAGS -u LD_LIBRARY_PATH
    GOCACHE="$work/gocache" GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS=-mod=mod)
"${clean_env[@]}" go mod init example.com/svc
"${clean_env[@]}" go mod edit -replace "github.com/etcd-registry/etcd-registry/go=$repo/go"
"${clean_env[@]}" go mod tidy
grep -q 'github.com/etcd-registry/etcd-registry/go' go.mod || fail "go mod tidy did not require the package"

echo "== 3. go build with PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig only"
"${clean_env[@]}" PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig" go build -o svc .
if ldd ./svc | grep libetcd_registry >/dev/null; then fail "the service links the shared library"; fi
[ "$(git -C "$repo" status --porcelain -- go)" = "$module_before" ] || fail "building changed files inside the module"

echo "== 4. run it under etcd-harness, without LD_LIBRARY_PATH"
out="$(env -u LD_LIBRARY_PATH "$harness" run -- ./svc)" || fail "the service failed: $out"
printf '%s\n' "$out" | sed 's/^/    /'
grep -qx "listed node-1 map\[address:10.0.0.5:8080\]" <<<"$out" || fail "the service did not list its node"
grep -qx "watched added node-1" <<<"$out" || fail "the service did not watch its node"
version="$("$repo/scripts/version.sh")"
grep -qx "version $version" <<<"$out" || fail "Version() is not $version"
echo "== Go module outside the repository: passed"
