# Shell helpers shared by the repository's scripts, written once. Source it:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"     (adjust the path)
#
# Defines ETCD_REGISTRY_ROOT, CBINDGEN_VERSION, ETCD_REGISTRY_SYSTEM_LIBS, and step, fail,
# build_ffi_and_harness, test_passed. Sets no shell options: the caller decides.

ETCD_REGISTRY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The cbindgen that generates include/etcd_registry.h (its output differs between versions).
CBINDGEN_VERSION=0.29.4

# The system libraries a program linking the static libetcd_registry.a needs (Rust's std on
# Linux with glibc), also written into etcd_registry.pc and the CMake package by ffi/install.sh.
ETCD_REGISTRY_SYSTEM_LIBS="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

# step TEXT...: a heading in a script's output.
step() { printf '\n=== %s\n' "$*"; }

# fail TEXT...: says what failed on stderr and exits 1.
fail() { echo "FAIL: $*" >&2; exit 1; }

# build_ffi_and_harness: the C library (static and shared, debug) and the etcd-harness program,
# in $CARGO_TARGET_DIR (default: the repository's target/).
build_ffi_and_harness() {
    (cd "$ETCD_REGISTRY_ROOT" && cargo build -p etcd-registry-ffi -p etcd-harness)
}

# test_passed LOG STYLE NAME: whether the test NAME is reported as passed in LOG, the output of a
# test runner, and never as failed. STYLE says which runner wrote it:
#   rust    cargo test            "test NAME ... ok"
#   c       tests/c/run.sh        "ok   NAME (…)"
#   pytest  pytest -rA            "PASSED path::NAME" (any parameters)
#   go      go test -v            "--- PASS: NAME (…)"
test_passed() {
    local log=$1 style=$2 name=$3 pass fail
    case "$style" in
        rust)   pass="^test ${name} \.\.\. ok$";         fail="^test ${name} \.\.\. FAILED" ;;
        c)      pass="^ok +${name} ";                    fail="^(FAIL|not ok) +${name}" ;;
        pytest) pass="^PASSED [^ ]*::${name}(\[| |$)";   fail="^(FAILED|ERROR) [^ ]*::${name}(\[| |$)" ;;
        go)     pass="^ *--- PASS: ${name} ";            fail="^ *--- FAIL: ${name} " ;;
        *) echo "test_passed: unknown style $style" >&2; return 2 ;;
    esac
    [ -f "$log" ] && grep -Eq "$pass" "$log" && ! grep -Eq "$fail" "$log"
}
