#!/usr/bin/env bash
# Installs libdaxlab (the C library), its header and its pkg-config file into a prefix:
#   PREFIX/lib/libdaxlab.so  PREFIX/include/daxlab.h  PREFIX/lib/pkgconfig/daxlab.pc
# and, with --cli BINARY, the daxlab command as PREFIX/bin/daxlab.
#
# Usage: scripts/install-lib.sh LIBRARY PREFIX [--cli BINARY]
#   LIBRARY  the built shared library (SwiftPM's libDaxlabC.so)
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 2 ] || { echo "usage: $0 LIBRARY PREFIX [--cli BINARY]" >&2; exit 2; }
library=$1 prefix=$2
cli=
if [ "${3:-}" = --cli ]; then cli=${4:?--cli needs a binary}; fi
[ -f "$library" ] || { echo "install-lib: no library at $library (build it first)" >&2; exit 1; }
case $prefix in /*) ;; *) prefix=$PWD/$prefix ;; esac

install -D -m 0755 "$library" "$prefix/lib/libdaxlab.so"
install -D -m 0644 CDaxlab/include/daxlab.h "$prefix/include/daxlab.h"
mkdir -p "$prefix/lib/pkgconfig"
version=$(sed -n 's/.*return "\([0-9.]*\)";.*/\1/p' CDaxlab/daxlab.c)
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" CDaxlab/daxlab.pc.in > "$prefix/lib/pkgconfig/daxlab.pc"
[ -n "$cli" ] && install -D -m 0755 "$cli" "$prefix/bin/daxlab"
echo "install-lib: libdaxlab $version in $prefix (pkg-config: PKG_CONFIG_PATH=$prefix/lib/pkgconfig)"
