#!/usr/bin/env bash
# The Go package's whole check, against real etcd servers started by tests/harness:
#
#   1. builds the static C library and the harness (cargo build -p etcd-registry-ffi -p etcd-harness,
#      the debug profile the C suite builds too) and points pkg-config at that build
#      (ffi/install.sh --in-tree writes target/debug/pkgconfig/etcd_registry-static.pc)
#   2. gofmt and go vet, for the package and the examples
#   3. go test -race -count=1 ./... (the tests start their own etcd through etcd-harness serve),
#      then go vet and go test -race in go/grpcresolver (a module of its own: it needs grpc-go)
#   4. builds the examples (examples/go), runs basic and migrate under `etcd-harness run`, and
#      the retry example while etcd is killed and started again; then the grpc example
#      (examples/go/grpc)
#   5. go/module-test.sh: a service in a temporary directory outside the repository installs the
#      library with ffi/install.sh, adds the module, builds with only PKG_CONFIG_PATH, and runs
#
#   go/run-tests.sh [extra go test arguments, e.g. -run Watch -v]
#
# Exits non-zero on any failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../scripts/lib.sh
. "$repo/scripts/lib.sh"
cd "$repo"
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
export CGO_ENABLED=1 GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:--mod=readonly}"

step "build libetcd_registry (debug, static) and etcd-harness"
build_ffi_and_harness
export ETCD_HARNESS_BIN="$CARGO_TARGET_DIR/debug/etcd-harness"
# The package finds the library through pkg-config (go/link.go): PKG_CONFIG_PATH points at this
# build, and CGO_CFLAGS carries a fingerprint of the library and header, which the Go build cache
# does not notice (golang/go#24355), so a change recompiles and relinks.
eval "$(scripts/go-env.sh debug)"

step "gofmt, go vet"
unformatted="$(gofmt -l go examples/go)"
[ -z "$unformatted" ] || fail "not gofmt-ed: $unformatted"
(cd go && go vet ./...) || fail "go vet (go)"
(cd examples/go && go vet ./...) || fail "go vet (examples/go)"

step "go test -race against etcd"
(cd go && go test -race -count=1 -timeout 6m "$@" ./...) || fail "go test"
step "go/grpcresolver: go vet, go test -race (real gRPC servers and clients)"
(cd go/grpcresolver && go vet ./... && go test -race -count=1 -timeout 6m "$@" ./...) || fail "go/grpcresolver"

step "examples"
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
(cd examples/go && go build -o "$bin/basic" ./basic && go build -o "$bin/retry" ./retry \
    && go build -o "$bin/migrate" ./migrate) || fail "building the examples"
"$ETCD_HARNESS_BIN" run -- "$bin/basic" | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "examples/go/basic"
step "migrate example (a program written for go.lumeweb.com/etcd-registry)"
"$ETCD_HARNESS_BIN" run -- "$bin/migrate" 2>&1 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "examples/go/migrate"
step "retry example (etcd killed and started again)"
"$ETCD_HARNESS_BIN" run -- tests/retry-demo-check.sh "Registered node localhost:50000" "re-registered node localhost:50000" "Closed" -- "$bin/retry" -duration 120s || fail "examples/go/retry"

step "grpc example (examples/go/grpc, a module of its own: servers and a client via grpcresolver)"
(cd examples/go/grpc && go vet ./... && go build -o "$bin/grpc" .) || fail "building examples/go/grpc"
"$ETCD_HARNESS_BIN" run -- "$bin/grpc" | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "examples/go/grpc"

step "the package from a module outside the repository (go/module-test.sh)"
go/module-test.sh || fail "go/module-test.sh"

step "Go: all passed"
