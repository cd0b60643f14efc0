import Pmem

/// What an unmounted image holds, read without writing anything: for `daxlab info`.
public struct ImageSummary: Sendable, Codable, Equatable {
    public var blockSize: Int
    public var blocks: Int
    public var dataStart: Int
    public var dataBlocks: Int
    public var freeDataBlocks: Int
    public var inodes: Int
    public var files: Int
    public var logSlots: Int
    /// `clean`, or `mounted` (in use, or left so by a crash).
    public var state: String
    public var mounts: Int
    public var uuid: String
    /// Committed log transactions a mount would replay.
    public var pendingLogTransactions: Int

    /// Reads the superblock, the log headers, the bitmap and the inode table of `mapping`.
    /// - Throws: `.notAnImage` without a daxlab superblock, `.corrupt` when it fails validation
    ///   (or is damaged while its backup is intact).
    public static func read(from mapping: PmemMapping) throws(FSError) -> ImageSummary {
        let (superblock, state, mounts) = try Superblock.readPrimary(from: mapping)
        let geometry = superblock.geometry
        let media = Media(mapping: mapping)
        let recovery = try MetadataLog.recover(media: media, geometry: geometry, apply: false)
        let bitmap = Bitmap(base: mapping.base, geometry: geometry)
        var free = 0
        for block in geometry.dataStart..<geometry.backupSuperblock where !bitmap.isAllocated(UInt32(block)) { free += 1 }
        var files = 0
        for number in FileSystem.firstUserInode..<geometry.inodeCount
        where InodeRecord(mapping.base + geometry.inodeOffset(number)).inUse {
            files += 1
        }
        let uuid = String(superblock.uuid.0, radix: 16) + String(superblock.uuid.1, radix: 16)
        return ImageSummary(
            blockSize: pageSize, blocks: geometry.blockCount, dataStart: geometry.dataStart,
            dataBlocks: geometry.dataBlocks, freeDataBlocks: free, inodes: geometry.inodeCount, files: files,
            logSlots: geometry.logSlotCount, state: state == .clean ? "clean" : state == .mounted ? "mounted" : "invalid", mounts: Int(mounts),
            uuid: uuid, pendingLogTransactions: recovery.replayed)
    }
}
