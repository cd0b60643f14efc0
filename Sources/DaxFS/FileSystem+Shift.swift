import Pmem
import DaxlabSupport

/// `fallocate(FALLOC_FL_COLLAPSE_RANGE)` and `fallocate(FALLOC_FL_INSERT_RANGE)`: the file's tail
/// moves by whole blocks. Every block after the offset changes place, so the layout breaker is
/// asked over the whole tail (`LayoutBreakCall.movesBlocks`), and the whole change (freeing the
/// collapsed blocks, moving every pointer, the new size) is one log transaction: a crash leaves
/// it not started or complete, with no intent to finish.
extension FileSystem {
    /// Removes `offset..<offset+length` from the file: the blocks there are freed and every
    /// later block moves down by `length`, which the size loses. Both must be multiples of the
    /// block size (4096), and the range must end before the end of file (as fallocate(2) wants).
    /// - Parameter policy: what to do with pinned blocks in the tail (nil: the DAX layer's default).
    /// - Throws: `.invalidArgument`, `.busy` or `.timedOut` from the policy (nothing changed),
    ///   `.notSupported` for a tail too long to move in one transaction, `.noSpace`.
    public func collapseRange(_ id: FileID, offset: Int, length: Int, policy: TruncatePolicy? = nil) throws(FSError) {
        try self.checkWritable()
        try Self.checkShift("collapse-range", offset: offset, length: length)
        try self.lock(id).withWriteLock { () throws(FSError) in
            try self.shift("collapse-range", id, first: offset / pageSize, by: -(length / pageSize), policy: policy) {
                size throws(FSError) in
                guard offset + length < size else {
                    throw FSError(
                        .invalidArgument,
                        "collapse-range: \(offset)+\(length) must end before the end of file (\(size) bytes)")
                }
                return size - length
            }
        }
    }

    /// Opens a hole of `length` bytes at `offset`: every block from there moves up by `length`,
    /// which the size gains. Both must be multiples of the block size (4096), and `offset` must
    /// lie before the end of file (as fallocate(2) wants).
    /// - Throws: as `collapseRange`, and `.fileTooLarge` past the largest file.
    public func insertRange(_ id: FileID, offset: Int, length: Int, policy: TruncatePolicy? = nil) throws(FSError) {
        try self.checkWritable()
        try Self.checkShift("insert-range", offset: offset, length: length)
        try self.lock(id).withWriteLock { () throws(FSError) in
            let before = try self.checkedRecord(id).size
            defer { self.noteChange(id.inode, from: before) }
            try self.shift("insert-range", id, first: offset / pageSize, by: length / pageSize, policy: policy) {
                size throws(FSError) in
                guard offset < size else {
                    throw FSError(.invalidArgument, "insert-range: offset \(offset) must lie before the end of file (\(size) bytes)")
                }
                guard size + length <= Self.maximumFileSize else {
                    throw FSError(.fileTooLarge, "insert-range: \(size + length) bytes is past the largest file (\(Self.maximumFileSize))")
                }
                return size + length
            }
        }
    }

    /// About how many pointer changes one shift's transaction holds: a page a collapse frees
    /// stages a pointer and a bitmap record; a moved page clears its old slot and, unless a
    /// slot the shift already cleared takes it, stages its new one.
    static let shiftPointerChanges = 2200

    private static func checkShift(_ what: String, offset: Int, length: Int) throws(FSError) {
        try Self.checkRange(what, offset: offset, length: length)
        guard length > 0 else { throw FSError(.invalidArgument, "\(what): length must be > 0") }
        guard offset % pageSize == 0, length % pageSize == 0 else {
            throw FSError(.invalidArgument, "\(what): offset and length must be multiples of the block size (\(pageSize))")
        }
    }

    /// Moves every block from page `first` on by `delta` pages (freeing the `-delta` pages at
    /// `first` when it is negative), the file's lock held exclusively. `newSize` checks the
    /// file's size (again after every sleep in the layout breaker: the lock is dropped there)
    /// and says the size afterwards.
    private func shift(
        _ what: String, _ id: FileID, first: Int, by delta: Int, policy: TruncatePolicy?,
        newSize: (Int) throws(FSError) -> Int
    ) throws(FSError) {
        let number = id.inode
        var size = Int(try self.checkedRecord(id).size)
        _ = try newSize(size)
        // (Borrowed, good while the lock is held: see `removePages`.)
        try self.breaker.withCurrent { (breaker) throws(FSError) in
            var call = LayoutBreakCall(policy: policy ?? breaker.defaultPolicy, movesBlocks: true)
            while true {
                let pages = first..<max(first, (size + pageSize - 1) / pageSize)
                let result = try breaker.breakLayouts(
                    &call, inode: number, pages: pages, locks: FileLocks(self.locks, number))
                guard result == .retry else { break }
                guard self.breaker.isAttached else { throw self.unmountedWhileSleeping() }
                size = Int(try self.checkedRecord(id).size)  // (the file may have changed while it slept)
                _ = try newSize(size)
            }
        } none: { () throws(FSError) in }
        let finalSize = try newSize(size)
        let pages = (size + pageSize - 1) / pageSize
        var reserved: [UInt32] = []
        let outcome: ([(UInt32, Int)], [UInt32])
        do {
            outcome = try self.log.transaction { (tx) throws(FSError) -> [(UInt32, Int)] in
                let record = tx.inode(number)
                var moves: [(UInt32, Int)] = []
                func tooMany() -> FSError {
                    func count(_ n: Int) -> String { n == 1 ? "1 page" : "\(n) pages" }
                    let freeing = delta < 0 ? "freeing \(count(-delta)) and " : ""
                    let moving = max(0, pages - first + min(delta, 0))
                    return FSError(
                        .notSupported,
                        "\(what): \(freeing)moving \(count(moving)) does not fit in one log transaction (it holds "
                            + "about \(Self.shiftPointerChanges) pointer changes: a collapse of F pages moving M needs about "
                            + "2F + M, an insert of L pages moving M about M + min(L, M)); nothing changed")
                }
                func take(_ page: Int) throws(FSError) -> UInt32? {
                    guard tx.remainingCapacity > 3 * pageSize else { throw tooMany() }
                    guard let slot = Self.pointerSlot(tx, inode: number, page: page), tx.isSet(slot) else { return nil }
                    let block = tx.pointer(slot, inode: number)
                    tx.setPointer(slot, inode: number, 0)
                    return self.geometry.isDataBlock(block) ? block : nil  // (a garbage pointer is dropped)
                }
                if delta < 0 {
                    for page in first..<(first - delta) {
                        guard let block = try take(page) else { continue }
                        record.blocks = record.blocks > 0 ? record.blocks - 1 : 0
                        Self.dropFromReservation(record, block)
                        tx.setFree(block)
                    }
                    for page in (first - delta)..<max(first - delta, pages) {
                        guard let block = try take(page) else { continue }
                        try Self.stageMap(
                            tx, allocator: self.allocator, inode: number, page: page + delta, block: block,
                            reserved: &reserved, alreadyAllocated: true, countsBlock: false)
                        moves.append((block, page + delta))
                    }
                } else {
                    for page in (first..<max(first, pages)).reversed() {
                        guard let block = try take(page) else { continue }
                        try Self.stageMap(
                            tx, allocator: self.allocator, inode: number, page: page + delta, block: block,
                            reserved: &reserved, alreadyAllocated: true, countsBlock: false)
                        moves.append((block, page + delta))
                    }
                }
                // Map blocks the shift emptied (past the new end, or over an inserted hole) go too.
                let finalPages = (finalSize + pageSize - 1) / pageSize
                let keepBelow = record.reservationCount != 0 ? finalPages : 0
                guard Self.stageReleaseEmptyMaps(
                    tx, inode: number, pages: first..<max(first, pages, finalPages), keepBelow: keepBelow)
                else {
                    throw tooMany()
                }
                record.size = UInt64(finalSize)
                record.modifiedNanoseconds = FileSystem.now()
                return moves
            }
        } catch {
            self.allocator.release(reserved, aborted: true)
            guard error.code != .noSpace else {
                throw FSError(.noSpace, "\(what): \(error.message); nothing changed")
            }
            throw error
        }
        let (moves, freed) = outcome
        self.allocator.release(freed)
        if let observer = self.allocator.allocationObserver {
            for (block, page) in moves { observer.didMove(block, inode: number, page: page) }
        }
    }
}
