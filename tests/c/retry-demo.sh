#!/usr/bin/env bash
# Runs examples/c/retry_demo while etcd is killed and started again; run under
# `etcd-harness run --` (which sets ETCD_ENDPOINTS, ETCD_HARNESS_BIN and ETCD_HARNESS_CONTROL).
# Passes when the demo printed "registered", "keep-alive lost, retrying in …" and
# "re-registered", and closed cleanly.
#
#   tests/c/retry-demo.sh PATH/TO/retry_demo
set -euo pipefail
demo="${1:?usage: retry-demo.sh PATH/TO/retry_demo}"
out="$(mktemp)"
trap 'rm -f "$out"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT

# Waits (polling, up to $2 seconds) until the demo's output contains $1.
wait_for() {
    local deadline=$((SECONDS + $2))
    until grep -qF -- "$1" "$out"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "retry-demo: no \"$1\" within $2 s; output so far:" >&2
            cat "$out" >&2
            return 1
        fi
        sleep 0.1
    done
}

ctl() { "$ETCD_HARNESS_BIN" ctl "$ETCD_HARNESS_CONTROL" "$@" >/dev/null; }

"$demo" 120 >"$out" 2>&1 &
pid=$!
wait_for "registered (lease" 20
ctl kill 0
wait_for "keep-alive lost, retrying in" 30
ctl start 0
wait_for "re-registered (lease" 60
kill -INT "$pid"
wait "$pid"
pid=""
wait_for "closed: lease revoked" 1
sed 's/^/    /' "$out"
