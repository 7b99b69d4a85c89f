#!/usr/bin/env bash
# Regenerates include/etcd_registry.h from ffi/src with the pinned cbindgen and fails if the
# committed header differs. CI runs it; `--update` rewrites the header instead.
#
#   cargo install cbindgen --version "$CBINDGEN_VERSION" --locked   (scripts/lib.sh pins it)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=../scripts/lib.sh
. "$root/scripts/lib.sh"
header="$root/include/etcd_registry.h"
cbindgen="${CBINDGEN:-cbindgen}"

if ! command -v "$cbindgen" >/dev/null 2>&1; then
    echo "check-header: cbindgen not found; install it with" >&2
    echo "  cargo install cbindgen --version $CBINDGEN_VERSION --locked" >&2
    exit 2
fi
found="$("$cbindgen" --version | awk '{print $2}')"
if [ "$found" != "$CBINDGEN_VERSION" ]; then
    echo "check-header: cbindgen $found found, $CBINDGEN_VERSION required (the output differs between versions)" >&2
    exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The version macros come from Cargo.toml (scripts/version.sh), so they cannot drift from the
# library's etcd_registry_version(): cbindgen.toml with an after_includes block put in front.
version="$("$root/scripts/version.sh")"
read -r major minor patch <<<"$("$root/scripts/version.sh" --parts)"
# A string constant, which cbindgen 0.29 cannot emit: taken from the core's definition. And
# ETCD_REGISTRY_NO_INFO, a usize::MAX that cbindgen either drops or writes as an int (~0).
base_path="$(sed -n 's/^pub const DEFAULT_BASE_PATH: &str = "\(.*\)";$/\1/p' "$root/core/src/config.rs")"
if [ -z "$base_path" ]; then
    echo "check-header: DEFAULT_BASE_PATH not found in core/src/config.rs" >&2
    exit 2
fi
cat > "$tmp/cbindgen.toml" <<TOML
after_includes = """

/**
 * The version of this header, the same as the library's Cargo version. Compare it with
 * etcd_registry_version() (the library actually linked) to detect a header and a library from
 * different installs.
 */
#define ETCD_REGISTRY_VERSION "$version"
#define ETCD_REGISTRY_VERSION_MAJOR $major
#define ETCD_REGISTRY_VERSION_MINOR $minor
#define ETCD_REGISTRY_VERSION_PATCH $patch

/**
 * The base path used when etcd_registry_config_set_base_path is not called (the core's
 * DEFAULT_BASE_PATH).
 */
#define ETCD_REGISTRY_DEFAULT_BASE_PATH "$base_path"

/**
 * Pass as \`info_len\` (with \`info\` NULL) to \`etcd_registry_register\` for no info object at all:
 * the value is stored empty, as Go's library stores a nil map (an empty info object, \`info_len\`
 * 0, is stored as \`{}\`). A \`size_t\` (ffi/src/info.rs: a usize constant cbindgen cannot emit).
 */
#define ETCD_REGISTRY_NO_INFO SIZE_MAX"""
TOML
sed "s/@CBINDGEN_VERSION@/$CBINDGEN_VERSION/g" "$here/cbindgen.toml" >> "$tmp/cbindgen.toml"
# --quiet: cbindgen warns about every private static it skips, which is expected here.
(cd "$here" && "$cbindgen" --quiet --config "$tmp/cbindgen.toml" --crate etcd-registry-ffi \
    --output "$tmp/etcd_registry.h" .)

if [ "${1:-}" = "--update" ]; then
    mkdir -p "$(dirname "$header")"
    cp "$tmp/etcd_registry.h" "$header"
    echo "check-header: wrote $header"
    exit 0
fi

if ! diff -u "$header" "$tmp/etcd_registry.h"; then
    echo "check-header: include/etcd_registry.h is stale; run ffi/check-header.sh --update and commit it" >&2
    exit 1
fi
echo "check-header: include/etcd_registry.h is up to date"
