import Pmem

/// File data: read, write, truncate, punch hole, fallocate.
///
/// Ordered mode: new blocks are zeroed and filled, and the data made durable, before the
/// transaction that maps them commits; a crash before the commit leaves them free. Overwrites of
/// mapped blocks go in place. Invariant kept by every operation: bytes past the end of file
/// inside the last block are zero, and no block is mapped past the end of file.
extension FileSystem {
    /// Pages one write or fallocate transaction maps at most.
    static let pagesPerTransaction = 256
    /// The largest file, in bytes: every page the block map can reach (1 GiB + 2 MiB + 48 KiB).
    public static let maximumFileSize = InodeRecord.maximumPages * pageSize

    /// Checks `offset..<offset+length` against the largest file before any arithmetic on it.
    /// - Throws: `.invalidArgument` for a negative offset or length, `.fileTooLarge` for a range
    ///   that ends past the largest file (EFBIG, as fallocate(2) says).
    static func checkRange(_ what: String, offset: Int, length: Int) throws(FSError) {
        guard offset >= 0 else { throw FSError(.invalidArgument, "\(what): offset \(offset) is negative") }
        guard length >= 0 else { throw FSError(.invalidArgument, "\(what): length \(length) is negative") }
        guard offset <= Self.maximumFileSize, length <= Self.maximumFileSize - offset else {
            throw FSError(
                .fileTooLarge,
                "\(what): offset \(offset) + length \(length) is past the largest file (\(Self.maximumFileSize) bytes)")
        }
    }

    /// Reads up to `count` bytes at `offset`; holes read as zeros; reading past the end returns fewer.
    public func read(_ id: FileID, offset: Int, count: Int) throws(FSError) -> [UInt8] {
        guard offset >= 0, count >= 0 else { throw FSError(.invalidArgument, "read: negative offset or count") }
        return try self.lock(id).withReadLock { () throws(FSError) -> [UInt8] in
            let record = try self.checkedRecord(id)
            let end = Int(record.size) - offset < count ? Int(record.size) : offset + count
            guard end > offset else { return [] }
            let reader = self.reader
            return [UInt8](unsafeUninitializedCapacity: end - offset) { buffer, initialized in
                var position = offset
                while position < end {
                    let page = position / pageSize
                    let within = position % pageSize
                    let length = min(pageSize - within, end - position)
                    let destination = UnsafeMutableRawPointer(buffer.baseAddress! + (position - offset))
                    let block = reader.block(of: record, id.inode, page: page)
                    if block == 0 {
                        destination.initializeMemory(as: UInt8.self, repeating: 0, count: length)
                    } else {
                        destination.copyMemory(
                            from: self.media.base + Int(block) * pageSize + within, byteCount: length)
                    }
                    position += length
                }
                initialized = end - offset
            }
        }
    }

    /// Writes `bytes` at `offset`, allocating blocks for holes and growing the file as needed.
    /// Durable when it returns.
    ///
    /// `bytes` may lie in memory whose faults this process's file systems serve (a DAX window,
    /// even one of this same file): such a source is copied into a bounce buffer before the
    /// file's lock is taken, `bounceChunk` bytes (1 MiB) at a time, and each chunk then written
    /// under the lock (see `FaultServedMemory`). That write is atomic per chunk, as the kernel's
    /// write loop is per iteration: a reader may see the first chunk written and not the second,
    /// and a failure leaves the chunks before it written.
    /// - Throws: `.noSpace` (nothing of the failing chunk is mapped), `.fileTooLarge`;
    ///   `.badAddress` for a source the kernel's copy could not fault in (a window page past its
    ///   file's end, where the window's faults are the kernel's to serve; one served by a SIGSEGV
    ///   handler raises SIGBUS there instead, as a load from it does).
    public func write(_ id: FileID, offset: Int, bytes: UnsafeRawBufferPointer) throws(FSError) {
        try self.checkWritable()
        try Self.checkRange("write", offset: offset, length: bytes.count)
        guard bytes.count > 0 else { return }
        if FaultServedMemory.overlaps(bytes) {
            try self.writeThroughBounceBuffer(id, offset: offset, bytes: bytes)
            return
        }
        try self.writeLocked(id, offset: offset, bytes: bytes)
    }

    /// The write itself, under the file's lock (exclusive); `bytes` must not fault into a file
    /// system of this process.
    func writeLocked(_ id: FileID, offset: Int, bytes: UnsafeRawBufferPointer) throws(FSError) {
        try self.lock(id).withWriteLock { () throws(FSError) in
            let before = try self.checkedRecord(id).size
            defer { self.noteChange(id.inode, from: before, filling: offset..<(offset + bytes.count)) }
            var position = offset
            let end = offset + bytes.count
            while position < end {
                let chunkEnd = min(end, (position / pageSize + Self.pagesPerTransaction) * pageSize)
                try self.writeChunk(id.inode, from: position, to: chunkEnd) { destination, fileOffset, length in
                    destination.copyMemory(from: bytes.baseAddress! + (fileOffset - offset), byteCount: length)
                }
                position = chunkEnd
            }
        }
    }

    /// Tells the DAX layer what a call that holds inode `number`'s lock exclusively did to its
    /// mappings: the holes it may have filled in the byte range `filling`, and whether the file
    /// grew past `before` bytes.
    func noteChange(_ number: Int, from before: UInt64, filling: Range<Int> = 0..<0) {
        let size = self.record(number).size
        let pages = filling.isEmpty ? 0..<0 : (filling.lowerBound / pageSize)..<((filling.upperBound + pageSize - 1) / pageSize)
        guard size > before || !pages.isEmpty else { return }
        let grownTo = size > before ? Int((size + UInt64(pageSize) - 1) / UInt64(pageSize)) : nil
        self.breaker.withCurrent({ $0.mappingsChanged(number, filled: pages, grownTo: grownTo) }, none: {})
    }

    /// Convenience for `[UInt8]`.
    public func write(_ id: FileID, offset: Int, bytes: [UInt8]) throws(FSError) {
        let outcome = bytes.withUnsafeBytes { buffer in
            Result { () throws(FSError) in try self.write(id, offset: offset, bytes: buffer) }
        }
        try outcome.get()
    }

    /// Fills `start..<end` (within at most `pagesPerTransaction` pages) through `fill`, mapping
    /// fresh zeroed blocks for holes, then commits the new mappings and the size in one transaction.
    /// `fill(destination, fileOffset, length)` writes `length` bytes; nil `fill` leaves zeros.
    func writeChunk(
        _ number: Int, from start: Int, to end: Int,
        fill: ((UnsafeMutableRawPointer, Int, Int) -> Void)?
    ) throws(FSError) {
        let record = self.record(number)
        let reader = self.reader
        let firstPage = start / pageSize
        let lastPage = (end - 1) / pageSize
        // Each page's block is read once: under policy `none` a device may be writing into a
        // block-map block that was freed and reused, so a second read could disagree.
        var blocks = (firstPage...lastPage).map { reader.block(of: record, number, page: $0) }
        let holes = (firstPage...lastPage).filter { blocks[$0 - firstPage] == 0 }
        guard let fresh = self.blocksForHoles(number, record: record, holes: holes, end: end) else {
            throw FSError(
                .noSpace,
                "no space left: bytes \(start)..<\(end) need \(holes.count) new block(s), \(self.allocator.freeCount) free")
        }
        let observer = self.allocator.allocationObserver
        for (page, block) in zip(holes, fresh) {
            blocks[page - firstPage] = block
            observer?.didAllocate(block, inode: number, page: page)
        }

        for page in firstPage...lastPage {
            let block = blocks[page - firstPage]
            let isFresh = fresh.contains(block)
            let blockOffset = Int(block) * pageSize
            let from = max(start, page * pageSize)
            let to = min(end, (page + 1) * pageSize)
            if isFresh, fill == nil || to - from < pageSize {
                try self.media.zero(blockOffset, pageSize)
            }
            if let fill {
                fill(self.media.base + blockOffset + (from - page * pageSize), from, to - from)
            }
            if fill != nil {
                try self.media.flush(blockOffset, pageSize)  // (a zeroed block is flushed already)
            }
        }
        self.media.barrier()  // data durable before it is mapped

        var reserved: [UInt32] = []
        do throws(FSError) {
            _ = try self.log.transaction { (tx) throws(FSError) in
                for (page, block) in zip(holes, fresh) {
                    try Self.stageMap(tx, allocator: self.allocator, inode: number, page: page, block: block,
                                      reserved: &reserved)
                }
                let staged = tx.inode(number)
                staged.size = max(staged.size, UInt64(end))
                staged.modifiedNanoseconds = FileSystem.now()
            }
        } catch {
            self.allocator.release(fresh + reserved, aborted: true)
            throw error
        }
    }

    /// Sets the file's size. Shrinking frees the blocks past the new end (and zeroes the tail of
    /// the new last block); growing adds a hole.
    /// - Parameter policy: what to do with blocks pinned for DMA (nil: the DAX layer's default;
    ///   see `TruncatePolicy`).
    /// - Throws: `.busy` or `.timedOut` from the policy (nothing changed then), `.notFound`,
    ///   `.invalidArgument`.
    public func truncate(_ id: FileID, size: Int, policy: TruncatePolicy? = nil) throws(FSError) {
        try self.checkWritable()
        guard size >= 0 else { throw FSError(.invalidArgument, "truncate: size \(size) is negative") }
        guard size <= Self.maximumFileSize else {
            throw FSError(.fileTooLarge, "truncate: size \(size) is past the largest file (\(Self.maximumFileSize) bytes)")
        }
        try self.lock(id).withWriteLock { () throws(FSError) in
            let record = try self.checkedRecord(id)
            let oldSize = Int(record.size)
            if size >= oldSize {
                _ = try self.log.transaction { (tx) throws(FSError) in
                    let staged = tx.inode(id.inode)
                    staged.size = UInt64(size)
                    staged.modifiedNanoseconds = FileSystem.now()
                }
                self.noteChange(id.inode, from: UInt64(oldSize))
                return
            }
            let newPages = (size + pageSize - 1) / pageSize
            let intent = InodeRecord.Intent.truncate(size: UInt64(size))
            // The partial last page stays; its bytes past the new end are zeroed, but only once
            // the policy lets the truncate happen, and only once the intent is durable: a crash
            // after the zeroing leaves a truncate the next mount finishes, never an old file
            // with zeros in it.
            let zeroTail = { () throws(FSError) in
                guard size % pageSize != 0 else { return }
                try self.recordIntent(id.inode, intent)
                try Self.zeroWithinPage(
                    media: self.media, reader: self.reader, record: self.record(id.inode), inode: id.inode, from: size,
                    to: min(oldSize, newPages * pageSize))
            }
            try self.removePages(
                id.inode, policy: policy, newSize: { UInt64(size) }, intent: intent, beforeRemoval: zeroTail
            ) {
                () throws(FSError) -> Range<Int> in
                let current = Int(try self.checkedRecord(id).size)
                return newPages..<max(newPages, (current + pageSize - 1) / pageSize)
            }
        }
    }

    /// Deallocates `offset..<offset+length`: whole blocks inside it are freed, partial blocks at
    /// its edges are zeroed; it reads back as zeros and the size does not change.
    /// - Parameter policy: what to do with blocks pinned for DMA (nil: the DAX layer's default).
    public func punchHole(_ id: FileID, offset: Int, length: Int, policy: TruncatePolicy? = nil) throws(FSError) {
        try self.checkWritable()
        try Self.checkRange("punch", offset: offset, length: length)
        try self.lock(id).withWriteLock { () throws(FSError) in
            let record = try self.checkedRecord(id)
            let end = min(offset + length, Int(record.size))
            guard end > offset else { return }
            try self.punchLocked(id, offset: offset, end: end, size: Int(record.size), policy: policy, growTo: nil)
        }
    }

    /// `fallocate(FALLOC_FL_ZERO_RANGE)`: afterwards `offset..<offset+length` reads zeros and
    /// has zeroed blocks behind it, and unless `keepSize` the file grows to cover it. Inside the
    /// old size it is a punch (whole pages freed through the layout breaker under `policy`,
    /// partial edge pages zeroed in place) whose intent also carries the growth, so a crash
    /// leaves it not started or complete; then the holes get new zeroed blocks, as `fallocate`
    /// gives them (a crash before that leaves holes, which read zeros as well).
    /// - Throws: `.busy` or `.timedOut` from the policy (nothing changed), `.invalidArgument`,
    ///   `.fileTooLarge`, `.noSpace` (the range reads zeros; some holes may stay holes).
    public func zeroRange(
        _ id: FileID, offset: Int, length: Int, keepSize: Bool = false, policy: TruncatePolicy? = nil
    ) throws(FSError) {
        try self.checkWritable()
        try Self.checkRange("zero-range", offset: offset, length: length)
        guard length > 0 else { throw FSError(.invalidArgument, "zero-range: length must be > 0") }
        try self.lock(id).withWriteLock { () throws(FSError) in
            let size = Int(try self.checkedRecord(id).size)
            defer { self.noteChange(id.inode, from: UInt64(size), filling: offset..<(offset + length)) }
            let end = offset + length
            let newSize = keepSize ? size : max(size, end)
            guard min(end, newSize) > offset else { return }
            try self.checkSpaceToZero(id.inode, offset: offset, end: min(end, newSize), size: size)
            if min(end, size) > offset {
                try self.punchLocked(
                    id, offset: offset, end: min(end, size), size: size, policy: policy,
                    growTo: newSize > size ? newSize : nil)
            } else if newSize > size {
                _ = try self.log.transaction { (tx) throws(FSError) in
                    let staged = tx.inode(id.inode)
                    staged.size = UInt64(newSize)
                    staged.modifiedNanoseconds = FileSystem.now()
                }
            }
            do throws(FSError) {
                try self.allocateHoles(id.inode, from: offset, to: min(end, newSize))
            } catch {
                // Only blocks a policy keeps busy can make the count above wrong: the range reads
                // zeros, and the file gets its old size back.
                if newSize > size {
                    let pages = (size + pageSize - 1) / pageSize
                    _ = try Self.removeBlocks(
                        log: self.log, allocator: self.allocator, inode: id.inode,
                        pages: pages..<((newSize + pageSize - 1) / pageSize), newSize: UInt64(size))
                }
                throw error
            }
        }
    }

    /// Refuses, before anything changes, a zero-range of `offset..<end` that could not give every
    /// page a block: the blocks it needs (every page but a mapped partial one at an edge, and the
    /// map blocks missing on the way) against the free ones and those its punch will free (the
    /// whole pages mapped inside the file's `size`).
    private func checkSpaceToZero(_ number: Int, offset: Int, end: Int, size: Int) throws(FSError) {
        let record = self.record(number)
        let (firstWhole, endWhole) = Self.wholePages(offset: offset, end: min(end, size), size: size)
        let pages = (offset / pageSize)..<((end + pageSize - 1) / pageSize)
        var needed = 0
        var freed = 0
        for page in pages {
            let mapped = self.reader.block(of: record, number, page: page) != 0
            let punched = page >= firstWhole && page < endWhole
            if mapped && punched { freed += 1 }
            if !mapped || punched { needed += 1 }
        }
        needed += self.missingMapBlocks(record, number, pages: pages)
        let free = self.allocator.freeCount
        guard needed <= free + freed else {
            throw FSError(
                .noSpace,
                "zero-range: needs \(needed) blocks, and \(free) are free (\(freed) more once the range is punched); nothing changed")
        }
    }

    /// The block-map blocks that mapping every page of `pages` would have to allocate.
    private func missingMapBlocks(_ record: InodeRecord, _ number: Int, pages: Range<Int>) -> Int {
        let doubleFirst = BlockMapPath.doubleIndirectFirstPage
        var missing = 0
        if pages.overlaps(BlockMapPath.indirectFirstPage..<doubleFirst), self.reader.mapSlot(of: record, number, page: BlockMapPath.indirectFirstPage) == nil {
            missing += 1
        }
        guard pages.upperBound > doubleFirst else { return missing }
        let top = self.reader.valid(record.pointer.load(fromByteOffset: InodeRecord.doubleIndirectOffset, as: UInt32.self))
        if top == 0 { missing += 1 }
        for outer in BlockMapPath.leaves(overlapping: pages)
        where self.reader.entry(top, outer, number, position: MapEntry.leafTag | UInt32(outer)) == 0 {
            missing += 1
        }
        return missing
    }

    /// A punch of `offset..<end` (inside the file's `size`), the file's lock held exclusively.
    /// With `growTo`, the file first grows to that size in the transaction that records the
    /// punch's intent, once the policy let the punch happen (zero-range).
    private func punchLocked(
        _ id: FileID, offset: Int, end: Int, size: Int, policy: TruncatePolicy?, growTo: Int?
    ) throws(FSError) {
        let intent = InodeRecord.Intent.punch(offset: UInt64(offset), end: UInt64(end))
        let (firstWhole, endWhole) = Self.wholePages(offset: offset, end: end, size: size)
        // Partial pages at the edges are zeroed, not freed: only once the policy lets the
        // whole pages go (so EBUSY or a timeout leaves the file as it was).
        // The intent is durable before any byte is zeroed (see truncate).
        let partial = firstWhole * pageSize > offset || (end > endWhole * pageSize && endWhole >= firstWhole)
        // (A local function, not a closure in a `let`: that one's context is allocated.)
        func begin() throws(FSError) {
            if let growTo {
                _ = try self.log.transaction { (tx) throws(FSError) in
                    let staged = tx.inode(id.inode)
                    staged.size = UInt64(growTo)
                    staged.intent = intent
                    staged.modifiedNanoseconds = FileSystem.now()
                }
            } else if partial {
                try self.recordIntent(id.inode, intent)
            }
            guard partial else { return }
            try Self.zeroEdges(
                media: self.media, reader: self.reader, record: self.record(id.inode), inode: id.inode, offset: offset, end: end,
                firstWhole: firstWhole, endWhole: endWhole)
        }
        if endWhole > firstWhole {
            try self.removePages(id.inode, policy: policy, newSize: { nil }, intent: intent, beforeRemoval: begin) {
                () throws(FSError) -> Range<Int> in
                let current = Int(try self.checkedRecord(id).size)
                let last = end >= current ? (current + pageSize - 1) / pageSize : endWhole
                return firstWhole..<max(firstWhole, min(endWhole, last))
            }
        } else {
            try begin()
            if partial || growTo != nil { try self.recordIntent(id.inode, .none) }
        }
    }

    /// Allocates zeroed blocks for every hole in `offset..<offset+length` and grows the file to
    /// cover it, so later writes there cannot fail for space. With `keepSize` the size stays and
    /// only the part of the range inside the file is allocated: DaxFS maps no block past the end
    /// of file (fallocate(2)'s `FALLOC_FL_KEEP_SIZE` would keep blocks there).
    /// - Returns: the bytes of the range that got blocks (past the end of file: none with `keepSize`).
    /// - Throws: `.noSpace` part-way: the blocks allocated before it stay, as fallocate(2)'s may.
    @discardableResult
    public func fallocate(_ id: FileID, offset: Int, length: Int, keepSize: Bool = false) throws(FSError) -> Int {
        try self.checkWritable()
        try Self.checkRange("fallocate", offset: offset, length: length)
        guard length > 0 else { throw FSError(.invalidArgument, "fallocate: length must be > 0") }
        return try self.lock(id).withWriteLock { () throws(FSError) -> Int in
            let size = Int(try self.checkedRecord(id).size)
            defer { self.noteChange(id.inode, from: UInt64(size), filling: offset..<(offset + length)) }
            let end = keepSize ? min(offset + length, size) : offset + length
            guard end > offset else { return 0 }
            try self.allocateHoles(id.inode, from: offset, to: end)
            return end - offset
        }
    }

    /// Maps zeroed blocks into every hole of `start..<end`, growing the file to `end` if it is
    /// shorter, a transaction per `pagesPerTransaction` pages. The caller holds the file's lock.
    private func allocateHoles(_ number: Int, from start: Int, to end: Int) throws(FSError) {
        var position = start
        while position < end {
            let chunkEnd = min(end, (position / pageSize + Self.pagesPerTransaction) * pageSize)
            try self.writeChunk(number, from: position, to: chunkEnd, fill: nil)
            position = chunkEnd
        }
    }

    /// Zeroes `from..<to`, which lies within one page of `record`, if that page has a block;
    /// durable on return. Idempotent (mount repeats it when it finishes an intent).
    static func zeroWithinPage(
        media: Media, reader: BlockMapReader, record: InodeRecord, inode number: Int, from: Int, to: Int
    ) throws(FSError) {
        guard to > from else { return }
        let block = reader.block(of: record, number, page: from / pageSize)
        guard block != 0 else { return }
        let offset = Int(block) * pageSize + from % pageSize
        try media.zero(offset, to - from)
        try media.persist(offset, to - from)
    }

    /// Zeroes the partial pages at the edges of a punch of `offset..<end` whose whole pages are
    /// `firstWhole..<endWhole`.
    static func zeroEdges(
        media: Media, reader: BlockMapReader, record: InodeRecord, inode number: Int, offset: Int, end: Int,
        firstWhole: Int, endWhole: Int
    ) throws(FSError) {
        if firstWhole * pageSize > offset {
            try Self.zeroWithinPage(
                media: media, reader: reader, record: record, inode: number, from: offset,
                to: min(end, firstWhole * pageSize))
        }
        if end > endWhole * pageSize, endWhole >= firstWhole {
            try Self.zeroWithinPage(
                media: media, reader: reader, record: record, inode: number, from: endWhole * pageSize, to: end)
        }
    }

    /// The whole pages of a punch of `offset..<end` in a file of `size` bytes: a punch to the
    /// end of file takes the last partial page too.
    static func wholePages(offset: Int, end: Int, size: Int) -> (first: Int, end: Int) {
        let first = (offset + pageSize - 1) / pageSize
        let last = end == size ? (end + pageSize - 1) / pageSize : end / pageSize
        return (first, last)
    }
}
