/// Where a file page's block pointer lives: one of the inode's 12 direct pointers, an entry of
/// the single-indirect block, or an entry of a block that the double-indirect block points to.
/// The analogue of ext2's `ext2_block_to_path`.
enum BlockMapPath: Equatable {
    case direct(Int)
    case indirect(Int)
    case doubleIndirect(Int, Int)

    static let indirectFirstPage = InodeRecord.directCount
    static let doubleIndirectFirstPage = indirectFirstPage + InodeRecord.pointersPerBlock

    /// - Returns: nil when `page` lies beyond what the map can reach (about 4 GiB).
    init?(page: Int) {
        // (Comparisons, not `case ..<n` patterns: those ran as generic `contains` calls, on
        // every fault and punch.)
        let perBlock = InodeRecord.pointersPerBlock
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

extension Geometry {
    /// Byte offset of entry `index` of block-map block `block`.
    @inlinable
    func entryOffset(_ block: UInt32, _ index: Int) -> Int { Int(block) * Geometry.blockSize + index * 4 }

    func inodeOffset(_ number: Int) -> Int { self.inodeTableOffset + number * Geometry.inodeSize }
}

/// Reads a file's block map straight from the mapping: the read side (lookups, reads, fsck).
struct BlockMapReader {
    let base: UnsafeRawPointer
    let geometry: Geometry

    /// The block holding `page` of the file whose record is `inode`, or 0 for a hole.
    /// Pointers that do not name a data block read as holes (only a damaged image has them, and
    /// mount refuses those).
    func block(of inode: InodeRecord, page: Int) -> UInt32 {
        guard let path = BlockMapPath(page: page) else { return 0 }
        if case .direct(let index) = path {
            return self.valid(inode.pointer.load(fromByteOffset: InodeRecord.directPointerOffset(index), as: UInt32.self))
        }
        guard let slot = self.mapSlot(of: inode, path) else { return 0 }
        return self.valid(self.base.load(fromByteOffset: slot, as: UInt32.self))
    }

    /// Where the pointer of `page` lives in a block-map block (a byte offset in the mapping), or
    /// nil for a direct page (its pointer is in the inode) or a map block that does not exist.
    func mapSlot(of inode: InodeRecord, page: Int) -> Int? {
        BlockMapPath(page: page).flatMap { self.mapSlot(of: inode, $0) }
    }

    private func mapSlot(of inode: InodeRecord, _ path: BlockMapPath) -> Int? {
        let map: UInt32
        let index: Int
        switch path {
        case .direct:
            return nil
        case .indirect(let entry):
            map = self.valid(inode.pointer.load(fromByteOffset: InodeRecord.indirectOffset, as: UInt32.self))
            index = entry
        case .doubleIndirect(let outer, let inner):
            map = self.entry(inode.pointer.load(fromByteOffset: InodeRecord.doubleIndirectOffset, as: UInt32.self), outer)
            index = inner
        }
        return map == 0 ? nil : self.geometry.entryOffset(map, index)
    }

    /// The block the pointer at byte `slot` of the mapping names (0: a hole; see `valid`).
    func pointer(at slot: Int) -> UInt32 { self.valid(self.base.load(fromByteOffset: slot, as: UInt32.self)) }

    func entry(_ mapBlock: UInt32, _ index: Int) -> UInt32 {
        guard mapBlock != 0, self.geometry.isDataBlock(mapBlock) else { return 0 }
        return self.valid(self.base.load(fromByteOffset: self.geometry.entryOffset(mapBlock, index), as: UInt32.self))
    }

    /// `block` if it names a data block, else 0. Mount refuses images with bad pointers, but a
    /// running file system can still meet one: a device that DMAs into a block after it was freed
    /// and reused as a block map (policy `none`) writes its data over pointers. Such a pointer is
    /// a hole to every reader, so corruption never turns into a wild access; fsck reports it.
    @inline(__always)
    func valid(_ block: UInt32) -> UInt32 { self.geometry.isDataBlock(block) ? block : 0 }
}
