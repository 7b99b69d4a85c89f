#!/usr/bin/env bash
# Every test, in every language, against real etcd servers that the suites start themselves.
# Installs what is missing first (scripts/setup.sh). Exits non-zero when any suite fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="$PWD/target"
export CARGO_TERM_COLOR=never

bash scripts/setup.sh test || { echo "setup failed"; exit 1; }

results=()
failed=0
step() {
  local name=$1; shift
  echo
  echo "=== $name: $*"
  local start=$SECONDS
  if "$@"; then
    results+=("PASS  $name ($((SECONDS - start))s)")
  else
    results+=("FAIL  $name ($((SECONDS - start))s)")
    failed=$((failed + 1))
  fi
}

step "rust format" cargo fmt --all -- --check
step "rust lint" cargo clippy --all-targets -- -D warnings
step "rust tests (core, harness, ffi)" cargo test
step "c abi (header check, C tests, valgrind, C++ example)" bash tests/c/run.sh
step "python" bash python/run-tests.sh
step "go" bash go/run-tests.sh
if [ -f tests/interop/run.sh ]; then
  step "cross-language interop and faults" bash tests/interop/run.sh
fi

echo
echo "=== summary"
printf '%s\n' "${results[@]}"
echo "suites: $(( ${#results[@]} - failed )) passed, $failed failed"
[ "$failed" -eq 0 ]
