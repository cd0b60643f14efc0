import Pmem

/// How `removeBlocks` lets go of blocks: all freed, or pinned ones claimed by the DAX layer and
/// sequestered or kept from the allocator.
struct BlockRemoval {
    var disposition: BusyBlockDisposition
    var breaker: (any LayoutBreaker)?
    /// Stages moving a claimed block into lost+found (disposition `.sequester`).
    var sequester: ((Transaction, UInt32) throws(FSError) -> Void)? = nil
    /// Undoes volatile bookkeeping of a transaction that failed.
    var aborted: (() -> Void)? = nil
    /// A chunk's transaction committed: its volatile bookkeeping is now final.
    var chunkCommitted: (() -> Void)? = nil

    static var freeAll: BlockRemoval { BlockRemoval(disposition: .free, breaker: nil) }
}

/// Changing block maps inside transactions: mapping new blocks (writes, fallocate) and removing
/// ranges in crash-safe chunks (truncate, punch, unlink, lost+found reclaim).
extension FileSystem {
    /// Stages mapping `block` at `page` of inode `number`, allocating block-map blocks on the way.
    /// - Parameter reserved: collects map blocks taken from the allocator, so a caller whose
    ///   transaction fails can give them back.
    /// - Throws: `.noSpace` when a map block cannot be allocated, `.fileTooLarge` beyond the largest file.
    static func stageMap(
        _ tx: Transaction, allocator: BlockAllocator, inode number: Int, page: Int, block: UInt32,
        reserved: inout [UInt32], alreadyAllocated: Bool = false, countsBlock: Bool = true
    ) throws(FSError) {
        guard let path = BlockMapPath(page: page) else {
            throw FSError(.fileTooLarge, "page \(page) is beyond the largest file (\(FileSystem.maximumFileSize) bytes)")
        }
        let geometry = tx.geometry
        let inodeOffset = geometry.inodeOffset(number)
        let record = tx.inode(number)

        /// The map block whose pointer lives at `slot` (a field of the staged inode or an entry
        /// of another map block), allocated and zeroed when absent.
        func mapBlock(at slot: PointerSlot) throws(FSError) -> UInt32 {
            let existing = tx.pointer(slot, inode: number)
            if geometry.isDataBlock(existing) { return existing }  // (a garbage pointer is replaced)
            guard let fresh = allocator.allocate(1, hint: BlockAllocator.currentCPUHint)?.first else {
                throw FSError(.noSpace, "no free block for a block map")
            }
            reserved.append(fresh)
            allocator.allocationObserver?.didAllocate(fresh, inode: number, page: nil)
            tx.setAllocated(fresh)
            tx.zero(Int(fresh) * pageSize, pageSize)
            tx.setPointer(slot, inode: number, fresh)
            return fresh
        }

        switch path {
        case .direct(let index):
            tx.store32(inodeOffset + InodeRecord.directPointerOffset(index), block)
        case .indirect(let index):
            let map = try mapBlock(at: .record(inodeOffset + InodeRecord.indirectOffset))
            tx.setPointer(.entry(geometry.entryOffset(map, index), position: UInt32(page)), inode: number, block)
        case .doubleIndirect(let outer, let inner):
            let top = try mapBlock(at: .record(inodeOffset + InodeRecord.doubleIndirectOffset))
            let leaf = try mapBlock(at: Self.leafSlot(geometry, top: top, outer))
            tx.setPointer(.entry(geometry.entryOffset(leaf, inner), position: UInt32(page)), inode: number, block)
        }
        if !alreadyAllocated { tx.setAllocated(block) }
        if countsBlock { record.blocks += 1 }
    }

    /// Where the pointer of `page` of inode `number` lives as `tx` sees the map, or nil when a
    /// map block on its path is absent (the page is a hole and has no slot yet).
    static func pointerSlot(_ tx: Transaction, inode number: Int, page: Int) -> PointerSlot? {
        guard let path = BlockMapPath(page: page) else { return nil }
        let geometry = tx.geometry
        let inodeOffset = geometry.inodeOffset(number)
        switch path {
        case .direct(let index):
            return .record(inodeOffset + InodeRecord.directPointerOffset(index))
        case .indirect(let index):
            let map = tx.load32(inodeOffset + InodeRecord.indirectOffset)
            return geometry.isDataBlock(map) ? .entry(geometry.entryOffset(map, index), position: UInt32(page)) : nil
        case .doubleIndirect(let outer, let inner):
            let top = tx.load32(inodeOffset + InodeRecord.doubleIndirectOffset)
            guard geometry.isDataBlock(top) else { return nil }
            let leaf = tx.pointer(Self.leafSlot(geometry, top: top, outer), inode: number)
            return geometry.isDataBlock(leaf) ? .entry(geometry.entryOffset(leaf, inner), position: UInt32(page)) : nil
        }
    }

    /// The slot of the `outer`-th leaf pointer in double-indirect block `top`.
    static func leafSlot(_ geometry: Geometry, top: UInt32, _ outer: Int) -> PointerSlot {
        .entry(geometry.entryOffset(top, outer), position: MapEntry.leafTag | UInt32(outer))
    }

    /// Removes the blocks of `pages` from inode `number`, last page first, in as many transactions
    /// as the log slot needs. Each transaction leaves a consistent file: with `newSize` (a
    /// truncate) the size shrinks with the removed tail and block-map blocks wholly past the new
    /// end are freed too; without it (a punch) the size stays.
    /// The caller holds the inode's lock exclusively (and lost+found's, when `removal` sequesters).
    /// - Returns: how many data blocks left the file.
    /// - Parameter intent: the truncate or punch this removal belongs to. When the removal takes
    ///   more than one transaction, every transaction but the last records it in the inode, so a
    ///   crash part-way is finished by the next mount; the last clears it.
    static func removeBlocks(
        log: MetadataLog, allocator: BlockAllocator, inode number: Int, pages: Range<Int>, newSize: UInt64?,
        removal: BlockRemoval = .freeAll, intent: InodeRecord.Intent? = nil
    ) throws(FSError) -> Int {
        let geometry = log.geometry
        let reader = BlockMapReader(base: log.media.base, geometry: geometry)
        let perBlock = MapEntry.perBlock
        let keepPages = newSize.map { Int(($0 + UInt64(pageSize) - 1) / UInt64(pageSize)) }
        var cursor = min(pages.upperBound, InodeRecord.maximumPages)  // pages below `cursor` remain
        var freedTotal = 0
        var claimed: [UInt32] = []
        // Map blocks the removal empties go in the transaction that empties them; a truncate also
        // frees any map block wholly past its new end. A sweep that ran out of room goes on in
        // another transaction.
        var swept = false
        repeat {
            claimed.removeAll(keepingCapacity: true)
            let outcome: (Int, [UInt32])
            do throws(FSError) {
                outcome = try log.transaction { (tx) throws(FSError) -> Int in
                var removed = 0
                func clear(_ slot: PointerSlot) throws(FSError) {
                    guard tx.isSet(slot) else { return }
                    let value = tx.pointer(slot, inode: number)
                    tx.setPointer(slot, inode: number, 0)
                    // (A garbage pointer or an entry that fails its check, see BlockMapReader.valid: dropped.)
                    guard geometry.isDataBlock(value) else { return }
                    let staged = tx.inode(number)
                    staged.blocks = staged.blocks > 0 ? staged.blocks - 1 : 0  // (saturating: see `valid`)
                    Self.dropFromReservation(staged, value)
                    removed += 1
                    if removal.disposition != .free, let breaker = removal.breaker,
                        breaker.claimBusy(value, as: removal.disposition)
                    {
                        claimed.append(value)
                        if removal.disposition == .sequester {
                            try removal.sequester!(tx, value)
                        } else {
                            tx.setFree(value, toAllocator: false)
                        }
                    } else {
                        tx.setFree(value)
                    }
                }
                let record = tx.inode(number)
                let inodeOffset = geometry.inodeOffset(number)
                let chunkEnd = cursor
                while cursor > pages.lowerBound, tx.remainingCapacity > 4 * (LogRecord.headerSize + 8) + 1024 {
                    let page = cursor - 1
                    guard let path = BlockMapPath(page: page) else { break }
                    switch path {
                    case .direct(let index):
                        try clear(.record(inodeOffset + InodeRecord.directPointerOffset(index)))
                        cursor = page
                    case .indirect(let index):
                        let offset = inodeOffset + InodeRecord.indirectOffset
                        let map = reader.valid(tx.load32(offset))
                        let first = BlockMapPath.indirectFirstPage
                        if map == 0 {
                            cursor = max(first, pages.lowerBound)
                            continue
                        }
                        try clear(.entry(geometry.entryOffset(map, index), position: UInt32(page)))
                        cursor = page
                        if page == first, let keepPages, keepPages <= first {
                            Self.releaseMap(tx, .record(offset), inode: number, block: map)
                        }
                    case .doubleIndirect(let outer, let inner):
                        let topOffset = inodeOffset + InodeRecord.doubleIndirectOffset
                        let top = reader.valid(tx.load32(topOffset))
                        let leafFirst = BlockMapPath.doubleIndirectFirstPage + outer * perBlock
                        if top == 0 {
                            cursor = max(BlockMapPath.doubleIndirectFirstPage, pages.lowerBound)
                            continue
                        }
                        let leafSlot = Self.leafSlot(geometry, top: top, outer)
                        let leaf = reader.valid(tx.pointer(leafSlot, inode: number))
                        if leaf != 0 {
                            try clear(.entry(geometry.entryOffset(leaf, inner), position: UInt32(page)))
                            cursor = page
                        } else {
                            cursor = max(leafFirst, pages.lowerBound)
                        }
                        if cursor == leafFirst, let keepPages, keepPages <= leafFirst {
                            if leaf != 0 { Self.releaseMap(tx, leafSlot, inode: number, block: leaf) }
                            if outer == 0, keepPages <= BlockMapPath.doubleIndirectFirstPage {
                                Self.releaseMap(tx, .record(topOffset), inode: number, block: top)
                            }
                        }
                    }
                }
                let sweep = cursor > pages.lowerBound
                    ? cursor..<chunkEnd
                    : keepPages.map { min(pages.lowerBound, $0)..<InodeRecord.maximumPages } ?? pages
                let filePages = Int((record.size + UInt64(pageSize) - 1) / UInt64(pageSize))
                let keepBelow = record.reservationCount != 0 ? min(filePages, keepPages ?? filePages) : 0
                swept = Self.stageReleaseEmptyMaps(tx, inode: number, pages: sweep, keepBelow: keepBelow)
                    && cursor <= pages.lowerBound
                if let newSize, let keepPages {
                    // Until the last chunk, the file ends where the remaining blocks end.
                    record.size = cursor > keepPages
                        ? min(record.size, UInt64(cursor) * UInt64(pageSize)) : newSize
                }
                if let intent { record.intent = cursor > pages.lowerBound ? intent : InodeRecord.Intent.none }
                record.modifiedNanoseconds = FileSystem.now()
                return removed
            }
            } catch {
                if !claimed.isEmpty { removal.breaker?.claimsAborted(claimed) }
                removal.aborted?()
                throw error
            }
            let (removed, freed) = outcome
            allocator.release(freed)
            removal.chunkCommitted?()
            // Passing claims on enqueues the releases of blocks already idle on the DAX layer's
            // reclaimer: no file-system lock is taken here, so the locks held now may stay held.
            if !claimed.isEmpty { removal.breaker?.claimsCommitted(claimed) }
            freedTotal += removed
        } while !swept
        return freedTotal
    }

    private static func releaseMap(_ tx: Transaction, _ slot: PointerSlot, inode number: Int, block: UInt32) {
        tx.setPointer(slot, inode: number, 0)
        tx.setFree(block)
    }

    /// Room a map release takes in a log slot: a pointer store and a bitmap record.
    static let mapReleaseBytes = 2 * (LogRecord.headerSize + 8)

    /// Stages freeing every block-map block of inode `number` that covers a page of `pages` and
    /// maps nothing as `tx` sees it, then the double-indirect block when no leaf is left under
    /// it: a removal or a shift leaves no map block that maps nothing, but for one that
    /// `keepBelow` keeps: a file that holds reserved blocks keeps its empty map blocks that start
    /// below that page (its end of file), for the write faults that need no log (mount frees
    /// them). Stops when the slot has room for no more releases.
    /// - Returns: false when it stopped for room (the caller sweeps again in a new transaction).
    static func stageReleaseEmptyMaps(
        _ tx: Transaction, inode number: Int, pages: Range<Int>, keepBelow: Int = 0
    ) -> Bool {
        let geometry = tx.geometry
        let inodeOffset = geometry.inodeOffset(number)
        let perBlock = MapEntry.perBlock
        let doubleFirst = BlockMapPath.doubleIndirectFirstPage
        func release(_ slot: PointerSlot, firstPage: Int) -> Bool {
            guard firstPage >= keepBelow else { return true }
            let map = tx.pointer(slot, inode: number)
            guard geometry.isDataBlock(map), tx.mapBlockIsEmpty(map) else { return true }
            guard tx.remainingCapacity >= 2 * Self.mapReleaseBytes else { return false }
            Self.releaseMap(tx, slot, inode: number, block: map)
            return true
        }
        guard !pages.isEmpty else { return true }
        if pages.overlaps(BlockMapPath.indirectFirstPage..<doubleFirst),
            !release(.record(inodeOffset + InodeRecord.indirectOffset), firstPage: BlockMapPath.indirectFirstPage)
        {
            return false
        }
        guard pages.upperBound > doubleFirst else { return true }
        let topOffset = inodeOffset + InodeRecord.doubleIndirectOffset
        let top = tx.load32(topOffset)
        guard geometry.isDataBlock(top) else { return true }
        for outer in BlockMapPath.leaves(overlapping: pages)
        where !release(Self.leafSlot(geometry, top: top, outer), firstPage: doubleFirst + outer * perBlock) {
            return false
        }
        return release(.record(topOffset), firstPage: doubleFirst)
    }
}
