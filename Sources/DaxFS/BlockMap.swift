import Pmem

/// Where a file page's block pointer lives: one of the inode's 12 direct pointers, an entry of
/// the single-indirect block, or an entry of a block that the double-indirect block points to.
/// The analogue of ext2's `ext2_block_to_path`.
enum BlockMapPath: Equatable {
    case direct(Int)
    case indirect(Int)
    case doubleIndirect(Int, Int)

    static let indirectFirstPage = InodeRecord.directCount
    static let doubleIndirectFirstPage = indirectFirstPage + MapEntry.perBlock

    /// The leaves of the double-indirect block (their indexes in it) that map a page of `pages`
    /// (empty when none does).
    static func leaves(overlapping pages: Range<Int>) -> Range<Int> {
        let perBlock = MapEntry.perBlock
        guard pages.upperBound > doubleIndirectFirstPage, !pages.isEmpty else { return 0..<0 }
        let first = max(0, pages.lowerBound - doubleIndirectFirstPage) / perBlock
        let end = min(perBlock, (pages.upperBound - 1 - doubleIndirectFirstPage) / perBlock + 1)
        return first < end ? first..<end : 0..<0
    }

    /// The first page past those whose pointers share the map block of `page`'s (a page past the
    /// direct ones): the end of the indirect block's pages, or of the page's leaf's.
    static func mapBlockEnd(_ page: Int) -> Int {
        guard page >= Self.doubleIndirectFirstPage else { return Self.doubleIndirectFirstPage }
        return page + MapEntry.perBlock - (page - Self.doubleIndirectFirstPage) % MapEntry.perBlock
    }

    /// - Returns: nil when `page` lies beyond what the map can reach (about 1 GiB).
    init?(page: Int) {
        // (Comparisons, not `case ..<n` patterns: those ran as generic `contains` calls, on
        // every fault and punch.)
        let perBlock = MapEntry.perBlock
        if page < 0 || page >= InodeRecord.maximumPages {
            return nil
        } else if page < Self.indirectFirstPage {
            self = .direct(page)
        } else if page < Self.doubleIndirectFirstPage {
            self = .indirect(page - Self.indirectFirstPage)
        } else {
            let index = page - Self.doubleIndirectFirstPage
            self = .doubleIndirect(index / perBlock, index % perBlock)
        }
    }
}

/// A block-map entry: 8 bytes, the block number in the low 32 bits and a check in the high 32:
/// the CRC-32C of the owning inode's number, the entry's position and the block. The position is
/// the file page the entry maps, or `leafTag | n` for the `n`-th leaf pointer of the
/// double-indirect block. Zero is a hole. An entry whose check fails (a flipped bit, a pointer
/// copied to another file's map or to another page, a device's data written over a map block)
/// is never taken for a block: readers see a hole and fsck reports it, correcting one flipped bit.
/// One aligned 8-byte store changes an entry, so a crash leaves it old or new, never torn.
enum MapEntry {
    static let size = 8
    /// Entries per block-map block.
    static let perBlock = pageSize / Self.size
    /// The position of a leaf pointer (in the double-indirect block) is `leafTag | index`.
    static let leafTag: UInt32 = 1 << 31

    @inline(__always)
    static func check(_ block: UInt32, inode: Int, position: UInt32) -> UInt32 {
        var words = (UInt32(truncatingIfNeeded: inode), position, block)
        return withUnsafeBytes(of: &words) { CRC32C.checksum($0.baseAddress!, count: 12) }
    }

    /// The entry naming `block` (0: the hole).
    @inline(__always)
    static func encode(_ block: UInt32, inode: Int, position: UInt32) -> UInt64 {
        block == 0 ? 0 : UInt64(block) | UInt64(Self.check(block, inode: inode, position: position)) << 32
    }

    /// The block `raw` names (0 for a hole), or nil when its check fails.
    @inline(__always)
    static func decode(_ raw: UInt64, inode: Int, position: UInt32) -> UInt32? {
        guard raw != 0 else { return 0 }
        let block = UInt32(truncatingIfNeeded: raw)
        return raw >> 32 == UInt64(Self.check(block, inode: inode, position: position)) ? block : nil
    }

    /// The one bit whose flip makes `raw` a valid entry (a hole included), if exactly one does.
    static func correctOneBit(_ raw: UInt64, inode: Int, position: UInt32) -> UInt64? {
        var found: UInt64?
        for bit in 0..<64 {
            let candidate = raw ^ (1 << UInt64(bit))
            guard Self.decode(candidate, inode: inode, position: position) != nil else { continue }
            if found != nil { return nil }
            found = candidate
        }
        return found
    }
}

/// Where a file page's pointer lives: in the inode record (a direct page: a 32-bit field the
/// record's checksum covers) or in a block-map block (a checked `MapEntry`).
enum PointerSlot: Equatable {
    /// Byte offset in the mapping of a 32-bit pointer field of an inode record.
    case record(Int)
    /// Byte offset in the mapping of an entry, and the entry's position.
    case entry(Int, position: UInt32)
}

extension Geometry {
    /// Byte offset of entry `index` of block-map block `block`.
    @inline(__always)
    func entryOffset(_ block: UInt32, _ index: Int) -> Int { Int(block) * pageSize + index * MapEntry.size }

    func inodeOffset(_ number: Int) -> Int { self.inodeTableOffset + number * Geometry.inodeSize }
}

/// Reads a file's block map straight from the mapping: the read side (lookups, reads, fsck).
struct BlockMapReader {
    let base: UnsafeRawPointer
    let geometry: Geometry

    /// The block holding `page` of inode `number`, whose record is `inode`, or 0 for a hole.
    /// Pointers that do not name a data block, and entries whose check fails, read as holes (only
    /// a damaged image has them, and mount refuses those).
    func block(of inode: InodeRecord, _ number: Int, page: Int) -> UInt32 {
        guard let path = BlockMapPath(page: page) else { return 0 }
        if case .direct(let index) = path {
            return self.valid(inode.pointer.load(fromByteOffset: InodeRecord.directPointerOffset(index), as: UInt32.self))
        }
        guard let slot = self.mapSlot(of: inode, number, path) else { return 0 }
        return self.pointer(at: slot, number, page: page)
    }

    /// Where the entry of `page` lives in a block-map block (a byte offset in the mapping), or
    /// nil for a direct page (its pointer is in the inode) or a map block that does not exist.
    func mapSlot(of inode: InodeRecord, _ number: Int, page: Int) -> Int? {
        BlockMapPath(page: page).flatMap { self.mapSlot(of: inode, number, $0) }
    }

    private func mapSlot(of inode: InodeRecord, _ number: Int, _ path: BlockMapPath) -> Int? {
        let map: UInt32
        let index: Int
        switch path {
        case .direct:
            return nil
        case .indirect(let entry):
            map = self.valid(inode.pointer.load(fromByteOffset: InodeRecord.indirectOffset, as: UInt32.self))
            index = entry
        case .doubleIndirect(let outer, let inner):
            let top = self.valid(inode.pointer.load(fromByteOffset: InodeRecord.doubleIndirectOffset, as: UInt32.self))
            map = self.entry(top, outer, number, position: MapEntry.leafTag | UInt32(outer))
            index = inner
        }
        return map == 0 ? nil : self.geometry.entryOffset(map, index)
    }

    /// The block the entry at byte `slot` of the mapping names for `page` of inode `number` (0: a
    /// hole, or an entry that fails its check; see `valid`).
    @inline(__always)
    func pointer(at slot: Int, _ number: Int, page: Int) -> UInt32 {
        let raw = self.base.load(fromByteOffset: slot, as: UInt64.self)
        return self.valid(MapEntry.decode(raw, inode: number, position: UInt32(page)) ?? 0)
    }

    /// The block entry `index` of map block `mapBlock` names, at `position` of inode `number`.
    func entry(_ mapBlock: UInt32, _ index: Int, _ number: Int, position: UInt32) -> UInt32 {
        guard mapBlock != 0, self.geometry.isDataBlock(mapBlock) else { return 0 }
        let raw = self.base.load(fromByteOffset: self.geometry.entryOffset(mapBlock, index), as: UInt64.self)
        return self.valid(MapEntry.decode(raw, inode: number, position: position) ?? 0)
    }

    /// `block` if it names a data block, else 0. Mount refuses images with bad pointers, but a
    /// running file system can still meet one: a device that DMAs into a block after it was freed
    /// and reused as a block map (policy `none`) writes its data over entries. Such an entry
    /// fails its check or names no data block, and is a hole to every reader, so corruption never
    /// turns into a wild access; fsck reports it.
    @inline(__always)
    func valid(_ block: UInt32) -> UInt32 { self.geometry.isDataBlock(block) ? block : 0 }
}
