#!/usr/bin/env bash
# Runs a keep-alive retry demo while etcd is killed and started again, and passes when the demo
# printed its "registered" line, "keep-alive lost, retrying in …", its "re-registered" line, and
# closed cleanly on SIGINT. Run under `etcd-harness run --` (which sets ETCD_ENDPOINTS,
# ETCD_HARNESS_BIN and ETCD_HARNESS_CONTROL). The C and Go suites use it for their demos.
#
#   tests/retry-demo-check.sh REGISTERED REREGISTERED CLOSED -- DEMO ARGS...
set -euo pipefail
usage="usage: retry-demo-check.sh REGISTERED REREGISTERED CLOSED -- DEMO ARGS..."
registered="${1:?$usage}" reregistered="${2:?$usage}" closed="${3:?$usage}"
[ "${4:-}" = "--" ] && [ $# -ge 5 ] || { echo "$usage" >&2; exit 2; }
shift 4
out="$(mktemp)"
trap 'rm -f "$out"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT

# Waits (polling, up to $2 seconds) until the demo's output contains $1.
wait_for() {
    local deadline=$((SECONDS + $2))
    until grep -qF -- "$1" "$out"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "retry demo: no \"$1\" within $2 s; output so far:" >&2
            cat "$out" >&2
            return 1
        fi
        sleep 0.1
    done
}

ctl() { "$ETCD_HARNESS_BIN" ctl "$ETCD_HARNESS_CONTROL" "$@" >/dev/null; }

"$@" >"$out" 2>&1 &
pid=$!
wait_for "$registered" 20
ctl kill 0
wait_for "keep-alive lost, retrying in" 30
ctl start 0
wait_for "$reregistered" 60
kill -INT "$pid"
wait "$pid"
pid=""
wait_for "$closed" 1
sed 's/^/    /' "$out"
