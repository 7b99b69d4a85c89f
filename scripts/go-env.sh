#!/usr/bin/env bash
# Prints the environment that builds the Go package (go/) against this checkout's C library
# instead of an installed one, for eval:
#
#   eval "$(scripts/go-env.sh [debug|release])"   # default debug; build the library first:
#                                                 # cargo build [--release] -p etcd-registry-ffi
#   cd go && go test ./...
#
# PKG_CONFIG_PATH: target/PROFILE/pkgconfig, written by `ffi/install.sh --in-tree`, whose
# etcd_registry-static.pc names include/ and target/PROFILE/libetcd_registry.a.
# CGO_CFLAGS: adds a fingerprint of that library and of the header. The Go build cache hashes
# neither the library (golang/go#24355) nor pkg-config's output, so without it a rebuilt library,
# or a switch between debug and release, could be linked from a stale cached package.
set -euo pipefail
profile="${1:-debug}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
pc_dir="$("$root/ffi/install.sh" --in-tree --profile "$profile" --no-build)"
lib="$target/$profile/libetcd_registry.a"
fingerprint="$profile-$(stat -c '%s-%Y' "$lib")-$(sha256sum "$root/include/etcd_registry.h" | cut -c1-16)"
printf 'export PKG_CONFIG_PATH=%q\n' "$pc_dir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
printf 'export CGO_CFLAGS=%q\n' "${CGO_CFLAGS:--O2 -g} -DETCD_REGISTRY_LIBRARY_FINGERPRINT=$fingerprint"
