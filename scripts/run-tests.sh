#!/usr/bin/env bash
# Runs a test command with its output streamed as usual and kept in a log; when it fails, repeats
# the lines that say what failed at the very end, where a CI page that shows only the last lines
# of a long run will show them (160 tests print thousands of lines; the failure is somewhere in
# the middle).
#
# Usage: scripts/run-tests.sh LOG COMMAND [ARG...]
set -uo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 LOG COMMAND [ARG...]" >&2
    exit 2
fi
log=$1
shift
mkdir -p "$(dirname "$log")"

"$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    echo
    echo "=== what failed (exit $rc; the whole output is in $log) ==="
    # Swift Testing: a failed test (✘) and each issue it recorded, with the expectation's
    # source location and values; XCTest: error: lines; a trap or a signal: fatal error / Fatal.
    grep -a -E '✘|recorded an issue|error:|[Ff]atal|Exited with|signal|Crash' "$log" \
        | grep -a -v -E '^✘ Test run with' | tail -n 40
fi
exit "$rc"
