import Pmem
import DaxlabSupport

/// Taking blocks out of a file through the layout breaker: truncate, punch and unlink all come
/// here with their caller's policy, so every removal is judged by the DAX layer first.
extension FileSystem {
    /// Removes the blocks of the pages `range` names (asked again after every wait, since the
    /// file may change while its lock is dropped), through the attached layout breaker under
    /// `policy` (nil: the breaker's default). The caller holds the file's lock exclusively.
    /// - Parameter held: the file locks the caller holds exclusively, which the breaker drops
    ///   while it sleeps (nil: the file's own; a rename or publish over a name holds two).
    /// - Parameter beforeRemoval: changes to make only once the removal will happen (zeroing a
    ///   partial page): after the policy said proceed, so a refusal (EBUSY, a timeout) leaves the
    ///   file exactly as it was.
    /// - Parameter intent: the truncate or punch being done, recorded while it spans transactions.
    func removePages(
        _ number: Int, policy: TruncatePolicy?, newSize: () throws(FSError) -> UInt64?,
        intent: InodeRecord.Intent? = nil, held: FileLocks? = nil, beforeRemoval: () throws(FSError) -> Void = {},
        range: () throws(FSError) -> Range<Int>
    ) throws(FSError) {
        // Nothing to break (no pages, or no DAX layer attached): straight to the removal.
        func withoutBreaker(_ pages: Range<Int>, _ size: UInt64?) throws(FSError) {
            try beforeRemoval()
            if !pages.isEmpty || size != nil {
                try self.removeClaiming(number, pages: pages, newSize: size, disposition: .free, breaker: nil, intent: intent)
            }
        }
        // Borrowed from the slot, not retained, so good only while the file's lock is held: a
        // sleep in the breaker drops it, and if the file system was unmounted meanwhile the
        // breaker is gone (`BreakerSlot`).
        try self.breaker.withCurrent { (breaker) throws(FSError) in
            var call = LayoutBreakCall(policy: policy ?? breaker.defaultPolicy)
            let held = held ?? FileLocks(self.locks, number)
            while true {
                let pages = try range()
                let size = try newSize()
                guard !pages.isEmpty else {
                    try withoutBreaker(pages, size)
                    return
                }
                switch try breaker.breakLayouts(&call, inode: number, pages: pages, locks: held) {
                case .retry:
                    guard self.breaker.isAttached else { throw self.unmountedWhileSleeping() }
                case .proceed(let disposition):
                    try beforeRemoval()
                    try self.removeClaiming(
                        number, pages: pages, newSize: size, disposition: disposition, breaker: breaker, intent: intent)
                    return
                }
            }
        } none: { () throws(FSError) in
            try withoutBreaker(try range(), try newSize())
        }
    }

    /// A removal or shift whose breaker slept (the file's lock dropped) finds the DAX layer
    /// detached: the file system is being unmounted under it.
    func unmountedWhileSleeping() -> FSError {
        FSError(.invalidArgument, "\(self.path): unmounted while the call waited for pins; nothing changed")
    }

    /// Removes `pages` once the breaker (if any) has said how: a one-page punch of a reserved
    /// block with nothing pinned to keep needs no transaction (`unmapReserved`); otherwise the
    /// blocks go through the log, pinned ones claimed as `disposition` says.
    private func removeClaiming(
        _ number: Int, pages: Range<Int>, newSize: UInt64?, disposition: BusyBlockDisposition,
        breaker: (any LayoutBreaker)?, intent: InodeRecord.Intent?
    ) throws(FSError) {
        if newSize == nil, disposition == .free, try self.unmapReserved(number, pages: pages) { return }
        guard disposition == .sequester, let breaker else {
            _ = try Self.removeBlocks(
                log: self.log, allocator: self.allocator, inode: number, pages: pages, newSize: newSize,
                removal: BlockRemoval(disposition: disposition, breaker: breaker), intent: intent)
            return
        }
        // lost+found's lock comes after the file's; its holders never take another file's lock.
        try self.locks[Self.lostFoundInode].withWriteLock { () throws(FSError) in
            var assigned: [UInt32] = []
            var reserved: [UInt32] = []
            let removal = BlockRemoval(
                disposition: .sequester, breaker: breaker,
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
                    lostFound.size = max(lostFound.size, UInt64(page + 1) * UInt64(pageSize))
                },
                aborted: {
                    self.allocator.release(reserved, aborted: true)
                    // (claims of earlier, committed chunks stay committed)
                    self.lostFound.withLock { pages in
                        for block in assigned {
                            if let page = pages.pageOfBlock.removeValue(forKey: block) { pages.freePages.append(page) }
                        }
                    }
                    assigned.removeAll()
                },
                chunkCommitted: {
                    assigned.removeAll()
                    reserved.removeAll()
                })
            _ = try Self.removeBlocks(
                log: self.log, allocator: self.allocator, inode: number, pages: pages, newSize: newSize,
                removal: removal, intent: intent)
        }
    }
}

extension FileSystem {
    /// Records `intent` in inode `number` in a transaction of its own: before a change that the
    /// log does not cover (zeroing part of a page), so that a crash after it is finished by mount.
    func recordIntent(_ number: Int, _ intent: InodeRecord.Intent) throws(FSError) {
        _ = try self.log.transaction { (tx) throws(FSError) in tx.inode(number).intent = intent }
    }
}
