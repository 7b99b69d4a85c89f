#!/usr/bin/env bash
# Installs libetcd_registry (.so and .a), include/etcd_registry.h, pkg-config files and a CMake
# package:
#
#   ffi/install.sh --prefix DIR [--profile release|debug] [--static] [--no-build]
#
#   DIR/include/etcd_registry.h
#   DIR/lib/libetcd_registry.a   and (unless --static) DIR/lib/libetcd_registry.so
#   DIR/lib/pkgconfig/etcd_registry.pc and etcd_registry-static.pc
#   DIR/lib/cmake/etcd_registry/etcd_registryConfig.cmake and etcd_registryConfigVersion.cmake
#
# Then:  PKG_CONFIG_PATH=DIR/lib/pkgconfig cc app.c $(pkg-config --cflags --libs etcd_registry)
#   or:  cmake -DCMAKE_PREFIX_PATH=DIR ... with find_package(etcd_registry CONFIG REQUIRED)
#        and target_link_libraries(app PRIVATE etcd_registry::etcd_registry)
#
# By default the program links the shared library, found at run time through an rpath to
# DIR/lib. With --static only the archive is installed, so the same command links it into the
# program (the .pc then lists the system libraries the Rust code needs). The package
# etcd_registry-static (CMake: etcd_registry::etcd_registry_static) always links the archive;
# the Go package uses it.
#
#   ffi/install.sh --in-tree [--profile debug|release] [--no-build]
#
# writes only the two .pc files, into TARGET/PROFILE/pkgconfig (TARGET: $CARGO_TARGET_DIR or
# target/), pointing at include/ and the build itself, and prints that directory: for building
# against this checkout without installing (go/run-tests.sh does, with PKG_CONFIG_PATH).
set -euo pipefail

prefix=""
profile=""
static=0
build=1
in_tree=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        --profile) profile="${2:?--profile needs release or debug}"; shift 2 ;;
        --profile=*) profile="${1#--profile=}"; shift ;;
        --static) static=1; shift ;;
        --no-build) build=0; shift ;;
        --in-tree) in_tree=1; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$in_tree" = 1 ]; then
    [ -z "$prefix" ] || { echo "install.sh: --in-tree takes no --prefix" >&2; exit 2; }
    profile="${profile:-debug}"
else
    [ -n "$prefix" ] || { echo "install.sh: --prefix DIR is required" >&2; exit 2; }
    profile="${profile:-release}"
fi
case "$profile" in release|debug) ;; *) echo "install.sh: --profile is release or debug" >&2; exit 2 ;; esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
if [ "$build" = 1 ]; then
    flag=""; [ "$profile" = release ] && flag="--release"
    # In-tree, stdout is the directory printed for the caller: cargo's output goes to stderr.
    (cd "$root" && cargo build -p etcd-registry-ffi $flag) >&2
fi
libs="$(cd "$target_dir/$profile" 2>/dev/null && pwd)" || libs="$target_dir/$profile"
for f in libetcd_registry.a libetcd_registry.so; do
    [ -f "$libs/$f" ] || { echo "install.sh: $libs/$f is missing (build first or drop --no-build)" >&2; exit 1; }
done
version="$("$root/scripts/version.sh")"

# What the Rust standard library in the archive needs from the system (as reported by
# `rustc --print native-static-libs` for Linux targets): scripts/lib.sh.
# shellcheck source=../scripts/lib.sh
. "$root/scripts/lib.sh"
system_libs="$ETCD_REGISTRY_SYSTEM_LIBS"

# write_pkgconfig DIR PREFIX_LINES: etcd_registry.pc and etcd_registry-static.pc into DIR;
# PREFIX_LINES define libdir and includedir.
write_pkgconfig() {
    local dir="$1" vars="$2" libs_line private_line
    if [ "$static" = 1 ]; then
        libs_line="-L\${libdir} -letcd_registry $system_libs"
        private_line=""
    else
        libs_line="-L\${libdir} -Wl,-rpath,\${libdir} -letcd_registry"
        private_line="$system_libs"
    fi
    install -d "$dir"
    cat > "$dir/etcd_registry.pc" <<PC
$vars

Name: etcd_registry
Description: Service registration and discovery on etcd (C ABI of the Rust etcd-registry library)
Version: $version
Cflags: -I\${includedir}
Libs: $libs_line
Libs.private: $private_line
PC
    # Links the archive whatever else is installed: cc app.c $(pkg-config --cflags --libs etcd_registry-static)
    cat > "$dir/etcd_registry-static.pc" <<PC
$vars

Name: etcd_registry-static
Description: etcd_registry, linked statically
Version: $version
Cflags: -I\${includedir}
Libs: \${libdir}/libetcd_registry.a $system_libs
PC
}

if [ "$in_tree" = 1 ]; then
    write_pkgconfig "$libs/pkgconfig" "libdir=$libs
includedir=$root/include"
    echo "$libs/pkgconfig"
    exit 0
fi

mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

install -d "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/etcd_registry"
install -m 0644 "$root/include/etcd_registry.h" "$prefix/include/etcd_registry.h"
install -m 0644 "$libs/libetcd_registry.a" "$prefix/lib/libetcd_registry.a"
rm -f "$prefix/lib/libetcd_registry.so"
if [ "$static" = 0 ]; then
    install -m 0755 "$libs/libetcd_registry.so" "$prefix/lib/libetcd_registry.so"
fi

write_pkgconfig "$prefix/lib/pkgconfig" "prefix=$prefix
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include"

# The CMake package: relocatable (paths relative to the file), shared and static targets.
cmake_libs="$(echo "$system_libs" | sed 's/-lpthread/Threads::Threads/; s/-l//g; s/ c$//; s/ /;/g')"
sed "s|@SYSTEM_LIBS@|$cmake_libs|" "$root/ffi/cmake/etcd_registryConfig.cmake" \
    > "$prefix/lib/cmake/etcd_registry/etcd_registryConfig.cmake"
sed "s|@VERSION@|$version|" "$root/ffi/cmake/etcd_registryConfigVersion.cmake" \
    > "$prefix/lib/cmake/etcd_registry/etcd_registryConfigVersion.cmake"

echo "installed etcd_registry $version ($profile$( [ "$static" = 1 ] && echo ", static only")) into $prefix"
