# Counts what one hot-path operation of daxlab executes, instruction by instruction: every
# instruction, and every locked one (a `lock`-prefixed read-modify-write or an `xchg` with
# memory: the atomics whose cost differs most between machines, ~2 ns on the AMD EPYC dev VM,
# ~7 ns on a 16-core Xeon host), with the function each ran in (a reference count's retain or
# release names its caller). Timing-free, so a noisy machine cannot move it. Needs gdb (Debian:
# gdb) and a release build with symbols (`swift build -c release`, the default keeps them).
#
#   gdb -batch -ex 'py PAGES=1' -x scripts/count-locked.py .build/release/daxlab
#   gdb -batch -ex 'py CYCLE="alloc"' -x scripts/count-locked.py .build/release/daxlab
#
# CYCLE "pin" (the default) runs `daxlab bench --only pin` (which pins one page and 512 pages
# of one file over and over), stops at the 50th pin of PAGES pages, and steps until the unpin
# that follows has returned to the bench's loop: one pin and one unpin, the handle's few
# instructions between. CYCLE "alloc" runs `--only alloc` and steps one alloc.block cycle from
# its 50th write fault on a hole (the fault's slow path) until the punch that follows returns:
# one block allocated and freed, durably. (One fault in 31 also scrubs the blocks punches gave
# back, thousands of instructions more; when the 50th is such a one, the count stops at its step
# limit and says so: run it again.)
import re

import gdb

CYCLE = globals().get("CYCLE", "pin")
PAGES = globals().get("PAGES", 1)
gdb.execute("set pagination off")
gdb.execute("set confirm off")
if CYCLE == "pin":
    START = ("'$s3DAX12AddressSpaceC3pin_5write6holder4term6kernelAA9PinHandleVSnySiG_SbAA11LeaseHolder"
             "_pSgAA0I4TermOSgAA06KernelI0Ot5DaxFS7FSErrorVYKF'")
    # The range arrives in rdi (lower bound) and rsi (upper bound).
    gdb.execute("break " + START + " if $rsi - $rdi == %d" % PAGES)
    # (A function named `unpin`: its mangled name holds the identifier as "5unpin". A parameter
    # label such as `unpinning` in another function's name must not end the count.)
    END, WHAT, GROUP = r"(?<![0-9])5unpin", "pin+unpin of %d page(s)" % PAGES, "pin"
else:
    gdb.execute("break '$s3DAX12AddressSpaceC9faultSlow_5writeSVSi_Sbt5DaxFS7FSErrorVYKF'")
    END, WHAT, GROUP = r"punchHole", "write fault + punch of one page (alloc.block)", "alloc"
gdb.execute("run bench /dev/shm/daxlab-count-locked.pmem --only %s --seconds 0.3 > /dev/null 2>&1" % GROUP)
for _ in range(49):
    gdb.execute("continue")
caller = gdb.selected_frame().older().name()
gdb.execute("delete")
steps = 0
ended = False
locked = {}
per_function = {}
callers = {}
counted = {}
per_function_last = ()
# Names (substrings) of functions whose callers to list too: WHO_CALLS=["Hasher"].
WHO_CALLS = globals().get("WHO_CALLS", [])
# TRACE=1: also print, in order, the step of every locked instruction, cache-line write-back and
# fence: how much work lies between a persist and the locked instruction that waits for it.
TRACE = globals().get("TRACE", 0)
trace = []
limit = 2000 + 200 * PAGES if CYCLE == "pin" else 20000
while steps < limit:
    gdb.execute("stepi", to_string=True)
    steps += 1
    pc = int(gdb.parse_and_eval("$pc"))
    frame = gdb.selected_frame()
    name = frame.name() or hex(pc)
    if re.search(END, name):
        ended = True
    elif ended and name == caller:
        break
    if name in ("swift_retain", "swift_release", "swift_release_n") and name not in per_function_last:
        # Entered a reference count: whose object (its class's metadata symbol)?
        try:
            what = gdb.execute("info symbol *(long *)$rdi", to_string=True).split(" in section")[0].strip()
        except gdb.MemoryError:
            what = "nil"
        key = "%s of %s <- %s" % (name, what[:70], (frame.older().name() or "?")[:70])
        counted[key] = counted.get(key, 0) + 1
    per_function_last = (name,)
    per_function[name] = per_function.get(name, 0) + 1
    if any(text in name for text in WHO_CALLS):
        key = name[:60] + " <- " + ((frame.older().name() or "?") if frame.older() else "?")
        callers[key] = callers.get(key, 0) + 1
    asm = frame.architecture().disassemble(pc)[0]["asm"]
    # (`xchg %ax,%ax` is a two-byte no-op: only an exchange with memory counts.)
    if asm.startswith("lock") or (asm.startswith("xchg") and "(" in asm):
        if name.startswith("swift_") and frame.older() is not None:
            name += " <- " + (frame.older().name() or "?")
        locked[name] = locked.get(name, 0) + 1
        if TRACE:
            trace.append("%6d  locked  %s" % (steps, name[:150]))
    elif TRACE and asm.split()[0] in ("clwb", "clflushopt", "clflush", "sfence", "mfence"):
        older = frame.older().name() if frame.older() else "?"
        trace.append("%6d  %-7s %s <- %s" % (steps, asm.split()[0], name[:60], (older or "?")[:90]))
print("%s: %d instructions, %d locked%s" % (
    WHAT, steps, sum(locked.values()), "" if steps < limit else " (stopped at the step limit)"))
for line in trace:
    print(line)
for name, count in sorted(locked.items(), key=lambda item: -item[1]):
    print("  locked %4d  %s" % (count, name[:140]))
for name, count in sorted(per_function.items(), key=lambda item: -item[1])[:int(globals().get("TOP", 12))]:
    print("  insns  %4d  %s" % (count, name[:140]))
for name, count in sorted(counted.items(), key=lambda item: -item[1]):
    print("  refcount %2d  %s" % (count, name))
for name, count in sorted(callers.items(), key=lambda item: -item[1]):
    print("  called %4d  %s" % (count, name[:200]))
gdb.execute("kill")
