#!/usr/bin/env bash
# The etcd-version compatibility subset of the Rust core's tests.
#   scripts/etcd-compat.sh VERSION   runs the harness's own tests and the subset against etcd
#                                    VERSION (3.4|3.5|3.5.12|3.5.36|3.6|3.7; the harness gets it through
#                                    ETCD_VERSION, see scripts/etcd-version.sh)
#   scripts/etcd-compat.sh table     prints the version × scenario table from the rows the tests
#                                    wrote to $ETCD_VERSIONS_SUMMARY
# Each test of the subset, once everything it checks has held, appends "VERSION<TAB>SCENARIO"
# to $ETCD_VERSIONS_SUMMARY with the version etcd itself reported (core/tests/common:
# record_version), so every "pass" in the table comes from a test that ran on that version.
# scripts/test.sh runs the full suite on 3.5 (which records its rows too) and this subset on
# 3.4, 3.5.12, 3.5.36, 3.6 and 3.7.
set -uo pipefail
cd "$(dirname "$0")/.."

# test name → the scenario it records (the table's rows, in this order)
TESTS=(
  registers_lists_and_unregisters_in_the_go_wire_format
  one_lease_per_ttl_and_close_removes_everything
  snapshot_then_added_updated_removed_in_order
  killed_and_restarted_within_the_ttl_keeps_the_lease
  resumes_after_a_restart_without_losing_or_repeating_events
  a_partition_longer_than_the_ttl_gets_a_new_lease_and_every_key_back
  a_lease_revoked_by_someone_else_is_replaced
  resyncs_after_compaction_while_disconnected
  a_watch_follows_an_etcd_whose_history_went_back
  a_watch_notices_a_rebuilt_etcd_that_has_caught_up_with_its_revision
  an_idle_watch_beside_a_registration_keeps_its_stream
  a_watch_joining_a_quiet_stream_keeps_it
  auth_works_and_a_wrong_password_is_a_clear_auth_error
  a_change_to_etcds_users_does_not_lock_out_a_registry_with_jwt_tokens
  registrations_refused_for_lack_of_space_land_once_etcd_is_fixed
  mutual_tls_from_files_and_from_pem_in_memory
  handshake_failures_are_clear_tls_errors_without_waiting_for_the_timeout
  over_mtls_a_cluster_loses_nothing_when_the_clients_member_then_the_leader_stop
)
SCENARIOS=(
  "register, list, unregister (wire format)"
  "one shared lease per TTL; close revokes"
  "watch: snapshot, added/updated/removed"
  "kill -9 + restart: same lease kept"
  "watch resumes after a restart"
  "partition past the TTL: new lease, keys back"
  "lease revoked by someone else: replaced"
  "compaction while disconnected: resync"
  "etcd's data lost: the watch re-lists"
  "etcd rebuilt and written past the watch's revision: the watch re-lists"
  "idle watch beside a registration: stream kept"
  "a watch joining a quiet stream: stream kept"
  "auth: token expiry, wrong password"
  "auth: JWT tokens, a user added"
  "out of space (NOSPACE): refused, lands after fix"
  "mTLS: register, list, watch"
  "TLS handshake failures: clear TLS errors"
  "mTLS 3 members: client's member, leader stopped"
)

case "${1:-}" in
3.4|3.5|3.5.12|3.5.36|3.6|3.7)
  version=$1
  # Resolve (install or build) the binary once, before the tests start in parallel.
  bash scripts/etcd-version.sh "$version" >/dev/null || exit 1
  export ETCD_VERSION=$version
  # The fault table that scripts/test.sh prints is the 3.5 run's; these rows go to the version table.
  unset SURVIVAL_SUMMARY
  status=0
  # The harness itself on this version: kill, pause, proxy, 3 members, auth, compaction.
  cargo test -p etcd-harness --test harness --test versions || status=1
  cargo test -p etcd-registry \
    --test registration --test recovery --test watch --test quota --test tls -- --exact "${TESTS[@]}" || status=1
  exit $status
  ;;
table)
  file=${ETCD_VERSIONS_SUMMARY:-target/etcd-versions.tsv}
  if [ ! -s "$file" ]; then
    echo "  (no etcd-version row recorded: the tests did not run or failed)"
    exit 0
  fi
  versions=$(cut -f1 "$file" | sort -uV | tr '\n' ' ')
  printf '  | %-46s |' "scenario"
  for v in $versions; do printf ' %-7s |' "$v"; done
  printf '\n  |%s|' "$(printf -- '-%.0s' {1..48})"
  for v in $versions; do printf -- '---------|'; done
  echo
  for s in "${SCENARIOS[@]}"; do
    printf '  | %-46s |' "$s"
    for v in $versions; do
      if grep -qxF "$v	$s" "$file"; then r=pass; else r=FAIL; fi
      printf ' %-7s |' "$r"
    done
    echo
  done
  ;;
*)
  echo "usage: $0 3.4|3.5|3.5.12|3.5.36|3.6|3.7 | table" >&2
  exit 2
  ;;
esac
