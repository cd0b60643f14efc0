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
        try holding(try lab.space.pin(2..<3, write: true)) { handle in
            let block = handle.block(at: 0)
            try lab.fs.truncate(lab.file, size: 4096)
            #expect(lab.fs.isFreeForAllocation(block), "freed while pinned: a later owner shares it with the device")
            #expect(lab.dax.statistics.pinnedBlocksFreed.load(ordering: .relaxed) == 1)
        }
    }

    @Test("fail: EBUSY, nothing changes; after the unpin the truncate goes through")
    func fail() throws {
        let lab = try Lab(policy: .fail)
        let block = try holding(try lab.space.pin(2..<3, write: true)) { handle in
            let block = handle.block(at: 0)
            do {
                try lab.fs.truncate(lab.file, size: 4096)
                Issue.record("truncate over a pinned block succeeded under fail")
            } catch let error as FSError { #expect(error.code == .busy) }
            do {
                try lab.fs.punchHole(lab.file, offset: 8192, length: 4096)
                Issue.record("punch over a pinned block succeeded under fail")
            } catch let error as FSError { #expect(error.code == .busy) }
            #expect(try lab.fs.stat(lab.file).size == 16 * 4096)
            #expect(lab.fs.currentBlock(lab.file, page: 2) == block)
            #expect(!lab.fs.isFreeForAllocation(block))
            #expect(try lab.fs.read(lab.file, offset: 8192, count: 4).allSatisfy { $0 == 0xAA })
            return block
        }
        try lab.fs.truncate(lab.file, size: 4096)
        #expect(lab.fs.isFreeForAllocation(block))
    }

    @Test("fail: an unaligned truncate and a partial punch refused with EBUSY change not one byte")
    func failChangesNothing() throws {
        let lab = try Lab(policy: .fail)
        try holding(try lab.space.pin(2..<3, write: true)) { _ in
            let before = try lab.fs.read(lab.file, offset: 0, count: 16 * 4096)
            for attempt in [{ try lab.fs.truncate(lab.file, size: 4096 + 100) },
                            { try lab.fs.punchHole(lab.file, offset: 4096 + 100, length: 3 * 4096) }] {
                do {
                    try attempt()
                    Issue.record("succeeded over a pinned block")
                } catch let error as FSError { #expect(error.code == .busy) }
                #expect(try lab.fs.read(lab.file, offset: 0, count: 16 * 4096) == before, "bytes changed by a refused call")
            }
        }
    }

    @Test("zero-range over a pinned page: fail refuses and changes nothing (not even the size); sequester moves the block away and gives the page a new one")
    func zeroRangeOverPin() throws {
        let failing = try Lab(policy: .fail)
        try holding(try failing.space.pin(2..<3, write: true)) { _ in
            do {
                try failing.fs.zeroRange(failing.file, offset: 4096, length: 20 * 4096)
                Issue.record("zero-range over a pinned block succeeded under fail")
            } catch let error as FSError { #expect(error.code == .busy) }
            #expect(try failing.fs.stat(failing.file).size == 16 * 4096, "not grown")
            #expect(try failing.fs.read(failing.file, offset: 0, count: 16 * 4096).allSatisfy { $0 == 0xAA })
        }

        let lab = try Lab(policy: .sequester)
        try holding(try lab.space.pin(2..<3, write: true)) { pinned in
            let block = pinned.block(at: 0)
            try lab.fs.zeroRange(lab.file, offset: 4096, length: 20 * 4096)
            #expect(try lab.fs.stat(lab.file).size == 21 * 4096)
            #expect(lab.fs.lostFoundBlocks == 1, "the pinned block went to lost+found")
            let now = lab.fs.currentBlock(lab.file, page: 2)
            #expect(now != 0 && now != block, "the page has a new zeroed block")
            #expect(try lab.fs.read(lab.file, offset: 4096, count: 20 * 4096).allSatisfy { $0 == 0 })
        }
        lab.dax.waitForReclaims()
        #expect(lab.fs.lostFoundBlocks == 0)
    }

    @Test("collapse-range asks about the whole tail: fail refuses over a pinned block after the range; sequester waits for it (a moving block cannot go to limbo); none moves it under the pin")
    func collapseOverPin() throws {
        let failing = try Lab(policy: .fail)
        try holding(try failing.space.pin(10..<11, write: true)) { _ in  // after the collapsed range: it would move
            do {
                try failing.fs.collapseRange(failing.file, offset: 2 * 4096, length: 2 * 4096)
                Issue.record("collapse moved a pinned block under fail")
            } catch let error as FSError { #expect(error.code == .busy) }
            #expect(try failing.fs.stat(failing.file).size == 16 * 4096)
        }

        let lab = try Lab(policy: .sequester)
        let slot = HandleSlot(try lab.space.pin(10..<11, write: true))
        defer { slot.unpin() }
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
        try holding(try buggy.space.pin(10..<11, write: true)) { pinned in
            let moved = pinned.block(at: 0)
            try buggy.fs.collapseRange(buggy.file, offset: 2 * 4096, length: 2 * 4096)
            #expect(buggy.fs.currentBlock(buggy.file, page: 8) == moved, "none: moved while a device holds it (the bug)")
        }
    }

    /// The truncate's sleep is read from the wait queue itself, not inferred from time passing:
    /// it is counted as a waiter on the pinned block's queue (`hasWaiters(on:)`) and as one sleep
    /// in the policy's counters. The sleep has no deadline (no `waitTimeout`; the queue counts
    /// none begun with one), so only a wake-up ends it: none comes while the block stays pinned
    /// (no broadcast, no return from the condition variable), the last unpin broadcasts once,
    /// and the truncate wakes, finds the block idle and goes on without sleeping again.
    @Test("wait: sleeps on the pinned block until the unpin, woken by the unpin itself (no timer), then frees")
    func wait() throws {
        let lab = try Lab(policy: .wait)
        let file = lab.file
        let pins = lab.dax.pins
        let statistics = lab.dax.statistics
        let failure = Box<FSError?>(nil)
        let (block, truncated) = try holding(try lab.space.pin(2..<3, write: true)) { handle in
            let block = handle.block(at: 0)
            let truncated = lab.background {
                do throws(FSError) { try lab.fs.truncate(file, size: 4096) } catch { failure.value = error }
            }
            try #require(waitUntil(seconds: 30) { pins.hasWaiters(on: block) || truncated.isDone },
                         "the truncate neither returned nor waited on the pinned block")
            #expect(!truncated.isDone, "the truncate returned while the block was pinned: \(String(describing: failure.value))")
            #expect(statistics.truncatesWaited.load(ordering: .relaxed) == 1)
            #expect(statistics.waits.load(ordering: .relaxed) == 1, "one sleep, on the pinned block")
            #expect(lab.fs.currentBlock(file, page: 2) == block)
            #expect(!lab.fs.isFreeForAllocation(block))
            #expect(pins.wakeBroadcasts == 0, "a broadcast while the block stayed pinned")
            #expect(pins.waitWakeups == 0, "the sleeper woke while the block stayed pinned: a timer")
            #expect(pins.timedWaits == 0, "the sleep has a deadline: a timer")
            return (block, truncated)
        }
        // (`holding` has unpinned: the block's last pin.)
        #expect(truncated.wait(seconds: 30), "the truncate did not finish after the unpin")
        #expect(failure.value == nil, "the truncate failed: \(String(describing: failure.value))")
        #expect(pins.wakeBroadcasts == 1, "the last unpin woke the block's queue, once")
        #expect((1...2).contains(pins.waitWakeups), "woken by the unpin's broadcast: \(pins.waitWakeups) wake-ups")
        #expect(statistics.waits.load(ordering: .relaxed) == 1, "woken, it found the block idle and did not sleep again")
        #expect(pins.timedWaits == 0 && pins.expiredWaits == 0, "a sleep with a deadline, or ended by one")
        #expect(lab.fs.isFreeForAllocation(block))
        #expect(try lab.fs.stat(file).size == 4096)
    }

    @Test("a rename over a pinned file waits for the pin without the namespace lock: other names are created and removed meanwhile, the two names it holds are busy, and it completes at the unpin")
    func renameWaitsAlone() throws {
        let lab = try Lab(policy: .wait)
        let source = try lab.fs.create("new")
        try lab.fs.write(source, offset: 0, bytes: [1, 2, 3])
        let renamed = try holding(try lab.space.pin(2..<3, write: true)) { handle in
            let block = handle.block(at: 0)
            let renamed = lab.background { _ = try? lab.fs.rename("new", to: "data") }  // replaces the pinned file
            try #require(waitUntil(seconds: 30) { lab.dax.pins.hasWaiters(on: block) }, "the rename never waited for the pin")
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
            return renamed
        }
        #expect(renamed.wait(seconds: 30))
        let renamedFile = try lab.fs.lookup("data")
        #expect(renamedFile == source)
        #expect(try lab.fs.read(renamedFile, offset: 0, count: 3) == [1, 2, 3])
        #expect(throws: FSError.self) { try lab.fs.lookup("new") }
        #expect(lab.fs.checkQuiesced().problems.isEmpty)
    }

    @Test("while an unlink waits for a pinned file, its name is busy: create and openOrCreate say so (not 'exists' or 'no such file'), and list no longer shows it")
    func unlinkKeepsItsNameBusy() throws {
        let lab = try Lab(policy: .wait)
        let handle = try lab.space.pin(2..<3, write: true)
        let block = handle.block(at: 0)
        let unlinked = lab.background { try! lab.fs.unlink("data") }
        let waiting = waitUntil(seconds: 30) { lab.dax.pins.hasWaiters(on: block) }
        #expect(waiting, "the unlink never waited for the pin")
        // Nothing that throws until the unpin: a dropped pin would stop the test process.
        let created = Result { () throws(FSError) in try lab.fs.create("data") }
        let opened = Result { () throws(FSError) in try lab.fs.openOrCreate("data") }
        let listed = lab.fs.list().map(\.name)
        #expect(!unlinked.isDone, "the unlink returned while the block was pinned")
        handle.unpin()
        #expect(unlinked.wait(seconds: 30), "the unlink did not finish after the unpin")
        #expect(created.failure?.code == .busy, "create during the unlink: \(created)")
        #expect(opened.failure?.code == .busy, "openOrCreate during the unlink: \(opened)")
        #expect(listed.isEmpty, "the file the unlink took the name of is not listed: \(listed)")
        #expect(throws: FSError.self) { try lab.fs.lookup("data") }
        let again = try lab.fs.openOrCreate("data")
        #expect(try lab.fs.stat(again).size == 0, "a new, empty file once the unlink is done")
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
        try holding(try lab.space.pin(5..<7, write: true)) { _ in
            do {
                try lab.fs.truncate(lab.file, size: 0)
                Issue.record("truncate returned under a pin")
            } catch let error as FSError { #expect(error.code == .timedOut) }
            #expect(try lab.fs.stat(lab.file).size == 16 * 4096)
            #expect(try lab.fs.read(lab.file, offset: 5 * 4096, count: 8192).allSatisfy { $0 == 0xAA })
        }
    }

    @Test("sequester: the busy block moves to lost+found at once and is freed on its last unpin")
    func sequester() throws {
        let lab = try Lab(policy: .sequester)
        let blocks = try holding(try lab.space.pin(2..<4, write: true)) { handle in
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
            return blocks
        }
        lab.dax.waitForReclaims()  // the release runs on the reclaimer thread, not in the unpin
        #expect(lab.fs.lostFoundBlocks == 0)
        #expect(blocks.allSatisfy { lab.fs.isFreeForAllocation($0) })
        try lab.fs.unmount()
        #expect(try Fsck.run(path: lab.path).isClean)
    }

    @Test("sequester: a crash with blocks in lost+found is reclaimed at the next mount")
    func sequesterReclaimedAtMount() throws {
        let lab = try Lab(policy: .sequester)
        let image = try holding(try lab.space.pin(0..<3, write: true)) { _ in
            try lab.fs.truncate(lab.file, size: 0)
            #expect(lab.fs.lostFoundBlocks == 3)
            // Stand-in for a crash: the image is left as it is, mounted, pins outstanding.
            return try Data(contentsOf: URL(fileURLWithPath: lab.path))
        }
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
        let block = try holding(try lab.space.pin(3..<4, write: true)) { handle in
            let block = handle.block(at: 0)
            try lab.fs.punchHole(lab.file, offset: 0, length: 8 * 4096)
            #expect(lab.fs.currentBlock(lab.file, page: 3) == 0)
            #expect(try lab.fs.read(lab.file, offset: 3 * 4096, count: 4096).allSatisfy { $0 == 0 })
            #expect(!lab.fs.isFreeForAllocation(block))
            #expect(lab.fs.lostFoundBlocks == 0, "deferred keeps them in a volatile list, not lost+found")
            return block
        }
        lab.dax.waitForReclaims()
        #expect(lab.fs.isFreeForAllocation(block))
    }

    /// The truncate sleeps on the pinned block until the break time (one sleep, with that
    /// deadline, ended by it) and then revokes: the holder was told first, and the revoker drops
    /// the pins.
    @Test("lease-break: the holder is told; past the break time its pins are revoked and its writes refused")
    func leaseBreakRevokes() throws {
        let lab = try Lab(policy: .leaseBreak, times: PolicyTimes(leaseBreakTime: .milliseconds(80)))
        let statistics = lab.dax.statistics
        let holder = Holder()
        _ = try holding(try lab.space.pin(2..<4, write: true, holder: holder)) { handle in
            let block = handle.block(at: 0)
            #expect(try lab.space.leaseList.count == 1)
            try lab.fs.truncate(lab.file, size: 4096)
            #expect(holder.breaks.value == 1)
            #expect(statistics.leaseBreaks.load(ordering: .relaxed) == 1)
            #expect(statistics.waits.load(ordering: .relaxed) == 1, "slept on the pinned block")
            #expect(lab.dax.pins.timedWaits == 1 && lab.dax.pins.expiredWaits == 1,
                    "the sleep's deadline was the break time, and it ended there, the block still pinned")
            let revoked = handle.isRevoked
            #expect(revoked)
            #expect(statistics.revocations.load(ordering: .relaxed) == 1)
            #expect(lab.dax.pins.pinCount(block) == 0, "the revoker dropped the pins")
            let data = [UInt8](repeating: 9, count: 4096)
            #expect(try !data.withUnsafeBytes { try handle.write(at: 0, from: $0.baseAddress!, count: 4096) }, "fenced")
            #expect(lab.fs.isFreeForAllocation(block))
            return block
        }
        // (`holding` unpinned: that ends the lease; the pins are not dropped twice.)
        #expect(try lab.space.leaseList.isEmpty)
        #expect(lab.dax.statistics.revocations.load(ordering: .relaxed) == 1)
    }

    /// The break time is an hour: a truncate that sat it out would still be asleep at the hang
    /// guard. It returns because the holder unpinned, with nothing revoked.
    @Test("lease-break: a holder that answers by unpinning is not revoked, and its unpin wakes the truncate")
    func leaseBreakCooperative() throws {
        let lab = try Lab(policy: .leaseBreak, times: PolicyTimes(leaseBreakTime: .seconds(3600)))
        let holder = Holder()
        let slot = HandleSlot(try lab.space.pin(2..<4, write: true, holder: holder))
        defer { slot.unpin() }
        holder.onBreak = {
            Thread { slot.unpin() }.start()
        }
        let file = lab.file
        let failure = Box<FSError?>(nil)
        let truncated = lab.background {
            do throws(FSError) { try lab.fs.truncate(file, size: 4096) } catch { failure.value = error }
        }
        #expect(truncated.wait(seconds: 30), "the truncate sat out the break time though the holder unpinned")
        #expect(failure.value == nil, "\(String(describing: failure.value))")
        #expect(holder.breaks.value == 1)
        #expect(slot.withHandle { _ in true } == nil, "the holder's unpin ran")
        #expect(lab.dax.pins.expiredWaits == 0, "the sleep ended at the break time")
        #expect(lab.dax.statistics.revocations.load(ordering: .relaxed) == 0)
        #expect(try lab.fs.stat(file).size == 4096)
    }

    /// The event each policy reaches with the pin held: the truncate returned (none, fail,
    /// sequester, deferred) or it sleeps on the pinned block (wait, mainline, lease-break). The test waits
    /// for that event, not for a time, so it cannot pass without the truncate having run.
    @Test("every policy but none keeps a pinned block out of the allocator until its last unpin",
          arguments: TruncatePolicy.allCases)
    func pinnedBlockNeverFreed(policy: TruncatePolicy) throws {
        let lab = try Lab(policy: policy, times: PolicyTimes(leaseBreakTime: .seconds(60)))
        let file = lab.file
        let statistics = lab.dax.statistics
        let (block, truncated) = try holding(
            try lab.space.pin(1..<2, write: true, term: .shortTerm)  // (mainline refuses long-term)
        ) { handle in
            let block = handle.block(at: 0)
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
            return (block, truncated)
        }
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
