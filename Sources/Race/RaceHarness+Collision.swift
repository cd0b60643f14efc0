import Atomics
import CShims
import DMA
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// The race made to happen once, on purpose, before the statistical phase, so that every run
/// shows what its policy does with a pinned block whatever the scheduler does:
///
/// 1. a device pins the first pages of a shared file and writes them;
/// 2. a truncate of that file runs on `daxlab-collide`; the device keeps its pin until the
///    truncate has reached its policy's decision (it returned, refused, or sleeps on the pins);
/// 3. blocks the truncate freed under the pin (policy `none`) are handed to another file: the
///    collision writer writes until its file owns one;
/// 4. the device writes into its pinned blocks again, and keeps its pin until the truncate
///    returned, its lease was revoked, or a lease-break time and a pin time have passed; then
///    it writes once more and unpins.
///
/// Under `none` that is the seed's bug, certain: stale DMA writes and a corrupted page of the
/// collision writer. `fail` refuses the truncate (EBUSY); `wait` and `lease-break` sleep on the
/// pins, and `lease-break` revokes the lease so the last writes are refused; `sequester` and
/// `deferred` hold the blocks in limbo.
extension RaceHarness {
    /// - Parameter operation: what the other thread does to the pinned range (the mixed race: a
    ///   truncate to 0).
    /// - Returns: false when the truncate did not decide within the watchdog's window (a deadlock).
    func collide(_ operation: CollisionOperation = .truncate) throws -> Bool {
        let config = self.configuration
        let file = self.sharedFiles[0]
        let pages = 0..<min(4, config.filePages)
        // One CPU for the whole collision: the blocks the device faults in and the blocks the
        // collision writer takes come from the same allocator shard, so a freed one is reused.
        _ = CShims_bind_to_cpu(CShims_current_cpu())
        defer { _ = CShims_unbind_cpu() }
        let device = self.collisionDevice
        try device.pin(file, pages: pages)
        device.transfer()

        let returned = ManagedAtomic<Bool>(false)
        let sleepsBefore = self.dax.statistics.waits.load(ordering: .relaxed)
        let truncater: JoinableThread
        do {
            truncater = try JoinableThread.spawn(name: "daxlab-collide") {
                self.cut(file) { () throws(FSError) in try self.collisionOperation(operation, on: file, pages: pages) }
                returned.store(true, ordering: .releasing)
            }
        } catch {
            device.unpin()
            throw error
        }
        let window = MonotonicClock.now() + UInt64(self.watchdogWindow * 1e9)
        while !returned.load(ordering: .acquiring), self.dax.statistics.waits.load(ordering: .relaxed) == sleepsBefore {
            guard MonotonicClock.now() < window else {
                device.unpin()
                return false  // the truncate is stuck: it is left unjoined, and the run reports a deadlock
            }
            usleep(100)
        }
        self.reuseFreedBlocks(device.pinnedBlocks)
        device.transfer()
        let holdUntil = MonotonicClock.now()
            + Duration.milliseconds(config.leaseBreakMilliseconds + config.pinMilliseconds + 20).nanoseconds
        while !returned.load(ordering: .acquiring), !device.isRevoked, MonotonicClock.now() < holdUntil {
            device.transfer()
            usleep(200)
        }
        device.transfer()
        device.unpin()  // before the join: under wait the truncate sleeps until this unpin
        truncater.join()
        return true
    }

    /// The collision's other thread: `operation` over the device's pinned `pages` (the file
    /// is `filePages` long, grown back after each round).
    private func collisionOperation(_ operation: CollisionOperation, on file: FileID, pages: Range<Int>) throws(FSError) {
        let policy = self.configuration.policy
        switch operation {
        case .truncate:
            try self.fs.truncate(file, size: 0, policy: policy)
        case .punch:
            try self.fs.punchHole(file, offset: 0, length: pages.count * pageSize, policy: policy)
        case .zeroRange:
            try self.fs.zeroRange(file, offset: 0, length: pages.count * pageSize, keepSize: true, policy: policy)
        case .collapse:
            // Half the pinned range leaves the file; the other half moves down into its place.
            try self.fs.collapseRange(file, offset: 0, length: max(1, pages.count / 2) * pageSize, policy: policy)
        }
    }

    /// Lets the collision writer take one of `blocks` if the truncate freed any (per the
    /// oracle): it writes page after page of its file until the shadow table shows it owns one,
    /// then keeps only that page, so the verifier has little to read.
    private func reuseFreedBlocks(_ blocks: [UInt32]) {
        let freed = Set(blocks.filter { self.oracle.isFree($0) })
        guard !freed.isEmpty else { return }
        let writer = self.collisionWriter
        writer.lock.withLock { _ in
            var taken: Int?
            for page in 0..<4096 where taken == nil {
                guard (try? writer.writeTag(page: page, fs: self.fs)) != nil else { break }
                if freed.contains(where: { self.oracle.isOwned($0, by: writer.file, page: page) }) { taken = page }
            }
            guard let taken else { return }
            // Drop the pages before the one that took a freed block (none are pinned).
            if taken > 0, (try? self.fs.punchHole(writer.file, offset: 0, length: taken * pageSize)) != nil {
                for page in 0..<taken { writer.expected[page] = 0 }
            }
        }
    }
}
