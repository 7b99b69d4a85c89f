#!/usr/bin/env bash
# Builds the Python distributions as they would be published, and tests the wheel the way a
# user gets it:
#
#   1. maturin build --release --zig --compatibility manylinux2014: one abi3 wheel (CPython >= 3.9;
#      not the free-threaded builds, which cannot load abi3 modules)
#      linked against glibc 2.17 by zig (PyPI's ziglang), so it installs on RHEL 8, Ubuntu 20.04,
#      Debian 11 and newer; and maturin sdist
#   2. auditwheel show: the wheel must be manylinux_2_17 (= manylinux2014) and abi3; the sdist
#      must carry the workspace crates it builds from
#   3. for every CPython >= 3.9 found (pyenv's versions, python3.X on PATH; or PYTHONS="a b"):
#      a fresh virtualenv without system site-packages, pip install --no-index of the wheel, and
#      python/wheel_smoke.py (register, list, watch) against a real etcd under `etcd-harness run`,
#      in an environment with PATH = the venv only and HOME empty: no cargo, rustc or protoc
#
#   python/wheel-test.sh [--no-build]     # --no-build: test the wheel already in DIST
#
# DIST is $CARGO_TARGET_DIR/wheels-dist (target/wheels-dist). The build uses its own target
# directory ($CARGO_TARGET_DIR/wheel: the zig linker and the lean release settings would
# otherwise rebuild the workspace's release artifacts) and needs maturin, ziglang, auditwheel
# (scripts/setup.sh installs them), protoc and Rust. Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
dist="$target/wheels-dist"
PYTHON="${PYTHON:-python3}"
build=1
[ "${1:-}" = --no-build ] && build=0
# shellcheck source=../scripts/lib.sh
. "$repo/scripts/lib.sh"
version="$("$repo/scripts/version.sh")"

if [ "$build" = 1 ]; then
    "$PYTHON" -c "import ziglang" 2>/dev/null || fail "ziglang is missing: $PYTHON -m pip install 'ziglang>=0.10,<0.13' (or scripts/setup.sh)"
    command -v maturin >/dev/null || fail "maturin is missing: $PYTHON -m pip install 'maturin>=1.5,<2'"
    # maturin runs the zig binary from PATH; ziglang ships it inside the package.
    zig_dir="$("$PYTHON" -c 'import os, ziglang; print(os.path.dirname(ziglang.__file__))')"
    rm -rf "$dist"
    step "maturin build --release --zig --compatibility manylinux2014 (abi3 wheel)"
    # Lean: no debug info (the workspace's release profile keeps some for the C library), and
    # maturin strips the module (pyproject.toml).
    PATH="$zig_dir:$PATH" CARGO_TARGET_DIR="$target/wheel" CARGO_PROFILE_RELEASE_DEBUG=0 \
        maturin build --release --zig --compatibility manylinux2014 \
        -m "$here/Cargo.toml" --out "$dist"
    step "maturin sdist"
    maturin sdist -m "$here/Cargo.toml" --out "$dist"
fi

shopt -s nullglob
wheels=("$dist"/etcd_registry-"$version"-cp39-abi3-*.whl)
sdists=("$dist"/etcd_registry-"$version".tar.gz)
shopt -u nullglob
[ ${#wheels[@]} -eq 1 ] || fail "expected one etcd_registry-$version-cp39-abi3-*.whl in $dist, found: $(ls "$dist" 2>/dev/null)"
wheel="${wheels[0]}"
echo "wheel: $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"
case "$(basename "$wheel")" in
    *manylinux_2_17_x86_64*|*manylinux2014_x86_64*) ;;
    *) fail "the wheel is not tagged manylinux_2_17/manylinux2014: $(basename "$wheel")" ;;
esac

step "auditwheel show"
"$PYTHON" -m auditwheel --version >/dev/null 2>&1 || fail "auditwheel is missing: $PYTHON -m pip install auditwheel"
report="$("$PYTHON" -m auditwheel show "$wheel")"
printf '%s\n' "$report" | sed 's/^/    /'
# auditwheel wraps its lines: join them before matching.
report="$(tr '\n' ' ' <<<"$report" | tr -s ' ')"
grep -Eq 'consistent with the following platform tag: "manylinux_2_17_x86_64"' <<<"$report" \
    || fail "auditwheel does not find the wheel consistent with manylinux_2_17_x86_64"
# abi3: the WHEEL tags and the module's file name (pip loads it on every CPython >= 3.9).
"$PYTHON" - "$wheel" <<'PY' || fail "the wheel is not an abi3 wheel for CPython >= 3.9"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
wheel = zipfile.ZipFile(sys.argv[1]).read(next(n for n in names if n.endswith(".dist-info/WHEEL")))
tags = [line.split(": ", 1)[1] for line in wheel.decode().splitlines() if line.startswith("Tag: ")]
assert tags and all(t.startswith("cp39-abi3-manylinux") for t in tags), tags
modules = [n for n in names if n.startswith("etcd_registry/_native") and n.endswith(".so")]
assert modules == ["etcd_registry/_native.abi3.so"], modules
print("tags:", " ".join(tags), "| module:", modules[0])
PY

if [ ${#sdists[@]} -eq 1 ]; then
    step "sdist contents"
    listing="$(tar tzf "${sdists[0]}")"
    for f in pyproject.toml Cargo.toml Cargo.lock core/src/lib.rs python/Cargo.toml python/src/lib.rs \
             etcd_registry/__init__.py etcd_registry/_native.pyi etcd_registry/py.typed; do
        grep -q "^etcd_registry-$version/$f\$" <<<"$listing" || fail "the sdist lacks $f"
    done
    # Cargo can resolve the workspace it carries, offline (what pip's build from the sdist does first).
    mkdir -p "$target/sdist-check" && rm -rf "$target/sdist-check/etcd_registry-$version"
    tar xzf "${sdists[0]}" -C "$target/sdist-check"
    cargo metadata --offline --format-version 1 \
        --manifest-path "$target/sdist-check/etcd_registry-$version/python/Cargo.toml" >/dev/null \
        || fail "cargo cannot read the workspace in the sdist"
    echo "$(basename "${sdists[0]}"): $(wc -l <<<"$listing") files, the workspace crates included"
elif [ "$build" = 1 ]; then
    fail "no sdist etcd_registry-$version.tar.gz in $dist"
fi

# Every CPython >= 3.9 the machine has, one per minor version (PYTHONS overrides); not the
# free-threaded builds (3.13t …), which cannot load an abi3 module.
find_pythons() {
    local candidates=() seen="" p v
    if [ -n "${PYTHONS:-}" ]; then
        read -r -a candidates <<<"$PYTHONS"
    else
        local pyenv_root; pyenv_root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
        candidates+=("$pyenv_root"/versions/3.*/bin/python3)
        for v in 9 10 11 12 13 14 15; do
            p="$(command -v "python3.$v" 2>/dev/null)" && candidates+=("$p")
        done
    fi
    for p in "${candidates[@]}"; do
        [ -x "$p" ] || continue
        v="$("$p" -c 'import sys, sysconfig; print("%d.%d" % sys.version_info[:2]) if sys.version_info >= (3, 9) and sys.implementation.name == "cpython" and not sysconfig.get_config_var("Py_GIL_DISABLED") else None' 2>/dev/null)" || continue
        [ -n "$v" ] && [ "$v" != None ] || continue
        case " $seen " in *" $v "*) continue ;; esac
        seen="$seen $v"
        echo "$v $p"
    done | sort -V
}
mapfile -t pythons < <(find_pythons)
[ ${#pythons[@]} -gt 0 ] || fail "no CPython >= 3.9 found (set PYTHONS)"

harness="${ETCD_HARNESS_BIN:-$target/debug/etcd-harness}"
if [ ! -x "$harness" ]; then
    (cd "$repo" && cargo build --quiet -p etcd-harness)
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/home" "$work/smoke"
# From a directory of its own: next to python/etcd_registry/ the source tree would shadow the wheel.
cp "$here/wheel_smoke.py" "$work/smoke/"
passed=()
for entry in "${pythons[@]}"; do
    v="${entry%% *}" python="${entry#* }"
    step "CPython $v ($python): fresh venv, pip install the wheel, smoke test against etcd"
    venv="$work/venv-$v"
    "$python" -m venv "$venv"
    # Only the venv on PATH and an empty HOME: no cargo, rustc (~/.cargo) or protoc to fall back on.
    clean=(env -i PATH="$venv/bin" HOME="$work/home" LANG=C.UTF-8)
    for tool in cargo rustc protoc maturin; do
        if "${clean[@]}" /bin/sh -c "command -v $tool" >/dev/null 2>&1; then
            fail "$tool is reachable in the clean environment"
        fi
    done
    "${clean[@]}" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-index --only-binary=:all: "$wheel" || fail "pip install of the wheel on CPython $v"
    "$harness" run -- /bin/sh -c 'exec env -i PATH="$1" HOME="$2" LANG=C.UTF-8 ETCD_ENDPOINTS="$ETCD_ENDPOINTS" "$3" "$4" "$5"' \
        _ "$venv/bin" "$work/home" "$venv/bin/python" "$work/smoke/wheel_smoke.py" "$version" \
        || fail "smoke test on CPython $v"
    passed+=("$v")
done

step "wheel: $(basename "$wheel") passed on CPython ${passed[*]}"
