import DAX
@_spi(Oracle) import DaxFS
import Foundation
import Testing
import TestSupport

@Suite("Truncate policies with a pinned block", .timeLimit(.minutes(2)))
struct PolicyTests {
    @Test("none: the pinned block is freed at once (the bug)")
    func none() throws {
        let lab = try Lab(policy: .none)
        let handle = try lab.space.pin(2..<3, write: true)
        let block = handle.block(at: 0)
        try lab.fs.truncate(lab.file, size: 4096)
        #expect(lab.fs.isFreeForAllocation(block), "freed while pinned: a later owner shares it with the device")
        #expect(lab.dax.statistics.pinnedBlocksFreed.load(ordering: .relaxed) == 1)
        handle.unpin()
    }

    @Test("fail: EBUSY, nothing changes; after the unpin the truncate goes through")
    func fail() throws {
        let lab = try Lab(policy: .fail)
        let handle = try lab.space.pin(2..<3, write: true)
        let block = handle.block(at: 0)
        do {
            try lab.fs.truncate(lab.file, size: 4096)
            Issue.record("truncate over a pinned block succeeded under fail")
        } catch { #expect(error.code == .busy) }
        do {
            try lab.fs.punchHole(lab.file, offset: 8192, length: 4096)
            Issue.record("punch over a pinned block succeeded under fail")
        } catch { #expect(error.code == .busy) }
        #expect(try lab.fs.stat(lab.file).size == 16 * 4096)
        #expect(lab.fs.currentBlock(lab.file, page: 2) == block)
        #expect(!lab.fs.isFreeForAllocation(block))
        #expect(try lab.fs.read(lab.file, offset: 8192, count: 4).allSatisfy { $0 == 0xAA })
        handle.unpin()
        try lab.fs.truncate(lab.file, size: 4096)
        #expect(lab.fs.isFreeForAllocation(block))
    }

    @Test("fail: an unaligned truncate and a partial punch refused with EBUSY change not one byte")
    func failChangesNothing() throws {
        let lab = try Lab(policy: .fail)
        let handle = try lab.space.pin(2..<3, write: true)
        let before = try lab.fs.read(lab.file, offset: 0, count: 16 * 4096)
        for attempt in [{ try lab.fs.truncate(lab.file, size: 4096 + 100) },
                        { try lab.fs.punchHole(lab.file, offset: 4096 + 100, length: 3 * 4096) }] {
            do {
                try attempt()
                Issue.record("succeeded over a pinned block")
            } catch let error as FSError { #expect(error.code == .busy) }
            #expect(try lab.fs.read(lab.file, offset: 0, count: 16 * 4096) == before, "bytes changed by a refused call")
        }
        handle.unpin()
    }

    @Test("zero-range over a pinned page: fail refuses and changes nothing (not even the size); sequester moves the block away and gives the page a new one")
    func zeroRangeOverPin() throws {
        let failing = try Lab(policy: .fail)
        let handle = try failing.space.pin(2..<3, write: true)
        do {
            try failing.fs.zeroRange(failing.file, offset: 4096, length: 20 * 4096)
            Issue.record("zero-range over a pinned block succeeded under fail")
        } catch { #expect(error.code == .busy) }
        #expect(try failing.fs.stat(failing.file).size == 16 * 4096, "not grown")
        #expect(try failing.fs.read(failing.file, offset: 0, count: 16 * 4096).allSatisfy { $0 == 0xAA })
        handle.unpin()

        let lab = try Lab(policy: .sequester)
        let pinned = try lab.space.pin(2..<3, write: true)
        let block = pinned.block(at: 0)
        try lab.fs.zeroRange(lab.file, offset: 4096, length: 20 * 4096)
        #expect(try lab.fs.stat(lab.file).size == 21 * 4096)
        #expect(lab.fs.lostFoundBlocks == 1, "the pinned block went to lost+found")
        let now = lab.fs.currentBlock(lab.file, page: 2)
        #expect(now != 0 && now != block, "the page has a new zeroed block")
        #expect(try lab.fs.read(lab.file, offset: 4096, count: 20 * 4096).allSatisfy { $0 == 0 })
        pinned.unpin()
        lab.dax.waitForReclaims()
        #expect(lab.fs.lostFoundBlocks == 0)
    }

    @Test("collapse-range asks about the whole tail: fail refuses over a pinned block after the range; sequester waits for it (a moving block cannot go to limbo); none moves it under the pin")
    func collapseOverPin() throws {
        let failing = try Lab(policy: .fail)
        let held = try failing.space.pin(10..<11, write: true)  // after the collapsed range: it would move
        do {
            try failing.fs.collapseRange(failing.file, offset: 2 * 4096, length: 2 * 4096)
            Issue.record("collapse moved a pinned block under fail")
        } catch { #expect(error.code == .busy) }
        #expect(try failing.fs.stat(failing.file).size == 16 * 4096)
        held.unpin()

        let lab = try Lab(policy: .sequester)
        let slot = HandleSlot(try lab.space.pin(10..<11, write: true))
        let block = lab.fs.currentBlock(lab.file, page: 10)
        let file = lab.file
        let statistics = lab.dax.statistics
        let collapsed = lab.background { _ = try? lab.fs.collapseRange(file, offset: 2 * 4096, length: 2 * 4096) }
        try #require(waitUntil(seconds: 20) { statistics.waits.load(ordering: .relaxed) > 0 }, "the collapse never slept")
        #expect(!collapsed.isDone, "the collapse moved a pinned block")
        #expect(lab.fs.lostFoundBlocks == 0)
        slot.unpin()
        #expect(collapsed.wait(seconds: 20))
        #expect(try lab.fs.stat(file).size == 14 * 4096)
        #expect(lab.fs.currentBlock(file, page: 8) == block, "the block moved down two pages once unpinned")

        let buggy = try Lab(policy: .none)
        let pinned = try buggy.space.pin(10..<11, write: true)
        let moved = pinned.block(at: 0)
        try buggy.fs.collapseRange(buggy.file, offset: 2 * 4096, length: 2 * 4096)
        #expect(buggy.fs.currentBlock(buggy.file, page: 8) == moved, "none: moved while a device holds it (the bug)")
        pinned.unpin()
    }

    @Test("wait: blocks until the unpin, woken by the unpin itself (no timer), then frees")
    func wait() throws {
        let lab = try Lab(policy: .wait)
        let handle = try lab.space.pin(2..<3, write: true)
        let block = handle.block(at: 0)
        let file = lab.file
        let truncated = lab.background { try! lab.fs.truncate(file, size: 4096) }
        // Longer than the seed patch's one-second poll: a timer would have fired by now.
        #expect(!truncated.wait(seconds: 1.3), "truncate returned while the block was pinned")
        #expect(!lab.fs.isFreeForAllocation(block))
        let wakeupsBefore = lab.dax.pins.waitWakeups
        let released = Date()
        handle.unpin()
        #expect(truncated.wait(seconds: 5))
        let latency = Date().timeIntervalSince(released)
        #expect(latency < 0.5, "woken \(latency) s after the unpin")
        #expect(lab.dax.pins.waitWakeups - wakeupsBefore <= 2, "woken by broadcasts, not ticks")
        #expect(wakeupsBefore == 0, "no wake-up while the block stayed pinned")
        #expect(lab.dax.pins.wakeBroadcasts >= 1)
        #expect(lab.fs.isFreeForAllocation(block))
        #expect(try lab.fs.stat(lab.file).size == 4096)
    }

    @Test("a rename over a pinned file waits for the pin without the namespace lock: other names are created and removed meanwhile, the two names it holds are busy, and it completes at the unpin")
    func renameWaitsAlone() throws {
        let lab = try Lab(policy: .wait)
        let handle = try lab.space.pin(2..<3, write: true)
        let block = handle.block(at: 0)
        let source = try lab.fs.create("new")
        try lab.fs.write(source, offset: 0, bytes: [1, 2, 3])
        let renamed = lab.background { try! lab.fs.rename("new", to: "data") }  // replaces the pinned file
        #expect(waitUntil(seconds: 30) { lab.dax.pins.hasWaiters(on: block) }, "the rename never waited for the pin")
        // Asleep in the wait queue now. The namespace is free: a file comes and goes.
        let other = try lab.fs.create("other")
        #expect(try lab.fs.lookup("other") == other)
        try lab.fs.unlink("other")
        // The two names it works on are not: nobody renames onto them, removes or creates them.
        let third = try lab.fs.create("third")
        #expect(throws: FSError.self) { try lab.fs.rename("third", to: "data") }
        #expect(throws: FSError.self) { try lab.fs.unlink("new") }
        #expect(throws: FSError.self) { try lab.fs.create("data") }
        #expect(try lab.fs.stat(third).size == 0)
        #expect(!renamed.isDone, "the rename went on while the block was pinned")
        handle.unpin()
        #expect(renamed.wait(seconds: 30))
        let renamedFile = try lab.fs.lookup("data")
        #expect(renamedFile == source)
        #expect(try lab.fs.read(renamedFile, offset: 0, count: 3) == [1, 2, 3])
        #expect(throws: FSError.self) { try lab.fs.lookup("new") }
        #expect(lab.fs.checkQuiesced().problems.isEmpty)
    }

    @Test("a rename of an older file over a pinned newer one takes the two files' locks in inode order, and holds neither while it waits: the renamed file is written and faulted meanwhile", .timeLimit(.minutes(1)))
    func renameOlderOverPinned() throws {
        let lab = try Lab(policy: .wait)  // "data": the lower inode number
        let target = try lab.fs.create("target")
        #expect(target.inode > lab.file.inode)
        try lab.fs.write(target, offset: 0, bytes: [UInt8](repeating: 0xBB, count: 4 * 4096))
        let handle = try lab.dax.open(target).pin(1..<2, write: true)
        let block = handle.block(at: 0)
        let renamed = lab.background { try! lab.fs.rename("data", to: "target") }
        #expect(waitUntil(seconds: 30) { lab.dax.pins.hasWaiters(on: block) }, "the rename never waited for the pin")
        // Asleep for the pin: the renamed file's lock is free (a write takes it exclusively, a
        // fault of a new page shared).
        try lab.fs.write(lab.file, offset: 0, bytes: [1, 2, 3])
        try lab.fs.truncate(lab.file, size: 17 * 4096)
        _ = try lab.space.fault(16, write: true)
        #expect(!renamed.isDone, "the rename went on while the block was pinned")
        handle.unpin()
        #expect(renamed.wait(seconds: 30))
        #expect(try lab.fs.lookup("target") == lab.file)
        #expect(try lab.fs.read(lab.file, offset: 0, count: 3) == [1, 2, 3])
        #expect(throws: FSError.self) { try lab.fs.stat(target) }
        #expect(lab.fs.checkQuiesced().problems.isEmpty)
    }

    @Test("wait with a timeout: a clear error, and nothing changed")
    func waitTimeout() throws {
        let lab = try Lab(policy: .wait, times: PolicyTimes(waitTimeout: .milliseconds(100)))
        let handle = try lab.space.pin(5..<7, write: true)
        do {
            try lab.fs.truncate(lab.file, size: 0)
            Issue.record("truncate returned under a pin")
        } catch { #expect(error.code == .timedOut) }
        #expect(try lab.fs.stat(lab.file).size == 16 * 4096)
        #expect(try lab.fs.read(lab.file, offset: 5 * 4096, count: 8192).allSatisfy { $0 == 0xAA })
        handle.unpin()
    }

    @Test("sequester: the busy block moves to lost+found at once and is freed on its last unpin")
    func sequester() throws {
        let lab = try Lab(policy: .sequester)
        let handle = try lab.space.pin(2..<4, write: true)
        let blocks = [handle.block(at: 0), handle.block(at: 1)]
        let idle = lab.fs.currentBlock(lab.file, page: 8)
        try lab.fs.truncate(lab.file, size: 4096)
        #expect(try lab.fs.stat(lab.file).size == 4096)
        #expect(lab.fs.lostFoundBlocks == 2)
        #expect(blocks.allSatisfy { !lab.fs.isFreeForAllocation($0) })
        #expect(lab.fs.isFreeForAllocation(idle), "idle blocks are freed at once")
        // The device keeps writing into its sequestered blocks; nobody else can own them.
        let data = [UInt8](repeating: 7, count: 4096)
        #expect(try data.withUnsafeBytes { try handle.write(at: 0, from: $0.baseAddress!, count: 4096) })
        handle.unpin()
        lab.dax.waitForReclaims()  // the release runs on the reclaimer thread, not in the unpin
        #expect(lab.fs.lostFoundBlocks == 0)
        #expect(blocks.allSatisfy { lab.fs.isFreeForAllocation($0) })
        try lab.fs.unmount()
        #expect(try Fsck.run(path: lab.path).isClean)
    }

    @Test("sequester: a crash with blocks in lost+found is reclaimed at the next mount")
    func sequesterReclaimedAtMount() throws {
        let lab = try Lab(policy: .sequester)
        let handle = try lab.space.pin(0..<3, write: true)
        try lab.fs.truncate(lab.file, size: 0)
        #expect(lab.fs.lostFoundBlocks == 3)
        // Stand-in for a crash: the image is left as it is, mounted, pins outstanding.
        let image = try Data(contentsOf: URL(fileURLWithPath: lab.path))
        handle.unpin()
        let copy = lab.path + ".crashed"
        defer { unlink(copy) }
        try image.write(to: URL(fileURLWithPath: copy))
        let remounted = try FileSystem.mount(path: copy)
        #expect(remounted.mountReport.wasDirty)
        #expect(remounted.mountReport.reclaimedLostFoundBlocks == 3)
        #expect(remounted.lostFoundBlocks == 0)
        try remounted.unmount()
        #expect(try Fsck.run(path: copy).isClean)
    }

    @Test("deferred: the busy block leaves the file at once but reaches the allocator only on its last unpin")
    func deferred() throws {
        let lab = try Lab(policy: .deferred)
        let handle = try lab.space.pin(3..<4, write: true)
        let block = handle.block(at: 0)
        try lab.fs.punchHole(lab.file, offset: 0, length: 8 * 4096)
        #expect(lab.fs.currentBlock(lab.file, page: 3) == 0)
        #expect(try lab.fs.read(lab.file, offset: 3 * 4096, count: 4096).allSatisfy { $0 == 0 })
        #expect(!lab.fs.isFreeForAllocation(block))
        #expect(lab.fs.lostFoundBlocks == 0, "deferred keeps them in a volatile list, not lost+found")
        handle.unpin()
        lab.dax.waitForReclaims()
        #expect(lab.fs.isFreeForAllocation(block))
    }

    @Test("lease-break: the holder is told; past the break time its pins are revoked and its writes refused")
    func leaseBreakRevokes() throws {
        let lab = try Lab(policy: .leaseBreak, times: PolicyTimes(leaseBreakTime: .milliseconds(80)))
        let holder = Holder()
        let handle = try lab.space.pin(2..<4, write: true, holder: holder)
        let block = handle.block(at: 0)
        #expect(try lab.space.leaseList.count == 1)
        let started = Date()
        try lab.fs.truncate(lab.file, size: 4096)
        let elapsed = Date().timeIntervalSince(started)
        #expect(elapsed >= 0.07, "waited the lease-break time (\(elapsed) s)")
        #expect(holder.breaks.value == 1)
        let revoked = handle.isRevoked
        #expect(revoked)
        #expect(lab.dax.statistics.revocations.load(ordering: .relaxed) == 1)
        #expect(lab.dax.pins.pinCount(block) == 0, "the revoker dropped the pins")
        let data = [UInt8](repeating: 9, count: 4096)
        #expect(try !data.withUnsafeBytes { try handle.write(at: 0, from: $0.baseAddress!, count: 4096) }, "fenced")
        #expect(lab.fs.isFreeForAllocation(block))
        handle.unpin()  // ends the lease; the pins are not dropped twice
        #expect(lab.dax.pins.pinCount(block) == 0)
        #expect(try lab.space.leaseList.isEmpty)
    }

    @Test("lease-break: a holder that answers by unpinning is not revoked")
    func leaseBreakCooperative() throws {
        let lab = try Lab(policy: .leaseBreak, times: PolicyTimes(leaseBreakTime: .seconds(30)))
        let holder = Holder()
        let slot = HandleSlot(try lab.space.pin(2..<4, write: true, holder: holder))
        holder.onBreak = {
            Thread { slot.unpin() }.start()
        }
        let started = Date()
        try lab.fs.truncate(lab.file, size: 4096)
        #expect(Date().timeIntervalSince(started) < 5, "did not sit out the 30 s break time")
        #expect(holder.breaks.value == 1)
        #expect(lab.dax.statistics.revocations.load(ordering: .relaxed) == 0)
    }

    /// The event each policy reaches with the pin held: the truncate returned (none, fail,
    /// sequester, deferred) or it sleeps on the pinned block (wait, mainline, lease-break). The test waits
    /// for that event, not for a time, so it cannot pass without the truncate having run.
    @Test("every policy but none keeps a pinned block out of the allocator until its last unpin",
          arguments: TruncatePolicy.allCases)
    func pinnedBlockNeverFreed(policy: TruncatePolicy) throws {
        let lab = try Lab(policy: policy, times: PolicyTimes(leaseBreakTime: .seconds(60)))
        let handle = try lab.space.pin(1..<2, write: true, term: .shortTerm)  // (mainline refuses long-term)
        let block = handle.block(at: 0)
        let file = lab.file
        let statistics = lab.dax.statistics
        let sleepsBefore = statistics.waits.load(ordering: .relaxed)
        let truncated = lab.background { _ = try? lab.fs.truncate(file, size: 0) }  // the mount's policy
        let decided = waitUntil(seconds: 20) {
            truncated.isDone || statistics.waits.load(ordering: .relaxed) > sleepsBefore
        }
        try #require(decided, "\(policy): the truncate neither returned nor slept on the pin")
        if policy.isProtective {
            #expect(!lab.fs.isFreeForAllocation(block), "\(policy): a pinned block reached the allocator")
        } else {
            #expect(lab.fs.isFreeForAllocation(block), "none frees the pinned block at once (the bug)")
        }
        #expect(truncated.isDone == [.none, .fail, .sequester, .deferred].contains(policy),
                "\(policy): returned while pinned, or slept where it must not")

        handle.unpin()
        #expect(truncated.wait(seconds: 20), "\(policy): the truncate did not finish after the unpin")
        lab.dax.waitForReclaims()
        if policy == .fail {
            #expect(lab.fs.currentBlock(file, page: 1) == block, "EBUSY: the file keeps its block")
            #expect(!lab.fs.isFreeForAllocation(block))
        } else {
            #expect(lab.fs.currentBlock(file, page: 1) == 0)
            #expect(lab.fs.isFreeForAllocation(block), "\(policy): the block is freed once unpinned")
        }
        #expect(lab.fs.lostFoundBlocks == 0)
    }
}

/// A pin handle another thread may unpin.
final class HandleSlot: @unchecked Sendable {
    private let lock = NSLock()
    private var handle: PinHandle?
    init(_ handle: consuming PinHandle) { self.handle = consume handle }
    func unpin() {
        self.lock.lock()
        let taken = self.handle.take()
        self.lock.unlock()
        taken?.unpin()
    }
}

@Suite("The README's DAX example")
struct ReadmeExampleTests {
    @Test("runs as written and does what its comments say")
    func example() throws {
        try withTemporaryPath("readme") { path in
            _ = try FileSystem.format(path: path, size: 8 << 20)
            let fs = try FileSystem.mount(path: path)
            let dax = try DAXFileSystem(
                fs: fs, policy: .wait, times: PolicyTimes(waitTimeout: .seconds(5), leaseBreakTime: .seconds(45)))
            let file = try fs.create("buffer")
            try fs.truncate(file, size: 64 << 10)

            let space = try dax.open(file)
            let page0 = try space.fault(0, write: true)
            #expect(page0.load(as: UInt64.self) == 0)
            let pins = try space.pin(0..<16, write: true, holder: nil)
            let data = [UInt8](repeating: 0x5A, count: 4096)
            let landed = try data.withUnsafeBytes { try pins.write(at: 3, from: $0.baseAddress!, count: 4096) }
            #expect(landed)
            #expect(try fs.read(file, offset: 3 * 4096, count: 4096) == data)
            try fs.truncate(file, size: 0, policy: .sequester)
            #expect(fs.lostFoundBlocks == 16)
            pins.unpin()                                      // its release is queued for the reclaimer
            dax.waitForReclaims()
            #expect(fs.lostFoundBlocks == 0)
            try fs.unmount()
            #expect(try Fsck.run(path: path).isClean)
        }
    }
}
