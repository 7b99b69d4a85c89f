#!/usr/bin/env bash
# Installs libetcd_registry (.so and .a), include/etcd_registry.h and a pkg-config file:
#
#   ffi/install.sh --prefix DIR [--profile release|debug] [--static] [--no-build]
#
#   DIR/include/etcd_registry.h
#   DIR/lib/libetcd_registry.a   and (unless --static) DIR/lib/libetcd_registry.so
#   DIR/lib/pkgconfig/etcd_registry.pc and etcd_registry-static.pc
#
# Then:  PKG_CONFIG_PATH=DIR/lib/pkgconfig cc app.c $(pkg-config --cflags --libs etcd_registry)
#
# By default the program links the shared library, found at run time through an rpath to
# DIR/lib. With --static only the archive is installed, so the same command links it into the
# program (the .pc then lists the system libraries the Rust code needs). The package
# etcd_registry-static always links the archive: $(pkg-config --cflags --libs etcd_registry-static).
set -euo pipefail

prefix=""
profile="release"
static=0
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        --profile) profile="${2:?--profile needs release or debug}"; shift 2 ;;
        --profile=*) profile="${1#--profile=}"; shift ;;
        --static) static=1; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$prefix" ] || { echo "install.sh: --prefix DIR is required" >&2; exit 2; }
case "$profile" in release|debug) ;; *) echo "install.sh: --profile is release or debug" >&2; exit 2 ;; esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
if [ "$build" = 1 ]; then
    flag=""; [ "$profile" = release ] && flag="--release"
    (cd "$root" && cargo build -p etcd-registry-ffi $flag)
fi
libs="$target_dir/$profile"
for f in libetcd_registry.a libetcd_registry.so; do
    [ -f "$libs/$f" ] || { echo "install.sh: $libs/$f is missing (build first or drop --no-build)" >&2; exit 1; }
done

mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"

install -d "$prefix/include" "$prefix/lib/pkgconfig"
install -m 0644 "$root/include/etcd_registry.h" "$prefix/include/etcd_registry.h"
install -m 0644 "$libs/libetcd_registry.a" "$prefix/lib/libetcd_registry.a"
rm -f "$prefix/lib/libetcd_registry.so"
if [ "$static" = 0 ]; then
    install -m 0755 "$libs/libetcd_registry.so" "$prefix/lib/libetcd_registry.so"
fi

# What the Rust standard library in the archive needs from the system (as reported by
# `rustc --print native-static-libs` for Linux targets).
system_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
if [ "$static" = 1 ]; then
    libs_line="-L\${libdir} -letcd_registry $system_libs"
    private_line=""
else
    libs_line="-L\${libdir} -Wl,-rpath,\${libdir} -letcd_registry"
    private_line="$system_libs"
fi

cat > "$prefix/lib/pkgconfig/etcd_registry.pc" <<PC
prefix=$prefix
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include

Name: etcd_registry
Description: Service registration and discovery on etcd (C ABI of the Rust etcd-registry library)
Version: $version
Cflags: -I\${includedir}
Libs: $libs_line
Libs.private: $private_line
PC

# Links the archive whatever else is installed: cc app.c $(pkg-config --cflags --libs etcd_registry-static)
cat > "$prefix/lib/pkgconfig/etcd_registry-static.pc" <<PC
prefix=$prefix
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include

Name: etcd_registry-static
Description: etcd_registry, linked statically
Version: $version
Cflags: -I\${includedir}
Libs: \${libdir}/libetcd_registry.a $system_libs
PC

echo "installed etcd_registry $version ($profile$( [ "$static" = 1 ] && echo ", static only")) into $prefix"
