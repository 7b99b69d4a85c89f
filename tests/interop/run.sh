#!/usr/bin/env bash
# Builds the four interop programs and runs the cross-language tests against real etcd.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export CARGO_TARGET_DIR="$ROOT/target"
OUT="$ROOT/target/interop"
mkdir -p "$OUT"

cargo build -q -p etcd-harness -p etcd-registry-ffi -p etcd-registry --example interop-cli
. scripts/lib.sh
# shellcheck disable=SC2086 # a list of linker flags
cc -std=c11 -Wall -Wextra -Werror -O1 -I include tests/interop/cli_c.c target/debug/libetcd_registry.a \
   $ETCD_REGISTRY_SYSTEM_LIBS -o "$OUT/cli_c"
# The Go package finds the C library through pkg-config: point it at this build.
eval "$(scripts/go-env.sh debug)"
(cd tests/interop/cli_go && go vet . && go build -o "$OUT/cli_go" .)
if ! python3 -c "import etcd_registry" 2>/dev/null; then
  python3 -m pip install -q ./python
fi
exec python3 -m pytest -q -p no:cacheprovider tests/interop "$@"
