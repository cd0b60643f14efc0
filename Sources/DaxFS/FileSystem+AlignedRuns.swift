import Pmem

/// Aligned runs for files that grow sequentially, and the question a huge fault asks.
///
/// A 2 MiB range of a file (pages `512k ..< 512k + 512`) is *aligned* when page `512k + i` maps
/// block `first + i` for every `i`, with `first` a multiple of 512: the range is one 2 MiB-aligned
/// extent of the image, which the DAX layer can map with one huge mapping. The allocator lends
/// such runs (`BlockAllocator+Runs.swift`): a file that allocates the first page of a range,
/// with the whole range still holes, claims a free run when the allocation looks like sequential
/// growth (it allocates at least `streamPages` pages of the range at once, or the file's size
/// already covers the whole range); after that each page of the range whose previous page maps
/// the block before it takes the matching block of the run. Writes, fallocate and write faults
/// (through the reservation: `takeReservation`) all take blocks this way; where no run is free
/// or the file has none for the range, blocks come from the stacks as before. Nothing new goes
/// to the media: a claim is volatile, and a crash leaves its unused blocks free in the bitmap.
extension FileSystem {
    /// Holes from the start of a range one write or fallocate must allocate at once for the file
    /// to claim a run there when its size does not cover the range (ext4's
    /// `mb_stream_req` default: smaller requests of small files do not get preallocation).
    static let streamPages = 16

    /// Blocks for `holes` (ascending pages of inode `number`, whose record is `record`), which a
    /// write or fallocate ending at byte `end` is about to map: from the file's aligned runs
    /// where they serve, the rest from the allocator. Nothing is mapped or reported yet.
    /// - Returns: one block per hole, in order; nil (taking none) when too few are free.
    func blocksForHoles(_ number: Int, record: InodeRecord, holes: [Int], end: Int) -> [UInt32]? {
        guard !holes.isEmpty else { return [] }
        let runPages = Geometry.runBlocks
        var blocks = [UInt32](repeating: 0, count: holes.count)
        var served: [UInt32] = []
        var index = 0
        while index < holes.count {
            // The stretch of consecutive holes from `index` within one range.
            let page = holes[index]
            let rangeEnd = (page / runPages + 1) * runPages
            var stretch = 1
            while index + stretch < holes.count, holes[index + stretch] == page + stretch, page + stretch < rangeEnd {
                stretch += 1
            }
            let previous = index > 0 && holes[index - 1] == page - 1 ? blocks[index - 1] : nil
            if let block = self.runBlock(
                number, record: record, page: page, previous: previous, stretch: stretch,
                grownSize: max(Int(record.size), end))
            {
                let taken = self.allocator.takeClaimed(block, count: stretch, owner: number)
                for offset in 0..<taken {
                    blocks[index + offset] = block + UInt32(offset)
                    served.append(block + UInt32(offset))
                }
            }
            index += stretch
        }
        guard served.count < holes.count else { return blocks }
        guard let rest = self.allocator.allocate(holes.count - served.count, hint: BlockAllocator.currentCPUHint) else {
            self.allocator.release(served, report: false, aborted: true)
            return nil
        }
        var next = rest.makeIterator()
        for index in blocks.indices where blocks[index] == 0 { blocks[index] = next.next()! }
        return blocks
    }

    /// Blocks for inode `number`'s reservation, taken when its next write fault is at `page` (a
    /// hole whose pointer lives in a map block): at most `count` blocks of the file's run for
    /// the page's range, the ones matching `page` and the pages after it, up to the range's end
    /// and the end of the page's map block (past it, the next fault takes the transaction path,
    /// which takes its block from the run itself). The faults that follow in page order then map
    /// each page to its block of the run. The caller holds the file's lock and its stripe's.
    /// - Returns: the blocks, lowest first; nil when the file has no run for the page.
    func reservationFromRun(_ number: Int, page: Int, count: Int) -> [UInt32]? {
        let record = self.record(number)
        let runPages = Geometry.runBlocks
        let mapEnd = BlockMapPath.mapBlockEnd(page)
        let window = min(count, (page / runPages + 1) * runPages - page, mapEnd - page)
        guard page >= BlockMapPath.indirectFirstPage, window > 0,
            let block = self.runBlock(
                number, record: record, page: page, previous: nil, stretch: 1, grownSize: Int(record.size))
        else { return nil }
        let taken = self.allocator.takeClaimed(block, count: window, owner: number)
        return taken == 0 ? nil : (0..<taken).map { block + UInt32($0) }
    }

    /// The block of an aligned run that would hold hole `page` of inode `number`: at the first
    /// page of a range, the first block of a run claimed now (when the range is all holes and
    /// the allocation looks sequential: `stretch` holes at once, or a file of `grownSize` bytes
    /// covering the range); past it, the block after the previous page's when that one sits at
    /// its own offset in a run. The run may not be the file's (the caller's take then fails).
    /// - Parameter previous: the previous page's block, when the caller is about to map it.
    private func runBlock(
        _ number: Int, record: InodeRecord, page: Int, previous: UInt32?, stretch: Int, grownSize: Int
    ) -> UInt32? {
        let runPages = Geometry.runBlocks
        let offset = page % runPages
        guard offset == 0 else {
            let before = previous ?? self.reader.block(of: record, number, page: page - 1)
            return before != 0 && Int(before) % runPages == offset - 1 ? before + 1 : nil
        }
        guard self.allocator.hasWholeRun, stretch >= Self.streamPages || grownSize >= (page + runPages) * pageSize,
            self.rangeIsHoles(number, record: record, first: page)
        else { return nil }
        return self.allocator.claimRun(owner: number, hint: BlockAllocator.currentCPUHint)
    }

    /// A huge write fault (`dax_iomap_pmd_fault` allocating a 2 MiB extent): allocates every
    /// page of the 2 MiB range of `file` holding `page` at once, zeroed and durable, from one
    /// aligned run, when the range lies within the file, is all holes and a whole run is free.
    /// The caller holds the file's invalidate lock shared, as for `blockForFault`.
    /// - Returns: the run's first block; nil when the range cannot be had so (nothing allocated),
    ///   or when another fault filled part of it first.
    /// - Throws: `.noSpace`, `.notFound` (the file is gone), `.io`.
    package func allocateAlignedRun(_ file: FileID, page: Int) throws(FSError) -> UInt32? {
        let record = try self.checkedRecord(file)
        let runPages = Geometry.runBlocks
        let first = page / runPages * runPages
        let number = file.inode
        // The cheap refusals first: the whole range inside the file, a run free, the faulting
        // page and both ends of the range holes.
        guard first + runPages <= InodeRecord.maximumPages, Int(record.size) >= (first + runPages) * pageSize,
            self.allocator.hasWholeRun,
            [first, page, first + runPages - 1].allSatisfy({ self.reader.block(of: record, number, page: $0) == 0 })
        else { return nil }
        return try self.withStripe(number) { (stripe) throws(FSError) -> UInt32? in
            guard self.rangeIsHoles(number, record: record, first: first) else { return nil }
            stripe.allocations += 1
            var position = first * pageSize
            let end = (first + runPages) * pageSize
            while position < end {
                let chunkEnd = min(end, (position / pageSize + Self.pagesPerTransaction) * pageSize)
                try self.writeChunk(number, from: position, to: chunkEnd, fill: nil)
                position = chunkEnd
            }
            return self.alignedRun(file, page: page)
        }
    }

    /// Whether pages `first ..< first + Geometry.runBlocks` of inode `number` are all holes.
    private func rangeIsHoles(_ number: Int, record: InodeRecord, first: Int) -> Bool {
        let pages = Int((record.size + UInt64(pageSize) - 1) / UInt64(pageSize))
        guard pages > first else { return true }  // (no block is mapped past the end of file)
        for page in first..<min(pages, first + Geometry.runBlocks) where self.reader.block(of: record, number, page: page) != 0 {
            return false
        }
        return true
    }
}
