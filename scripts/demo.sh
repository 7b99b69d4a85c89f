#!/usr/bin/env bash
# The main job in one command: starts a throwaway etcd (free loopback port, temporary data
# directory), registers three nodes, discovers them by listing and watching, and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
# A one-off build: no incremental cache (it would double target/ on disk for nothing).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Two builds: selecting an --example leaves out the binaries of every package, harness included.
cargo build -q -p etcd-harness --bin etcd-harness
cargo build -q -p etcd-registry --example demo
exec target/debug/etcd-harness run -- target/debug/examples/demo
