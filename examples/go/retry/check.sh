#!/usr/bin/env bash
# Runs the retry example while etcd is killed and started again; run under `etcd-harness run --`
# (which sets ETCD_ENDPOINTS, ETCD_HARNESS_BIN and ETCD_HARNESS_CONTROL). Passes when the example
# printed "Registered node localhost:50000", "keep-alive lost, retrying in …" and
# "re-registered", and closed cleanly on SIGINT. go/run-tests.sh runs it.
#
#   examples/go/retry/check.sh PATH/TO/BUILT/retry
set -euo pipefail
example="${1:?usage: check.sh PATH/TO/BUILT/retry}"
out="$(mktemp)"
trap 'rm -f "$out"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT

# Waits (polling, up to $2 seconds) until the output contains $1.
wait_for() {
    local deadline=$((SECONDS + $2))
    until grep -qF -- "$1" "$out"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "retry example: no \"$1\" within $2 s; output so far:" >&2
            cat "$out" >&2
            return 1
        fi
        sleep 0.1
    done
}

ctl() { "$ETCD_HARNESS_BIN" ctl "$ETCD_HARNESS_CONTROL" "$@" >/dev/null; }

"$example" -duration 120s >"$out" 2>&1 &
pid=$!
wait_for "Registered node localhost:50000" 20
ctl kill 0
wait_for "keep-alive lost, retrying in" 30
ctl start 0
wait_for "re-registered node localhost:50000" 60
kill -INT "$pid"
wait "$pid"
pid=""
wait_for "Closed" 1
sed 's/^/    /' "$out"
