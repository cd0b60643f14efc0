#!/usr/bin/env bash
# `make test-c`: libdaxlab as a C program sees it. Installs the library, header and pkg-config file
# into a temporary prefix, then builds through `pkg-config --cflags --libs daxlab` alone (no Swift
# in their builds) and runs:
#   tests/c/test_api.c         every function's success and documented errors, misuse, the
#                              lease-break callback's order, several threads at once
#   examples/c/rdma-like.c     a long-term pin with a lease-break callback, released from it
#   examples/c/collision.c     xfstests' t_mmap_collision under wait and lease-break (where O_DIRECT
#                              works in /var/tmp)
#   tests/c/header_check.cpp   daxlab.h as C++17
# and checks daxlab.h with clang -Weverything as C11 (no warning at all) and as C++17 (all but the
# C++98-compatibility ones, which concern only style).
#
# With --tsan (make tsan): LIBRARY is a ThreadSanitizer build, and test_api and rdma-like are built
# with clang -fsanitize=thread against it and run; any report fails them (exit status 66).
#
# Usage: scripts/test-c.sh [--tsan] LIBRARY     (SwiftPM's libDaxlabC.so)
set -euo pipefail
cd "$(dirname "$0")/.."

tsan=false
if [ "${1:-}" = --tsan ]; then tsan=true; shift; fi
library=${1:?usage: $0 [--tsan] LIBRARY}
work=$(mktemp -d /tmp/daxlab-test-c.XXXXXX)
trap 'rm -rf "$work"' EXIT
CC=${CC:-$(command -v cc || command -v clang)}
CXX=${CXX:-$(command -v c++ || command -v clang++)}
CLANG=$(command -v clang || true)

scripts/install-lib.sh "$library" "$work/prefix"
export PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig
flags=$(pkg-config --cflags --libs daxlab)
echo "test-c: pkg-config --cflags --libs daxlab: $flags"
strict=(-Wall -Wextra -Werror -pthread)


# run NAME TIMEOUT COMMAND...: one program, time-limited.
run() {
    local name=$1 limit=$2; shift 2
    echo "test-c: $name"
    if ! timeout --kill-after=5 "$limit" "$@"; then echo "test-c: FAIL: $name" >&2; exit 1; fi
}

if $tsan; then
    # The toolchain's clang and ThreadSanitizer runtime, the ones the Swift build used (the
    # runtime's libdispatch interceptors need the toolchain's libdispatch).
    [ -n "$CLANG" ] || { echo "test-c: --tsan needs the toolchain's clang" >&2; exit 1; }
    runtime=$(dirname "$(dirname "$CLANG")")/lib/swift/linux
    for program in tests/c/test_api.c examples/c/rdma-like.c; do
        name=$(basename "$program" .c)
        # shellcheck disable=SC2086
        "$CLANG" -std=c11 -g -fsanitize=thread "${strict[@]}" "$program" $flags \
            -L "$runtime" -Wl,-rpath,"$runtime" -ldispatch -lBlocksRuntime -o "$work/$name"
        TSAN_OPTIONS=${TSAN_OPTIONS:-exitcode=66} run "$name (ThreadSanitizer)" 600 "$work/$name" "/dev/shm/daxlab-tsan-$name-$$.img"
    done
    echo "test-c: PASS (ThreadSanitizer: no report)"
    exit 0
fi

# shellcheck disable=SC2086
"$CC" -std=c11 "${strict[@]}" tests/c/test_api.c $flags -o "$work/test_api"
run test_api 300 "$work/test_api" "/dev/shm/daxlab-test-c-$$.img"
# shellcheck disable=SC2086
"$CC" -std=c11 "${strict[@]}" examples/c/rdma-like.c $flags -o "$work/rdma-like"
run rdma-like 120 "$work/rdma-like" "/dev/shm/daxlab-rdma-like-$$.img"
# shellcheck disable=SC2086
"$CC" -std=c11 "${strict[@]}" examples/c/collision.c $flags -o "$work/collision"
if probe=$(mktemp /var/tmp/.daxlab-probe.XXXXXX) && dd if=/dev/zero of="$probe" bs=4096 count=1 oflag=direct status=none 2>/dev/null; then
    rm -f "$probe"
    for policy in wait lease-break; do
        run "collision $policy" 120 "$work/collision" "$policy" "/dev/shm/daxlab-collision-$$.img" /var/tmp
    done
else
    rm -f "$probe"
    echo "test-c: collision skipped: O_DIRECT is refused in /var/tmp (it needs a disk file system)"
fi
# shellcheck disable=SC2086
"$CXX" -std=c++17 -Wall -Wextra -Werror tests/c/header_check.cpp $flags -o "$work/header_check"
run header_check 10 "$work/header_check"
if [ -n "$CLANG" ]; then
    echo '#include <daxlab.h>' > "$work/header.c"
    "$CLANG" -std=c11 -Weverything -Werror -fsyntax-only -I "$work/prefix/include" "$work/header.c"
    "$CLANG" -x c++ -std=c++17 -Weverything -Wno-c++98-compat -Wno-c++98-compat-pedantic -Werror -fsyntax-only \
        -I "$work/prefix/include" tests/c/header_check.cpp
    echo "test-c: daxlab.h is clean under clang -Weverything (C11; C++17 but for the C++98-compatibility warnings)"
fi
echo "test-c: PASS"
