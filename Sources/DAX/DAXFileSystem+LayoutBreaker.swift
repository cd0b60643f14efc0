import DaxFS

/// The policies, as the file system's `LayoutBreaker`: called with the file's lock held
/// exclusively before blocks leave it (the analogue of `xfs_break_layouts` ->
/// `xfs_break_dax_layouts` -> `dax_layout_busy_page_range`).
extension DAXFileSystem: LayoutBreaker {
    public func breakLayouts(inode: Int, pages: Range<Int>, lock: ReadWriteLock) throws(FSError) -> LayoutBreakResult {
        guard let space = self.space(inode: inode) else { return .proceed(.free) }  // never mapped: no pins
        space.unmap(pages)
        let busy = self.busyBlocks(space, pages)
        let policy = self.currentPolicy
        switch policy {
        case .none:
            self.statistics.pinnedBlocksFreed.wrappingIncrement(by: busy.count, ordering: .relaxed)
            return .proceed(.free)
        case .fail:
            guard busy.isEmpty else {
                self.statistics.refusedBusy.wrappingIncrement(ordering: .relaxed)
                throw FSError(.busy, "\(space.id): \(busy.count) block(s) pinned for DMA (EBUSY)")
            }
            return .proceed(.free)
        case .sequester:
            return .proceed(.sequester)
        case .deferred:
            return .proceed(.deferRelease)
        case .wait:
            guard let block = busy.first else { return .proceed(.free) }
            try self.sleepUnlocked(lock, on: block, timeout: self.times.waitTimeout)
            return .retry
        case .leaseBreak:
            guard !busy.isEmpty else { return .proceed(.free) }
            lock.unlock()
            defer { lock.lockExclusive() }
            self.breakLeases(space, pages, busy: busy)
            return .retry
        }
    }

    /// Blocks of `pages` that may be pinned for DMA. The caller holds the file's lock
    /// exclusively and has unmapped the range, so the block map cannot change under the scan.
    private func busyBlocks(_ space: AddressSpace, _ pages: Range<Int>) -> [UInt32] {
        var busy: [UInt32] = []
        var page = pages.lowerBound
        while page < pages.upperBound {
            let block = self.fs.currentBlock(space.id, page: page)
            if block != 0, self.pins.maybeDMAPinned(block) { busy.append(block) }
            page += 1
        }
        return busy
    }

    /// `wait`: drops the invalidate lock (a pinner may need it to fault another page: Jan Kara's
    /// deadlock), sleeps until the last unpin of `block` wakes it, retakes the lock.
    private func sleepUnlocked(_ lock: ReadWriteLock, on block: UInt32, timeout: Duration?) throws(FSError) {
        self.statistics.waits.wrappingIncrement(ordering: .relaxed)
        Self.call?.slept.store(true, ordering: .relaxed)
        lock.unlock()
        let deadline = timeout.map { MonotonicClock.now() + $0.nanoseconds }
        let idle = self.pins.waits.wait(on: block, deadline: deadline) { !self.pins.maybeDMAPinned(block) }
        lock.lockExclusive()
        if !idle {
            throw FSError(.timedOut, "block \(block) still pinned after \(timeout!) (nothing changed)")
        }
    }

    /// `lease-break`: tells every holder of a lease over `pages` to give it back, waits up to the
    /// lease-break time for the busy blocks to be unpinned, then revokes what is still pinned.
    /// Runs without the file's lock.
    private func breakLeases(_ space: AddressSpace, _ pages: Range<Int>, busy: [UInt32]) {
        let batches = space.leases.holdOverlapping(pages)
        defer {
            for batch in batches { batch.state.wrappingDecrement(by: PinBatch.holding, ordering: .releasing) }
        }
        for batch in batches {
            let previous = batch.state.loadThenBitwiseOr(with: PinBatch.notifiedBit, ordering: .acquiringAndReleasing)
            if previous & PinBatch.notifiedBit == 0, let holder = batch.holder {
                self.statistics.leaseBreaks.wrappingIncrement(ordering: .relaxed)
                holder.leaseBroken(batch.info)
            }
        }
        let deadline = MonotonicClock.now() + self.times.leaseBreakTime.nanoseconds
        Self.call?.slept.store(true, ordering: .relaxed)
        var expired = false
        for block in busy where !expired {
            self.statistics.waits.wrappingIncrement(ordering: .relaxed)
            expired = !self.pins.waits.wait(on: block, deadline: deadline) { !self.pins.maybeDMAPinned(block) }
        }
        guard expired else { return }
        for batch in batches { self.revoke(batch) }
    }

    /// Revokes a batch: fences its DMA writes (waits for those in flight), then drops its pins on
    /// the holder's behalf. The holder's later `unpin` only ends the lease.
    private func revoke(_ batch: PinBatch) {
        let previous = batch.state.loadThenBitwiseOr(with: PinBatch.revokedBit, ordering: .acquiringAndReleasing)
        guard previous & (PinBatch.revokedBit | PinBatch.releasedBit) == 0 else { return }
        // Writes that entered before the revoked bit finish; later ones are refused. (Only writes:
        // another truncate may be revoking the same batch, and neither waits for the other.)
        batch.waitForWrites()
        self.statistics.revocations.wrappingIncrement(ordering: .relaxed)
        guard previous & PinBatch.pinnedBit != 0 else { return }  // still pinning: the pinner undoes it
        let before = batch.state.loadThenBitwiseOr(with: PinBatch.releasedBit, ordering: .acquiringAndReleasing)
        if before & PinBatch.releasedBit == 0 {
            for block in batch.pinned where block != 0 { self.pins.unpin(block) }
        }
    }

    public func claimBusy(_ block: UInt32, handling: BusyBlockHandling) -> Bool {
        let claimed = self.pins.claim(block, as: handling == .sequester ? .sequestered : .deferred)
        if claimed {
            self.statistics.claimed.wrappingIncrement(ordering: .relaxed)
            self.statistics.enterLimbo(handling)
        }
        return claimed
    }

    public func claimsCommitted(_ blocks: [UInt32]) { self.pins.commit(blocks) }

    public func claimsAborted(_ blocks: [UInt32]) {
        for block in blocks {
            self.statistics.leaveLimbo(self.pins.isSequesterClaim(block) ? .sequester : .deferRelease)
        }
        self.pins.abort(blocks)
    }
}

#if canImport(Glibc)
import Glibc
#endif
