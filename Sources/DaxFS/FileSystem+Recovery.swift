import Pmem
import DaxlabSupport

/// What mount finishes after a crash, before anything can see the files: the truncates, punches
/// and unlinks the crash interrupted (recorded as intents in their inodes), and lost+found.
extension FileSystem {
    /// Finishes every intent recorded in the inode table: a truncate or punch completes, an
    /// orphan (unlinked, replaced, or a temporary never published) is freed. Idempotent: a crash
    /// during it is finished by the next mount.
    /// - Returns: truncates and punches finished, and orphans freed.
    static func finishIntents(
        log: MetadataLog, allocator: BlockAllocator, geometry: Geometry
    ) throws(FSError) -> (operations: Int, orphans: Int) {
        let media = log.media
        let reader = BlockMapReader(base: media.base, geometry: geometry)
        var operations = 0
        var orphans = 0
        for number in FileSystem.firstUserInode..<geometry.inodeCount {
            let record = InodeRecord(media.base + geometry.inodeOffset(number))
            guard record.inUse, let intent = record.intent else { continue }
            let size = Int(record.size)
            let pages = (size + pageSize - 1) / pageSize
            switch intent {
            case .none:
                continue
            case .truncate(let target):
                let target = Int(target)
                let keep = (target + pageSize - 1) / pageSize
                if target % pageSize != 0 {
                    try Self.zeroWithinPage(
                        media: media, reader: reader, record: record, inode: number, from: target, to: keep * pageSize)
                }
                _ = try Self.removeBlocks(
                    log: log, allocator: allocator, inode: number, pages: keep..<max(keep, pages),
                    newSize: UInt64(target), intent: intent)
                operations += 1
            case .punch(let offset, let end):
                let (offset, end) = (Int(offset), min(Int(end), size))
                let (first, last) = Self.wholePages(offset: offset, end: end, size: size)
                if end > offset {
                    try Self.zeroEdges(
                        media: media, reader: reader, record: record, inode: number, offset: offset, end: end,
                        firstWhole: first, endWhole: last)
                }
                if last > first {
                    _ = try Self.removeBlocks(
                        log: log, allocator: allocator, inode: number, pages: first..<last, newSize: nil, intent: intent)
                }
                if record.intent != InodeRecord.Intent.none {
                    _ = try log.transaction { (tx) throws(FSError) in tx.inode(number).intent = InodeRecord.Intent.none }
                }
                operations += 1
            case .orphan:
                _ = try Self.removeBlocks(log: log, allocator: allocator, inode: number, pages: 0..<pages, newSize: 0)
                let (_, freed) = try log.transaction { (tx) throws(FSError) in
                    Self.stageReleaseReservation(tx, inode: number)
                    tx.inode(number).release()
                }
                allocator.release(freed)
                orphans += 1
            }
        }
        return (operations, orphans)
    }

    /// Frees every block of the lost+found inode: after a restart no device can still be writing
    /// into a sequestered block.
    static func reclaimLostFound(
        log: MetadataLog, allocator: BlockAllocator, geometry: Geometry
    ) throws(FSError) -> Int {
        let record = InodeRecord(log.media.base + geometry.inodeOffset(FileSystem.lostFoundInode))
        guard record.blocks > 0 || record.size > 0 else { return 0 }
        let pages = Int((record.size + UInt64(pageSize) - 1) / UInt64(pageSize))
        return try FileSystem.removeBlocks(
            log: log, allocator: allocator, inode: FileSystem.lostFoundInode, pages: 0..<pages, newSize: 0)
    }
}
