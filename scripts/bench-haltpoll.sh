#!/usr/bin/env bash
# The kernel rows of `daxlab bench` on a guest whose idle CPUs poll before they halt.
#
# A window's 4 KiB fault is a round trip between two threads: the faulting thread sleeps in the
# kernel while the fault service maps the page, then is woken on its CPU. A guest booted with
# haltpoll.guest_halt_poll_ns=0 halts that CPU the moment the thread sleeps, and bringing a halted
# vCPU back costs more the longer it has been halted, so the row measures the VM's halt as much as
# daxlab. This runs the kernel rows with guest_halt_poll_ns at the haltpoll governor's default
# (200 µs, what a guest that does not turn it off gets), then puts the old value back, whatever
# happens.
#
# Usage: scripts/bench-haltpoll.sh BINARY [OUT.json]   (as root, on a guest with the haltpoll
# cpuidle governor; exit 2 elsewhere)
set -euo pipefail

[ -x "${1:-}" ] || { echo "usage: $0 BINARY [OUT.json] (BINARY: a built daxlab; ${1:-none} is not one)" >&2; exit 2; }
binary=$(realpath "$1")
out=$(realpath -m "${2:-$(dirname "$0")/../docs/bench-haltpoll.json}")
parameter=/sys/module/haltpoll/parameters/guest_halt_poll_ns
governor=$(cat /sys/devices/system/cpu/cpuidle/current_governor 2>/dev/null || true)
if [ "$governor" != haltpoll ] || [ ! -w "$parameter" ]; then
    echo "bench-haltpoll: needs root on a guest whose idle governor is haltpoll (this one: ${governor:-none})" >&2
    exit 2
fi
old=$(cat "$parameter")
child=
# The old value comes back however this ends; a signal ends the run first, so that no part of
# it goes on at the old value under a report that says 200000.
trap 'echo "$old" > "$parameter"' EXIT
trap '[ -n "$child" ] && kill "$child" 2>/dev/null; wait; exit 143' TERM INT HUP
echo 200000 > "$parameter"
echo "bench-haltpoll: guest_halt_poll_ns $old -> 200000 for this run"
"$binary" bench --only kernel --json "$out" &
child=$!
wait "$child"
echo "bench-haltpoll: report in $out (guest_halt_poll_ns goes back to $old)"
