/// What the DAX layer needs of the file system: the invalidate lock, block lookup and
/// allocation for faults, block removal through the `LayoutBreaker`, and the release of blocks
/// whose last pin dropped after they left their file.
extension FileSystem {
    /// Attaches the DAX layer: from now on every truncate, punch and unlink asks it before any
    /// block leaves a file.
    public func attach(_ layoutBreaker: LayoutBreaker) {
        self.breaker.withLock { $0 = layoutBreaker }
    }

    var layoutBreaker: LayoutBreaker? { self.breaker.withLock { $0 } }

    /// The file's invalidate lock (the analogue of `mapping->invalidate_lock`): faults hold it
    /// shared; truncate, punch and the data writes of `write` hold it exclusively.
    public func invalidateLock(for id: FileID) -> ReadWriteLock { self.locks[id.inode] }

    /// The block behind `page` of `id` for a fault; with `allocate`, a hole gets a new zeroed
    /// block (durable and mapped before this returns). The caller holds the invalidate lock.
    /// - Returns: the block, or 0 for a hole when not allocating.
    /// - Throws: `.notFound` (file gone), `.invalidArgument` past the end of file (SIGBUS),
    ///   `.noSpace`.
    public func blockForFault(_ id: FileID, page: Int, allocate: Bool) throws(FSError) -> UInt32 {
        let record = try self.checkedRecord(id)
        let size = Int(record.size)
        guard page >= 0, page * Self.pageSize < size else {
            throw FSError(.invalidArgument, "\(id): page \(page) is past the end of file (\(size) bytes)")
        }
        let block = self.reader.block(of: record, page: page)
        guard block == 0, allocate else { return block }
        return try self.allocationLocks[id.inode % self.allocationLocks.count].withLock {
            (allocations) throws(FSError) -> UInt32 in
            let again = self.reader.block(of: record, page: page)
            if again != 0 { return again }  // another fault filled it
            allocations += 1
            try self.writeChunk(id.inode, from: page * Self.pageSize, to: min(size, (page + 1) * Self.pageSize), fill: nil)
            let block = self.reader.block(of: record, page: page)
            guard block != 0 else {
                // Only a block map overwritten under us (stale DMA, policy none) reads back a hole.
                throw FSError(.io, "\(id): page \(page) reads back as a hole after allocation (block map corrupted)")
            }
            return block
        }
    }

    /// The block behind `page` (0 for a hole), read without locks: for the oracle and tests.
    public func currentBlock(_ id: FileID, page: Int) -> UInt32 {
        let record = self.record(id.inode)
        guard record.inUse, record.generation == id.generation else { return 0 }
        return self.reader.block(of: record, page: page)
    }

    /// Removes the blocks of the pages `range` names (asked again after every wait, since the
    /// file may change while its lock is dropped), through the layout breaker. The caller holds
    /// the file's lock exclusively.
    /// - Parameter beforeRemoval: changes to make only once the removal will happen (zeroing a
    ///   partial page): after the policy said proceed, so a refusal (EBUSY, a timeout) leaves the
    ///   file exactly as it was.
    func removePages(
        _ number: Int, newSize: @escaping () throws(FSError) -> UInt64?,
        beforeRemoval: () throws(FSError) -> Void = {},
        range: () throws(FSError) -> Range<Int>
    ) throws(FSError) {
        while true {
            let pages = try range()
            let size = try newSize()
            guard !pages.isEmpty, let breaker = self.layoutBreaker else {
                try beforeRemoval()
                if !pages.isEmpty || size != nil {
                    _ = try Self.removeBlocks(
                        log: self.log, allocator: self.allocator, inode: number, pages: pages, newSize: size)
                }
                return
            }
            switch try breaker.breakLayouts(inode: number, pages: pages, lock: self.locks[number]) {
            case .retry:
                continue
            case .proceed(let handling):
                try beforeRemoval()
                try self.removeClaiming(number, pages: pages, newSize: size, handling: handling, breaker: breaker)
                return
            }
        }
    }

    private func removeClaiming(
        _ number: Int, pages: Range<Int>, newSize: UInt64?, handling: BusyBlockHandling, breaker: LayoutBreaker
    ) throws(FSError) {
        guard handling == .sequester else {
            _ = try Self.removeBlocks(
                log: self.log, allocator: self.allocator, inode: number, pages: pages, newSize: newSize,
                removal: BlockRemoval(handling: handling, breaker: breaker, sequester: nil, aborted: nil, committed: nil))
            return
        }
        // Claims committed under lost+found's lock are passed on after it is dropped: passing one
        // on may release its block at once (its last pin already gone), which takes that lock.
        let committed = Locked<[UInt32]>([])
        defer {
            let blocks = committed.withLock { $0 }
            if !blocks.isEmpty { breaker.claimsCommitted(blocks) }
        }
        // lost+found's lock comes after the file's; its holders never take another file's lock.
        try self.locks[Self.lostFoundInode].withWriteLock { () throws(FSError) in
            var assigned: [UInt32] = []
            var reserved: [UInt32] = []
            let removal = BlockRemoval(
                handling: .sequester, breaker: breaker,
                sequester: { (tx, block) throws(FSError) in
                    let page = self.lostFound.withLock { pages in
                        let page = pages.freePages.popLast() ?? pages.nextPage
                        if page == pages.nextPage { pages.nextPage += 1 }
                        pages.pageOfBlock[block] = page
                        return page
                    }
                    assigned.append(block)
                    try Self.stageMap(
                        tx, allocator: self.allocator, inode: Self.lostFoundInode, page: page, block: block,
                        reserved: &reserved, alreadyAllocated: true)
                    let lostFound = tx.inode(Self.lostFoundInode)
                    lostFound.size = max(lostFound.size, UInt64(page + 1) * UInt64(Self.pageSize))
                },
                aborted: {
                    self.allocator.release(reserved)
                    // (claims of earlier, committed chunks stay committed)
                    self.lostFound.withLock { pages in
                        for block in assigned {
                            if let page = pages.pageOfBlock.removeValue(forKey: block) { pages.freePages.append(page) }
                        }
                    }
                },
                committed: { blocks in
                    committed.withLock { $0.append(contentsOf: blocks) }
                    assigned.removeAll()
                })
            _ = try Self.removeBlocks(
                log: self.log, allocator: self.allocator, inode: number, pages: pages, newSize: newSize,
                removal: removal)
        }
    }

    /// Frees a sequestered block from lost+found: called by the DAX layer on its last unpin.
    public func releaseSequestered(_ block: UInt32) throws(FSError) {
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

    /// Returns a block whose release was deferred (already free on the media) to the allocator.
    public func releaseDeferred(_ block: UInt32) {
        self.allocator.release([block])
    }

    /// Blocks in lost+found now.
    public var lostFoundBlocks: Int {
        self.locks[Self.lostFoundInode].withReadLock { Int(self.record(Self.lostFoundInode).blocks) }
    }

    /// Whether `block` is in the allocator's free pool (tests: a pinned block must never be).
    public func isFreeForAllocation(_ block: UInt32) -> Bool { self.allocator.isFree(block) }

    /// Blocks in the allocator's free pool now.
    public var allocatorFreeBlocks: Int { self.allocator.freeCount }

    /// fsck's checks on the mounted image, without repairing: the caller must have stopped
    /// every thread that changes it (the race harness does, at the end of a run).
    public func checkQuiesced() -> CheckResult {
        Checker(media: self.media, geometry: self.geometry).check()
    }
}
