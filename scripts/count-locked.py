# Counts what one pin+unpin of daxlab executes, instruction by instruction: every instruction,
# and every locked one (a `lock`-prefixed read-modify-write or an `xchg` with memory: the atomics
# whose cost differs most between machines, ~2 ns on the AMD EPYC dev VM, ~7 ns on a 16-core
# Xeon host), with the function each ran in (a reference count's retain or release names its
# caller). Timing-free, so a noisy machine cannot move it. Needs gdb (Debian: gdb) and a release
# build with symbols (`swift build -c release`, the default keeps them).
#
#   gdb -batch -ex 'py PAGES=1' -x scripts/count-locked.py .build/release/daxlab
#
# It runs `daxlab bench --only pin` (which pins one page and 512 pages of one file over and
# over), stops at the 50th pin of PAGES pages, and steps until the unpin that follows has
# returned to the bench's loop: one pin and one unpin, the handle's few instructions between.
import gdb

PAGES = globals().get("PAGES", 1)
PIN = ("'$s3DAX12AddressSpaceC3pin_5write6holder4term6kernelAA9PinHandleVSnySiG_SbAA11LeaseHolder"
       "_pSgAA0I4TermOSgAA06KernelI0Ot5DaxFS7FSErrorVYKF'")
gdb.execute("set pagination off")
gdb.execute("set confirm off")
# The range arrives in rdi (lower bound) and rsi (upper bound).
gdb.execute("break " + PIN + " if $rsi - $rdi == %d" % PAGES)
gdb.execute("run bench /dev/shm/daxlab-count-locked.pmem --only pin --seconds 0.3 > /dev/null 2>&1")
for _ in range(49):
    gdb.execute("continue")
caller = gdb.selected_frame().older().name()
gdb.execute("delete")
steps = 0
unpinned = False
locked = {}
per_function = {}
limit = 2000 + 200 * PAGES
while steps < limit:
    gdb.execute("stepi", to_string=True)
    steps += 1
    pc = int(gdb.parse_and_eval("$pc"))
    frame = gdb.selected_frame()
    name = frame.name() or hex(pc)
    if "unpin" in name:
        unpinned = True
    elif unpinned and name == caller:
        break
    per_function[name] = per_function.get(name, 0) + 1
    asm = frame.architecture().disassemble(pc)[0]["asm"]
    if asm.startswith("lock") or asm.startswith("xchg"):
        if name.startswith("swift_") and frame.older() is not None:
            name += " <- " + (frame.older().name() or "?")
        locked[name] = locked.get(name, 0) + 1
print("pin+unpin of %d page(s): %d instructions, %d locked%s" % (
    PAGES, steps, sum(locked.values()), "" if steps < limit else " (stopped at the step limit)"))
for name, count in sorted(locked.items(), key=lambda item: -item[1]):
    print("  locked %4d  %s" % (count, name[:140]))
for name, count in sorted(per_function.items(), key=lambda item: -item[1])[:12]:
    print("  insns  %4d  %s" % (count, name[:140]))
gdb.execute("kill")
