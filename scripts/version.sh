#!/usr/bin/env bash
# Prints the library's one version number, [workspace.package] version in Cargo.toml, which
# every crate inherits (the C library, the Python wheel, the Go package through the C library).
#
#   scripts/version.sh          # 0.1.0
#   scripts/version.sh --parts  # 0 1 0  (major minor patch, a pre-release suffix dropped)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")"
[ -n "$version" ] || { echo "version.sh: no [workspace.package] version in $root/Cargo.toml" >&2; exit 1; }
if [ "${1:-}" = --parts ]; then
    core="${version%%[-+]*}"
    IFS=. read -r major minor patch <<<"$core"
    echo "$major $minor $patch"
else
    echo "$version"
fi
