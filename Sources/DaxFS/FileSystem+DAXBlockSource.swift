import DaxlabSupport
import Pmem

/// DaxFS's side of the DAX contract (`DAXBlockSource`): the invalidate lock, blocks for faults,
/// the aligned runs huge faults map, the breaker every removal asks, and the release of blocks whose last pin dropped.
extension FileSystem: DAXBlockSource {
    package var blockCount: Int { self.geometry.blockCount }

    package var inodeCount: Int { self.geometry.inodeCount }

    package func attach(_ breaker: any LayoutBreaker) throws(FSError) {
        guard self.isMounted else { throw FSError(.invalidArgument, "\(self.path): not mounted") }
        guard !self.isReadOnly else { throw FSError(.readOnly, "\(self.path): mounted read-only") }
        switch self.breaker.attach(breaker) {
        case .attached: return
        case .another: throw FSError(.inUse, "\(self.path): a DAX layer is already attached")
        case .detached: throw FSError(.invalidArgument, "\(self.path): not mounted")
        }
    }

    package func invalidateLock(for file: FileID) -> ReadWriteLock { self.locks[file.inode] }

    package var spaceGeneration: UInt64 { self.allocator.spaceGeneration }

    package func notifyWhenSpaceFrees(since generation: UInt64, _ notify: @escaping @Sendable () -> Void) {
        self.allocator.notifyWhenSpaceFrees(since: generation, notify)
    }

    package func isCurrent(_ file: FileID) -> Bool {
        do {
            _ = try self.checkedRecord(file)
            return true
        } catch {
            return false
        }
    }

    package func blockForFault(_ file: FileID, page: Int, allocate: Bool) throws(FSError) -> UInt32 {
        let record = try self.checkedRecord(file)
        let size = Int(record.size)
        guard page >= 0, page < (size + pageSize - 1) / pageSize else {
            throw FSError(.invalidArgument, "\(file): page \(page) is past the end of file (\(size) bytes)")
        }
        // Where the page's pointer lives, when a block-map block holds it (nil: a direct page, or
        // a map block not made yet). Map blocks leave a file only under its lock held
        // exclusively, so the slot stays right while this fault holds it shared.
        let number = file.inode
        let slot = self.reader.mapSlot(of: record, number, page: page)
        let block = slot.map { self.reader.pointer(at: $0, number, page: page) } ?? self.reader.block(of: record, number, page: page)
        guard block == 0, allocate else { return block }
        return try self.withStripe(file.inode) { (stripe) throws(FSError) -> UInt32 in
            let again = slot.map { self.reader.pointer(at: $0, number, page: page) }
                ?? self.reader.block(of: record, number, page: page)
            if again != 0 { return again }  // another fault filled it
            stripe.allocations += 1
            if let slot, let block = try self.mapReserved(file.inode, slot: slot, page: page, stripe: &stripe) {
                return block
            }
            try self.writeChunk(file.inode, from: page * pageSize, to: min(size, (page + 1) * pageSize), fill: nil)
            let block = self.reader.block(of: record, number, page: page)
            guard block != 0 else {
                // Only a block map overwritten under us (stale DMA, policy none) reads back a hole.
                throw FSError(.io, "\(file): page \(page) reads back as a hole after allocation (block map corrupted)")
            }
            // This fault made the page's map block: the file takes its reserve now, so the next
            // faults under that map block need no log, and a punch that empties the map block
            // keeps it for them (a file with no reserve gives an empty map block up).
            if slot == nil, page >= BlockMapPath.indirectFirstPage, !stripe.hasZeroed(file.inode),
                stripe.punchedBlocks(file.inode).isEmpty
            {
                _ = try self.takeReservation(file.inode, page: page + 1, stripe: &stripe)
            }
            return block
        }
    }

    package func alignedRun(_ file: FileID, page: Int) -> UInt32? {
        guard page >= 0, let record = try? self.checkedRecord(file) else { return nil }
        let runPages = Geometry.runBlocks
        let first = page / runPages * runPages
        let end = first + runPages
        guard end <= InodeRecord.maximumPages, UInt64(end) * UInt64(pageSize) <= record.size else { return nil }
        let number = file.inode
        let run = self.reader.block(of: record, number, page: first)
        guard run != 0, Int(run) % runPages == 0 else { return nil }
        var page = first + 1
        while page < end {
            guard page >= BlockMapPath.indirectFirstPage else {
                guard self.reader.block(of: record, number, page: page) == run + UInt32(page - first) else { return nil }
                page += 1
                continue
            }
            // The entries of one map block lie side by side: find the block once, read them in turn.
            guard let slot = self.reader.mapSlot(of: record, number, page: page) else { return nil }
            let mapEnd = BlockMapPath.mapBlockEnd(page)
            for entry in 0..<(min(end, mapEnd) - page) {
                let expected = run + UInt32(page + entry - first)
                guard self.reader.pointer(at: slot + entry * MapEntry.size, number, page: page + entry) == expected else {
                    return nil
                }
            }
            page = min(end, mapEnd)
        }
        return run
    }

    package func mappedBlock(inode: Int, page: Int) -> UInt32 {
        self.reader.block(of: self.record(inode), inode, page: page)
    }

    package func releaseFromLimbo(_ block: UInt32, _ disposition: BusyBlockDisposition) throws(FSError) {
        guard self.isMounted else { return }  // unmounted: lost+found is reclaimed at the next mount
        switch disposition {
        case .free:
            preconditionFailure("a block freed at once is never in limbo")
        case .deferred:
            // Already free on the media; only the allocator did not have it.
            self.allocator.release([block])
        case .sequester:
            try self.locks[Self.lostFoundInode].withWriteLock { () throws(FSError) in
                guard let page = self.lostFound.withLock({ $0.pageOfBlock[block] }) else { return }
                _ = try Self.removeBlocks(
                    log: self.log, allocator: self.allocator, inode: Self.lostFoundInode, pages: page..<(page + 1),
                    newSize: nil)
                self.lostFound.withLock { pages in
                    pages.pageOfBlock.removeValue(forKey: block)
                    pages.freePages.append(page)
                }
            }
        }
    }

    /// Blocks in lost+found now: sequestered under DMA, waiting for their last unpin.
    public var lostFoundBlocks: Int {
        self.locks[Self.lostFoundInode].withReadLock { Int(self.record(Self.lostFoundInode).blocks) }
    }
}
