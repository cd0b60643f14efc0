import DaxFS
import DaxlabSupport

/// The policies, as the file system's `LayoutBreaker`: called with the file's lock held
/// exclusively before blocks leave it (the analogue of `xfs_break_layouts` ->
/// `xfs_break_dax_layouts` -> `dax_layout_busy_page_range`), with the call's own policy.
extension DAXFileSystem: LayoutBreaker {
    package func breakLayouts(
        _ call: inout LayoutBreakCall, inode: Int, pages: Range<Int>, locks: FileLocks
    ) throws(FSError) -> LayoutBreakResult {
        // Unretained: the layer's table keeps the space while this thread holds the file's lock,
        // which every replacement of it needs (shared); `leaseBreak` takes a reference of its
        // own before it drops the lock.
        guard let found = self.spaceForBreaker(inode: inode) else { return .proceed(.free) }  // never mapped: no pins
        let busy = found._withUnsafeGuaranteedRef { space in
            space.unmap(pages, keepingData: call.movesBlocks)
            // The mmu notifiers: on-demand-paging devices drop their translations (any policy).
            let invalidated = space.invalidateSubscriptions(pages)
            if invalidated != 0 { self.statistics.odpInvalidations.wrappingIncrement(by: invalidated, ordering: .relaxed) }
            return self.busyBlocks(space, pages)
        }
        switch call.policy {
        case .none:
            self.statistics.pinnedBlocksFreed.wrappingIncrement(by: busy.count, ordering: .relaxed)
            if !busy.isEmpty { found.takeUnretainedValue().leases.forEachOverlapping(pages) { $0.orphan() } }
            return .proceed(.free)
        case .fail:
            guard busy.isEmpty else {
                self.statistics.refusedBusy.wrappingIncrement(ordering: .relaxed)
                throw FSError(.busy, "\(found.takeUnretainedValue().id): \(busy.count) block(s) pinned for DMA (EBUSY)")
            }
            return .proceed(.free)
        case .sequester where !call.movesBlocks:
            return .proceed(.sequester)
        case .deferred where !call.movesBlocks:
            return .proceed(.deferred)
        case .wait, .mainline, .odp, .sequester, .deferred:
            // (sequester and deferred here: the blocks move within the file, see LayoutBreakCall.)
            guard let block = busy.first else { return .proceed(.free) }
            self.sleeping(&call)
            let own = self.ownReference()
            defer { own.release() }
            // mainline's `dax_break_layout` sleeps until the page is idle, however long.
            try self.sleepUnlocked(locks, on: block, timeout: call.policy == .mainline ? nil : self.times.waitTimeout)
            return .retry
        case .leaseBreak:
            guard !busy.isEmpty else { return .proceed(.free) }
            self.sleeping(&call)
            let own = self.ownReference()
            defer { own.release() }
            let held = found.takeUnretainedValue()  // (a reference of its own, taken under the lock)
            locks.unlock()
            defer { locks.lockExclusive() }
            self.breakLeases(held, pages, busy: busy)
            return .retry
        }
    }

    /// A reference to this layer held across a sleep with the file's lock dropped: the file
    /// system lends its breaker unretained, only while the caller holds that lock (`BreakerSlot`
    /// in DaxFS), so an unmount meanwhile could otherwise drop the last reference under us.
    private func ownReference() -> Unmanaged<DAXFileSystem> {
        Unmanaged.passRetained(self)
    }

    /// Counts a call that sleeps, once.
    private func sleeping(_ call: inout LayoutBreakCall) {
        guard !call.slept else { return }
        call.slept = true
        self.statistics.truncatesWaited.wrappingIncrement(ordering: .relaxed)
    }

    /// Blocks of `pages` that may be pinned for DMA. The caller holds the file's lock
    /// exclusively and has unmapped the range, so the block map cannot change under the scan.
    private func busyBlocks(_ space: AddressSpace, _ pages: Range<Int>) -> [UInt32] {
        var busy: [UInt32] = []
        for page in pages {
            let block = self.source.mappedBlock(inode: space.id.inode, page: page)
            if block != 0, self.pins.maybeDMAPinned(block) { busy.append(block) }
        }
        return busy
    }

    /// `wait`: drops the invalidate locks (a pinner may need one to fault another page: Jan
    /// Kara's deadlock), sleeps until the last unpin of `block` wakes it, retakes the locks.
    private func sleepUnlocked(_ locks: FileLocks, on block: UInt32, timeout: Duration?) throws(FSError) {
        self.statistics.waits.wrappingIncrement(ordering: .relaxed)
        locks.unlock()
        let deadline = timeout.map { MonotonicClock.now() + $0.nanoseconds }
        let idle = self.pins.waits.wait(on: block, deadline: deadline) { !self.pins.maybeDMAPinned(block) }
        locks.lockExclusive()
        if !idle {
            throw FSError(.timedOut, "block \(block) still pinned after \(timeout!) (nothing changed)")
        }
    }

    /// `lease-break`: tells every holder of a lease over `pages` to give it back, waits up to the
    /// lease-break time for the busy blocks to be unpinned, then revokes what is still pinned.
    /// Runs without the file's lock.
    private func breakLeases(_ space: AddressSpace, _ pages: Range<Int>, busy: [UInt32]) {
        let batches = space.leases.holdOverlapping(pages)
        defer { for batch in batches { batch.unhold() } }
        for batch in batches where batch.notifyOnce() {
            guard let holder = batch.holder else { continue }
            self.statistics.leaseBreaks.wrappingIncrement(ordering: .relaxed)
            holder.leaseBroken(batch.info)
        }
        let deadline = MonotonicClock.now() + self.times.leaseBreakTime.nanoseconds
        var expired = false
        for block in busy where !expired {
            self.statistics.waits.wrappingIncrement(ordering: .relaxed)
            expired = !self.pins.waits.wait(on: block, deadline: deadline) { !self.pins.maybeDMAPinned(block) }
        }
        guard expired else { return }
        for batch in batches {
            guard case .revoked(let mustUnpin) = batch.revoke() else { continue }
            self.statistics.revocations.wrappingIncrement(ordering: .relaxed)
            if mustUnpin {
                batch.dropKernelPin()
                batch.space?.unpinRevoked(batch)
            }
        }
    }

    package func claimBusy(_ block: UInt32, as disposition: BusyBlockDisposition) -> Bool {
        let claimed = self.pins.claim(block, as: disposition)
        if claimed {
            self.statistics.claimed.wrappingIncrement(ordering: .relaxed)
            self.statistics.enterLimbo(disposition)
        }
        return claimed
    }

    package func claimsCommitted(_ blocks: [UInt32]) { self.pins.commit(blocks) }

    /// The file's window drops its zeros over filled holes and lifts the fences a fault past
    /// the old end left (under the file's lock, exclusive: no fault runs meanwhile).
    package func mappingsChanged(_ inode: Int, filled: Range<Int>, grownTo: Int?) {
        self.spaceForBreaker(inode: inode)?._withUnsafeGuaranteedRef { space in
            guard let window = space.windowReference.load() else { return }
            if !filled.isEmpty { window.holesFilled(filled) }
            if let grownTo { window.liftFences(below: grownTo) }
        }
    }

    package func claimsAborted(_ blocks: [UInt32]) {
        for block in blocks {
            if let disposition = self.pins.claimedDisposition(block) { self.statistics.leaveLimbo(disposition) }
        }
        self.pins.abort(blocks)
    }

    /// The unmount's final layout break (mainline's `dax_break_layout_final`), under the layer's
    /// default policy. DMA must not outlive an unmount under a protective policy: after it the
    /// next mount reclaims lost+found and trusts the on-media bitmap, so a sequestered or
    /// deferred block, or a pinned block a later truncate frees, would be handed out while a
    /// device still wrote into it. So, with pins outstanding:
    /// - `none` unmounts at once and the pins outlive it (the bug, counted);
    /// - `fail` refuses (EBUSY) and the file system stays mounted;
    /// - `wait`, `mainline`, `sequester`, `deferred`, `odp` sleep until the last unpin (`wait` within its
    ///   timeout, else `.timedOut` and still mounted); limbo blocks are released on the way;
    /// - `lease-break` breaks every lease, gives the holders the lease-break time, and revokes the
    ///   rest (their later writes are refused, the kernel's fixed buffers replaced).
    /// Every on-demand-paging subscription is invalidated first, under every policy. New pins are
    /// refused from the first scan on, and again allowed if the unmount fails.
    package func breakLayoutsFinal() throws(FSError) {
        self.unmounting.raise()
        var unmounts = false
        defer { if !unmounts { self.unmounting.lower() } }
        // On-demand-paging devices lose every translation (the notifiers' release at teardown):
        // a later write faults, and finds the file system gone.
        for space in self.allSpaces {
            let invalidated = space.invalidateSubscriptions(0..<Int.max)
            self.statistics.odpInvalidations.wrappingIncrement(by: invalidated, ordering: .relaxed)
        }
        let pinned = self.pinnedBlocks()
        guard !pinned.isEmpty else {
            unmounts = true
            return
        }
        switch self.defaultPolicy {
        case .none:
            self.statistics.pinsOutlivingUnmount.wrappingIncrement(by: pinned.count, ordering: .relaxed)
        case .fail:
            self.statistics.unmountsRefused.wrappingIncrement(ordering: .relaxed)
            throw FSError(.busy, "\(pinned.count) block(s) still pinned for DMA (EBUSY): unpin them, then unmount")
        case .wait, .mainline, .sequester, .deferred, .odp:
            self.statistics.unmountsWaited.wrappingIncrement(ordering: .relaxed)
            let timeout = self.defaultPolicy == .wait ? self.times.waitTimeout : nil
            let deadline = timeout.map { MonotonicClock.now() + $0.nanoseconds }
            var busy = pinned
            while let block = busy.first {
                self.statistics.waits.wrappingIncrement(ordering: .relaxed)
                guard self.pins.waits.wait(on: block, deadline: deadline, until: { !self.pins.maybeDMAPinned(block) })
                else {
                    throw FSError(.timedOut, "block \(block) still pinned after \(timeout!): not unmounted")
                }
                busy = self.pinnedBlocks()
            }
        case .leaseBreak:
            self.statistics.unmountsWaited.wrappingIncrement(ordering: .relaxed)
            for space in self.allSpaces {
                let busy = self.pinnedBlocks()
                guard !busy.isEmpty else { break }
                self.breakLeases(space, 0..<Int.max, busy: busy)
            }
        }
        unmounts = true
    }

    /// Every block pinned now, in block order (the unmount's scan of the whole image).
    private func pinnedBlocks() -> [UInt32] {
        (1..<UInt32(self.source.blockCount)).filter { self.pins.maybeDMAPinned($0) }
    }

    package func fileSystemWillUnmount() {
        self.reclaimer.waitUntilIdle()
        self.reclaimer.stop()
        // Pooled batches hold this layer (`PinBatch.layer`), and the file system now lets go of
        // it: let them go, and every batch whose pin outlives the unmount when it is unpinned.
        self.batchPool.close()
    }
}
