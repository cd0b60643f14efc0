#!/bin/sh
# Packs the static daxlab (.build-static/release/daxlab, as `make bench-scaling` builds it) with
# the shared libraries it still loads (libpmem, libpmemobj, liburing, libndctl, ... but not libc,
# libm or the loader) into one compressed archive, for a machine that has none of them: the
# many-core machine the scaling curve needs.
#
#   scripts/bundle-static.sh [ARCHIVE]      (default .build-static/daxlab-bundle.tar.xz)
#
# There: mkdir d && tar -xJf daxlab-bundle.tar.xz -C d && d/run bench --only scaling --threads 1,2,4,8,16
set -eu
binary=.build-static/release/daxlab
archive=${1:-.build-static/daxlab-bundle.tar.xz}
[ -x "$binary" ] || { echo "bundle-static: $binary is missing: run make bench-scaling (or its build step) first" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/lib"
strip -o "$stage/daxlab" "$binary"
ldd "$binary" | awk '/=> \// { print $3 }' | while read -r library; do
    case "$(basename "$library")" in
        libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) ;;  # the machine's own
        *) cp -L "$library" "$stage/lib/" ;;
    esac
done
cat > "$stage/run" <<'RUN'
#!/bin/sh
# daxlab with the libraries packed beside it.
here=$(cd "$(dirname "$0")" && pwd)
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/daxlab" "$@"
RUN
chmod 0755 "$stage/run"
tar -cJf "$archive" -C "$stage" .
echo "bundle-static: $archive ($(du -h "$archive" | cut -f1)): daxlab and $(ls "$stage/lib" | wc -l) libraries"
