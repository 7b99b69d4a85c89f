#!/usr/bin/env bash
# Builds and installs the Python module (pip install ./python), builds the shared etcd harness,
# checks the type stubs against the module (mypy stubtest) and runs the pytest suite against
# real etcd. Exits non-zero on any failure. Extra arguments go to pytest (e.g. -k watch -x).
#
#   python/run-tests.sh                 # everything
#   SKIP_BUILD=1 python/run-tests.sh    # reuse the installed module and harness
#   ETCD_REGISTRY_PY_PROFILE=release python/run-tests.sh   # test an optimized build
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# One target dir for the workspace: the module shares the core's build with cargo and the harness.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
PYTHON="${PYTHON:-python3}"
# The dev profile reuses the workspace's debug build of the core; pip's default is release.
profile="${ETCD_REGISTRY_PY_PROFILE:-dev}"

need_module() {  # need_module MODULE PIP-SPEC: installs PIP-SPEC when MODULE cannot be imported
    "$PYTHON" -c "import $1" 2>/dev/null || "$PYTHON" -m pip install --quiet "$2"
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    command -v protoc >/dev/null || {
        echo "run-tests.sh: protoc is missing (the core's etcd client needs it): apt-get install protobuf-compiler" >&2
        exit 1
    }
    need_module maturin 'maturin>=1.5,<2'
    echo "== pip install ./python (cargo profile $profile, target $CARGO_TARGET_DIR)"
    MATURIN_PEP517_ARGS="--profile $profile" "$PYTHON" -m pip install --quiet --no-build-isolation \
        --force-reinstall --no-deps "$here" 2>&1 | { grep -v "Running pip as the 'root' user" || true; }
    echo "== cargo build -p etcd-harness"
    (cd "$repo" && cargo build --quiet -p etcd-harness)
fi
export ETCD_HARNESS_BIN="${ETCD_HARNESS_BIN:-$CARGO_TARGET_DIR/debug/etcd-harness}"
# Keep mypy's cache out of the source tree.
export MYPY_CACHE_DIR="${MYPY_CACHE_DIR:-$CARGO_TARGET_DIR/mypy-cache}"
need_module pytest pytest
need_module mypy mypy

# Run from the repository root: from python/ the source tree would shadow the installed package.
cd "$repo"
echo "== mypy stubtest etcd_registry"
# (from the target dir: stubtest writes its cache to the working directory)
(cd "$CARGO_TARGET_DIR" && "$PYTHON" -m mypy.stubtest etcd_registry --allowlist "$here/stubtest-allowlist.txt")
echo "== mypy (examples and tests type-check against the stubs)"
"$PYTHON" -m mypy --no-error-summary --ignore-missing-imports \
    "$repo/examples/python" "$here/tests"
echo "== pytest"
exec "$PYTHON" -m pytest "$here/tests" -q -p no:cacheprovider "$@"
