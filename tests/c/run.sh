#!/usr/bin/env bash
# The C ABI's whole check, against real etcd servers started by tests/harness:
#
#   1. builds libetcd_registry and the harness (cargo build -p etcd-registry-ffi -p etcd-harness)
#   2. ffi/check-header.sh: include/etcd_registry.h is what the pinned cbindgen generates
#   3. compiles the C test suite and the C examples with gcc -Werror against the static library
#   4. runs the C test suite under `etcd-harness run`, then again built with AddressSanitizer
#      and with ThreadSanitizer (the test program instrumented, see tests/c/tsan.supp), and
#      tests/c/test_tls.c under `etcd-harness run --client-cert-auth --proxy` (certificates
#      generated at run time)
#   5. runs it again under valgrind: no error, and no block of the library left allocated
#      after every registry is freed, except the process-wide state in tests/c/valgrind.supp
#   5b. the same four runs (plain, ASan, TSan, valgrind) of tests/cpp/test_wrapper.cpp, the tests
#      of the C++ wrapper examples/cpp/etcd_registry.hpp (built with g++ -Werror)
#   6. installs into a temporary prefix with ffi/install.sh; builds examples/c/basic.c with
#      `cc basic.c $(pkg-config --cflags --libs etcd_registry)`, shared and static, and
#      examples/cpp with CMake through find_package(etcd_registry) (shared, static, and from a
#      --static install), and runs them
#   7. runs examples/c/retry_demo while etcd is killed and started again
#
#   tests/c/run.sh [--no-valgrind] [--cpp] [TEST_NAME_SUBSTRING...]
#
# --cpp runs only the C++ part: steps 1-2, 5b, and the C++ example of step 6. Test name
# substrings select tests of every suite run.
#
# Exits non-zero on any failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../../scripts/lib.sh
. "$root/scripts/lib.sh"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
build="$target/c-tests"
valgrind=1
cpp_only=0
filters=()
for arg in "$@"; do
    case "$arg" in
        --no-valgrind) valgrind=0 ;;
        --cpp) cpp_only=1 ;;
        *) filters+=("$arg") ;;
    esac
done

step "build libetcd_registry and etcd-harness"
build_ffi_and_harness
lib="$target/debug"
harness="$target/debug/etcd-harness"

step "header is up to date"
ffi/check-header.sh

mkdir -p "$build"
cflags=(-std=gnu11 -Wall -Wextra -Werror -g -O1 -I"$root/include")
cxxflags=(-std=c++17 -Wall -Wextra -Werror -g -O1 -I"$root/include" -I"$root/examples/cpp")
if [ -f /usr/include/valgrind/memcheck.h ]; then
    cflags+=(-DHAVE_VALGRIND)
    cxxflags+=(-DHAVE_VALGRIND)
fi
# shellcheck disable=SC2206 # a list of linker flags
static_libs=("$lib/libetcd_registry.a" $ETCD_REGISTRY_SYSTEM_LIBS)

# run_suite NAME BINARY [WRAPPER...]: runs the suite binary (under the wrapper) against etcd,
# and checks the final line as well as the exit code.
run_suite() {
    local log="$build/$1.log" binary="$2"
    shift 2
    set +e
    "$harness" run -- "$@" "$binary" "${filters[@]}" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" -eq 0 ] || return 1
    grep -Eq '^[0-9]+ passed, 0 failed$' "$log"
}

if [ "$cpp_only" = 0 ]; then
step "compile the C tests and examples (gcc, static library)"
gcc "${cflags[@]}" tests/c/test_etcd_registry.c "${static_libs[@]}" -o "$build/test_etcd_registry"
gcc "${cflags[@]}" tests/c/test_tls.c "${static_libs[@]}" -o "$build/test_tls"
gcc "${cflags[@]}" examples/c/basic.c "${static_libs[@]}" -o "$build/basic"
gcc "${cflags[@]}" examples/c/retry_demo.c "${static_libs[@]}" -o "$build/retry_demo"

step "C tests against etcd"
run_suite tests "$build/test_etcd_registry" || fail "C tests"

step "C tests built with AddressSanitizer"
# The test program is instrumented; the library is not, but every allocation goes through the
# sanitizer's malloc, so a use after free of host data (user_data freed while a callback still
# runs) or of memory the library handed out is caught. The library's own reads of memory freed
# too early are not checked: freed blocks are filled with garbage instead, so that such a read
# (e.g. of a handle freed by a callback) crashes here rather than passing unseen. Leaks are
# valgrind's job below.
gcc "${cflags[@]}" -fsanitize=address -fno-omit-frame-pointer tests/c/test_etcd_registry.c \
    "${static_libs[@]}" -o "$build/test_etcd_registry_asan"
ASAN_OPTIONS=detect_leaks=0:max_free_fill_size=4096:free_fill_byte=190 \
    run_suite asan "$build/test_etcd_registry_asan" \
    || fail "C tests under AddressSanitizer (see $build/asan.log)"

step "C tests built with ThreadSanitizer"
# Linked against the shared library, whose own (uninstrumented) accesses are suppressed by
# tests/c/tsan.supp; the library announces the happens-before edges it guarantees for
# user_data (ffi/src/tsan.rs), so a race left is one in the host's use of the API.
gcc "${cflags[@]}" -fsanitize=thread tests/c/test_etcd_registry.c -L"$lib" -letcd_registry \
    -Wl,-rpath,"$lib" -lpthread -o "$build/test_etcd_registry_tsan"
TSAN_OPTIONS="suppressions=$root/tests/c/tsan.supp halt_on_error=1" run_suite tsan "$build/test_etcd_registry_tsan" \
    || fail "C tests under ThreadSanitizer (see $build/tsan.log)"

# Not under valgrind: ring's AES-GCM assembly writes memory memcheck cannot see being
# initialised, so every TLS record shows up as "uninitialised" (writev of ciphertext, ring's
# tag comparison) — false positives, not bugs of ours.
step "C TLS tests against an etcd requiring client certificates"
set +e
"$harness" run --client-cert-auth --proxy -- "$build/test_tls" "${filters[@]}" 2>&1 | tee "$build/tls.log"
tls_rc=${PIPESTATUS[0]}
set -e
[ "$tls_rc" -eq 0 ] && grep -Eq '^[0-9]+ passed, 0 failed$' "$build/tls.log" || fail "C TLS tests"
ETCD_TLS_EXPIRED_SERVER=1 "$harness" run --tls-expired-server -- "$build/test_tls" \
    || fail "C TLS test against an expired server certificate"

if [ "$valgrind" = 1 ]; then
    command -v valgrind >/dev/null || fail "valgrind is not installed (apt-get install valgrind, or --no-valgrind)"
    step "C tests under valgrind"
    # Leak kinds: every kind is an error, "still reachable" included, so that an allocation the
    # library keeps after close (a registry, a task, a connection) fails the run; only the
    # process-wide state listed in valgrind.supp is exempt. The suite waits for the library's
    # asynchronous teardown before exiting (see wait_for_library_teardown). The fork test's
    # child is silenced: it inherits the parent's memory and must leave it alone, so its exit
    # leak check would list all of it; the child reports its checks to the parent instead.
    ETCD_REGISTRY_TEST_SLOWDOWN=10 run_suite valgrind "$build/test_etcd_registry" \
        valgrind --quiet --error-exitcode=99 --fair-sched=yes --child-silent-after-fork=yes \
        --leak-check=full --show-leak-kinds=all --errors-for-leak-kinds=all \
        --suppressions="$root/tests/c/valgrind.supp" --num-callers=40 \
        || fail "C tests under valgrind (see $build/valgrind.log)"
fi
fi  # not --cpp

# The C++ wrapper's tests, built and run as the C suite is: they check when the wrapper frees
# the std::function callbacks it owns (never while one runs, a use after free these runs catch;
# not later than its registration or watch ends).
step "compile the C++ wrapper's tests (g++, static library)"
# --wrap: a test runs a step of its own between the wrapper's and the library's (see the test).
cppwrap=(-Wl,--wrap=etcd_registry_unregister_async)
g++ "${cxxflags[@]}" "${cppwrap[@]}" tests/cpp/test_wrapper.cpp "${static_libs[@]}" -o "$build/test_wrapper"
g++ "${cxxflags[@]}" "${cppwrap[@]}" -fsanitize=address -fno-omit-frame-pointer tests/cpp/test_wrapper.cpp \
    "${static_libs[@]}" -o "$build/test_wrapper_asan"
g++ "${cxxflags[@]}" "${cppwrap[@]}" -fsanitize=thread tests/cpp/test_wrapper.cpp -L"$lib" -letcd_registry \
    -Wl,-rpath,"$lib" -lpthread -o "$build/test_wrapper_tsan"

step "C++ wrapper tests against etcd"
run_suite cpp "$build/test_wrapper" || fail "C++ wrapper tests"

step "C++ wrapper tests built with AddressSanitizer"
ASAN_OPTIONS=detect_leaks=0 run_suite cpp-asan "$build/test_wrapper_asan" \
    || fail "C++ wrapper tests under AddressSanitizer (see $build/cpp-asan.log)"

step "C++ wrapper tests built with ThreadSanitizer"
TSAN_OPTIONS="suppressions=$root/tests/c/tsan.supp halt_on_error=1" run_suite cpp-tsan "$build/test_wrapper_tsan" \
    || fail "C++ wrapper tests under ThreadSanitizer (see $build/cpp-tsan.log)"

if [ "$valgrind" = 1 ]; then
    command -v valgrind >/dev/null || fail "valgrind is not installed (apt-get install valgrind, or --no-valgrind)"
    step "C++ wrapper tests under valgrind"
    # As the C suite: every leak kind is an error, the library's process-wide state excepted.
    ETCD_REGISTRY_TEST_SLOWDOWN=10 run_suite cpp-valgrind "$build/test_wrapper" \
        valgrind --quiet --error-exitcode=99 --fair-sched=yes \
        --leak-check=full --show-leak-kinds=all --errors-for-leak-kinds=all \
        --suppressions="$root/tests/c/valgrind.supp" --num-callers=40 \
        || fail "C++ wrapper tests under valgrind (see $build/cpp-valgrind.log)"
fi

step "install into a temporary prefix, build through pkg-config"
prefix="$(mktemp -d)"
static_prefix="$(mktemp -d)"
trap 'rm -rf "$prefix" "$static_prefix"' EXIT
ffi/install.sh --prefix "$prefix" --profile debug --no-build
ffi/install.sh --prefix "$static_prefix" --profile debug --no-build --static
if [ "$cpp_only" = 0 ]; then
command -v pkg-config >/dev/null || fail "pkg-config is not installed"
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" \
    sh -c 'cc examples/c/basic.c -o "$1" $(pkg-config --cflags --libs etcd_registry)' _ "$build/basic-pc-shared"
PKG_CONFIG_PATH="$static_prefix/lib/pkgconfig" \
    sh -c 'cc examples/c/basic.c -o "$1" $(pkg-config --cflags --libs etcd_registry)' _ "$build/basic-pc-static"
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" \
    sh -c 'cc examples/c/basic.c -o "$1" $(pkg-config --cflags --libs etcd_registry-static)' _ "$build/basic-pc-archive"
for exe in basic-pc-static basic-pc-archive; do
    if ldd "$build/$exe" | grep libetcd_registry >/dev/null; then fail "$exe linked the shared library"; fi
done
ldd "$build/basic-pc-shared" | grep "$prefix/lib/libetcd_registry.so" >/dev/null || fail "shared install did not link $prefix/lib"
fi  # not --cpp

step "build examples/cpp with CMake through find_package(etcd_registry), shared and static"
command -v cmake >/dev/null || fail "cmake is not installed"
rm -rf "$build/cpp" "$build/cpp-static" "$build/cpp-static-only"
cmake -S examples/cpp -B "$build/cpp" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$build/cpp" -- -s
cmake -S examples/cpp -B "$build/cpp-static" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_PREFIX_PATH="$prefix" \
    -DETCD_REGISTRY_USE_STATIC=ON >/dev/null
cmake --build "$build/cpp-static" -- -s
cmake -S examples/cpp -B "$build/cpp-static-only" -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_PREFIX_PATH="$static_prefix" >/dev/null
cmake --build "$build/cpp-static-only" -- -s
# (grep without -q: with pipefail, -q quitting early can fail ldd with SIGPIPE)
ldd "$build/cpp/example" | grep "$prefix/lib/libetcd_registry.so" >/dev/null || fail "cpp: etcd_registry::etcd_registry did not link $prefix/lib/libetcd_registry.so"
for exe in cpp-static cpp-static-only; do
    if ldd "$build/$exe/example" | grep libetcd_registry >/dev/null; then fail "$exe linked the shared library"; fi
done

step "examples"
if [ "$cpp_only" = 0 ]; then
"$harness" run -- "$build/basic" | sed 's/^/    /'
"$harness" run -- "$build/basic-pc-shared" >/dev/null
"$harness" run -- "$build/basic-pc-static" >/dev/null
"$harness" run -- "$build/basic-pc-archive" >/dev/null
fi
"$harness" run -- "$build/cpp/example" | sed 's/^/    /'
"$harness" run -- "$build/cpp-static/example" >/dev/null
"$harness" run -- "$build/cpp-static-only/example" >/dev/null
if [ "$cpp_only" = 1 ]; then
    step "C++ wrapper: all passed"
    exit 0
fi
step "retry demo (etcd killed and started again)"
"$harness" run -- tests/retry-demo-check.sh "registered (lease" "re-registered (lease" "closed: lease revoked" -- "$build/retry_demo" 120

step "C ABI: all passed"
