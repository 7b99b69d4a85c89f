#!/usr/bin/env bash
# The Go package's whole check, against real etcd servers started by tests/harness:
#
#   1. builds the static C library and the harness (cargo build -p etcd-registry-ffi -p etcd-harness,
#      the debug profile the C suite builds too: target/debug/libetcd_registry.a is what the
#      package links by default)
#   2. gofmt and go vet, for the package and the examples
#   3. go test -race -count=1 ./... (the tests start their own etcd through etcd-harness serve)
#   4. builds the examples (examples/go), runs basic and migrate under `etcd-harness run`, and
#      the retry example while etcd is killed and started again
#
#   go/run-tests.sh [extra go test arguments, e.g. -run Watch -v]
#
# Exits non-zero on any failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
# The package links $repo/target/debug/libetcd_registry.a (a path fixed in go/link_debug.go).
export CARGO_TARGET_DIR="$repo/target"
export CGO_ENABLED=1 GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:--mod=readonly}"

step() { printf '\n=== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

step "build libetcd_registry (debug, static) and etcd-harness"
cargo build -p etcd-registry-ffi -p etcd-harness
export ETCD_HARNESS_BIN="$CARGO_TARGET_DIR/debug/etcd-harness"

# The Go build cache does not notice a rebuilt C library or a changed header
# (golang/go#24355): make them part of the cgo flags, so a change recompiles and relinks.
lib="$CARGO_TARGET_DIR/debug/libetcd_registry.a"
fingerprint="$(stat -c '%s-%Y' "$lib")-$(sha256sum include/etcd_registry.h | cut -c1-16)"
export CGO_CFLAGS="${CGO_CFLAGS:--O2 -g} -DETCD_REGISTRY_LIBRARY_FINGERPRINT=$fingerprint"

step "gofmt, go vet"
unformatted="$(gofmt -l go examples/go)"
[ -z "$unformatted" ] || fail "not gofmt-ed: $unformatted"
(cd go && go vet ./...) || fail "go vet (go)"
(cd examples/go && go vet ./...) || fail "go vet (examples/go)"

step "go test -race against etcd"
(cd go && go test -race -count=1 -timeout 6m "$@" ./...) || fail "go test"

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

step "Go: all passed"
