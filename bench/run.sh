#!/usr/bin/env bash
# The benchmark: every layer (raw etcd-client floor, Rust core, C, Python, Go) and the native
# peers (Go clientv3, Python etcd3 and aetcd) against their own throwaway etcd. Prints one table
# per measurement and writes bench/results/latest.{json,svg}, scale.svg and BENCHMARKS.md. BENCH_QUICK=1 for a
# shorter run (fewer iterations, no 60 s outage, no 100 000 step).
# ETCD_VERSION=3.4|3.5|3.5.36|3.6|3.7 picks the etcd (default 3.5, see scripts/etcd-version.sh); the
# version that ran is recorded under machine.etcd in latest.json and in BENCHMARKS.md.
# Never fails because a target was missed; a binding that is not built is skipped.
# Extra arguments go to the orchestrator (e.g. --phases latency).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TERM_COLOR=never
OUT="$CARGO_TARGET_DIR/bench"
mkdir -p "$OUT/logs"

bash scripts/setup.sh demo   # protoc and etcd, if missing

echo "bench: building the orchestrator and the Rust drivers (release)"
cargo build --release -q -p etcd-registry-bench
BENCH="$CARGO_TARGET_DIR/release/etcd-registry-bench"

args=()
skip() { # layer, reason
  echo "skipped: $1 not built ($2)"
  args+=(--skip "$1=$2")
}

# The release build of the C library (libetcd_registry.a), which the C and Go drivers link.
ffi_state=""
build_ffi() {
  if [ -z "$ffi_state" ]; then
    ffi_state=failed
    if [ -f ffi/Cargo.toml ]; then
      echo "bench: building the C library (release)"
      cargo build --release -q -p etcd-registry-ffi >"$OUT/logs/ffi-build.log" 2>&1 && ffi_state=ok
    fi
  fi
  [ "$ffi_state" = ok ]
}

# ---- C: bench/c/driver.c against the static library and include/etcd_registry.h
build_c() {
  [ -f bench/c/driver.c ] || { skip c "no bench/c/driver.c"; return; }
  [ -f include/etcd_registry.h ] || { skip c "include/etcd_registry.h missing"; return; }
  if ! build_ffi; then
    skip c "cargo build --release -p etcd-registry-ffi failed, see $OUT/logs/ffi-build.log"; return
  fi
  local lib="$CARGO_TARGET_DIR/release/libetcd_registry.a"
  [ -f "$lib" ] || { skip c "$lib missing"; return; }
  # --gc-sections, as rustc links the Rust drivers: the parts of the archive the driver never
  # calls are dropped (as the README advises for static links).
  if ! ${CC:-cc} -O2 -std=c11 -Wall -Iinclude -o "$OUT/c-driver" bench/c/driver.c "$lib" \
       -lpthread -ldl -lm -Wl,--gc-sections >"$OUT/logs/c-build.log" 2>&1; then
    skip c "compiling bench/c/driver.c failed, see $OUT/logs/c-build.log"; return
  fi
  args+=(--layer "c=$OUT/c-driver")
}

# ---- Python: bench/python/driver.py with the etcd_registry module. The module is built in
# release into a private directory (target/bench/python-site, put first on PYTHONPATH), so a
# debug build installed for the tests is never measured and the installed one is left alone.
# If that build is impossible, the installed module is used (and named so in the results).
build_python() {
  local py=${PYTHON:-python3}
  local site="$OUT/python-site"
  [ -f bench/python/driver.py ] || { skip python "no bench/python/driver.py"; return; }
  [ -f python/pyproject.toml ] || { skip python "no python/ package"; return; }
  echo "bench: building the Python module (release) into $site"
  if "$py" -c "import maturin" >/dev/null 2>&1 &&
     MATURIN_PEP517_ARGS="--profile release" "$py" -m pip install --quiet --no-build-isolation \
       --no-deps --upgrade --target "$site" ./python >"$OUT/logs/python-build.log" 2>&1; then
    args+=(--layer "python=env PYTHONPATH=$site $py $ROOT/bench/python/driver.py")
  elif "$py" -c "import etcd_registry" >/dev/null 2>&1; then
    echo "bench: release build of the Python module failed (see $OUT/logs/python-build.log); using the installed one"
    args+=(--layer "python=$py $ROOT/bench/python/driver.py"
           --label "python=Python (installed module, build profile unknown)")
  else
    skip python "the etcd_registry module neither builds nor is installed, see $OUT/logs/python-build.log"
  fi
}

# ---- Go: bench/go/driver.go against the go/ package, linking the release C library
build_go() {
  [ -f bench/go/driver.go ] || { skip go "no bench/go/driver.go"; return; }
  [ -f go/go.mod ] || { skip go "no go/ package"; return; }
  command -v go >/dev/null 2>&1 || { skip go "go is not installed"; return; }
  if ! build_ffi; then
    skip go "cargo build --release -p etcd-registry-ffi failed, see $OUT/logs/ffi-build.log"; return
  fi
  echo "bench: building the Go driver"
  # pkg-config finds the release library of this checkout (scripts/go-env.sh).
  if ! (eval "$(scripts/go-env.sh release)" && cd bench/go && CGO_ENABLED=1 go build -o "$OUT/go-driver" .) \
       >"$OUT/logs/go-build.log" 2>&1; then
    skip go "go build of bench/go failed, see $OUT/logs/go-build.log"; return
  fi
  args+=(--layer "go=$OUT/go-driver")
}

# ---- Native peers: what a Go or Python user would compare with. Each is a driver of the same
# protocol written as a careful user of that client would (bench/README.md). The Python peers
# go into venvs of their own under target/bench (etcd3 needs protobuf<4, aetcd protobuf>4),
# never into the system site-packages.
build_go_peer() {
  [ -f bench/go-clientv3/driver.go ] || { skip go-clientv3 "no bench/go-clientv3/driver.go"; return; }
  command -v go >/dev/null 2>&1 || { skip go-clientv3 "go is not installed"; return; }
  echo "bench: building the Go clientv3 peer"
  if ! (cd bench/go-clientv3 && go build -o "$OUT/go-clientv3-driver" .) >"$OUT/logs/go-clientv3-build.log" 2>&1; then
    skip go-clientv3 "go build of bench/go-clientv3 failed, see $OUT/logs/go-clientv3-build.log"; return
  fi
  local v; v=$("$OUT/go-clientv3-driver" --version)
  args+=(--layer "go-clientv3=$OUT/go-clientv3-driver" --label "go-clientv3=Go clientv3 (peer: $v)")
}

# layer, venv name, driver file, pip requirements...
build_py_peer() {
  local layer=$1 venv="$OUT/$2" driver=bench/python/$3; shift 3
  local py=${PYTHON:-python3}
  [ -f "$driver" ] || { skip "$layer" "no $driver"; return; }
  echo "bench: installing $* into $venv"
  if ! { [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"; } >"$OUT/logs/$layer-install.log" 2>&1 ||
     ! "$venv/bin/python" -m pip install --quiet "$@" >>"$OUT/logs/$layer-install.log" 2>&1; then
    skip "$layer" "pip install $* failed, see $OUT/logs/$layer-install.log"; return
  fi
  local v; v=$("$venv/bin/python" "$driver" --version 2>/dev/null) || { skip "$layer" "$driver --version failed"; return; }
  args+=(--layer "$layer=$venv/bin/python $ROOT/$driver")
  case $layer in
    py-etcd3) args+=(--label "$layer=Python etcd3 (peer: $v)") ;;
    py-aetcd) args+=(--label "$layer=Python aetcd (peer: $v)") ;;
  esac
}

build_c
build_go_peer
build_go
# etcd3 0.12.0, the latest, is an sdist whose setup.py reads a file it does not ship: 0.11.1.
build_py_peer py-etcd3 venv-etcd3 peer_etcd3.py 'etcd3==0.11.1' 'protobuf<4'
build_py_peer py-aetcd venv-aetcd peer_aetcd.py 'aetcd==1.0.0'
build_python

exec "$BENCH" run --log-dir "$OUT/logs" --out bench/results --markdown BENCHMARKS.md "${args[@]}" "$@"
