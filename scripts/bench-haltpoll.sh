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
cd "$(dirname "$0")/.."

binary=${1:?usage: $0 BINARY [OUT.json]}
out=${2:-docs/bench-haltpoll.json}
parameter=/sys/module/haltpoll/parameters/guest_halt_poll_ns
governor=$(cat /sys/devices/system/cpu/cpuidle/current_governor 2>/dev/null || true)
if [ "$governor" != haltpoll ] || [ ! -w "$parameter" ]; then
    echo "bench-haltpoll: needs root on a guest whose idle governor is haltpoll (this one: ${governor:-none})" >&2
    exit 2
fi
old=$(cat "$parameter")
trap 'echo "$old" > "$parameter"' EXIT
echo 200000 > "$parameter"
echo "bench-haltpoll: guest_halt_poll_ns $old -> 200000 for this run"
"$binary" bench --only kernel --json "$out"
echo "bench-haltpoll: report in $out (guest_halt_poll_ns goes back to $old)"
