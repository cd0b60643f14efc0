import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// mkfs.
extension FileSystem {
    public static let defaultImageSize = 256 << 20

    /// What `format` did.
    public struct FormatReport: Sendable {
        public var path: String
        public var size: Int
        public var created: Bool
        public var geometry: Geometry
    }

    /// Writes an empty daxlab file system to `path`: creates the file at `size` (default 256 MiB)
    /// when it does not exist, or formats an existing file or device-dax device in place.
    ///
    /// It refuses, changing nothing, when the target already holds a daxlab image (or its backup
    /// superblock), a signature libblkid recognizes, or any non-zero byte in its first or last
    /// MiB, unless `force`. A file's blocks are all allocated before anything is written (a full
    /// backing file system is a clear error, not a SIGBUS later). The old superblock is
    /// invalidated first and the new one written last, so a crash part-way leaves no image that
    /// mounts as valid.
    /// - Throws: `.pmem` (the path; `.noSpace` when the backing file system is full), `.notEmpty`,
    ///   `.inUse`, `.invalidArgument` (size).
    public static func format(
        path: String, size: Int? = nil, force: Bool = false, persistence: PersistenceStrategy? = nil
    ) throws(FSError) -> FormatReport {
        if let size { _ = try Geometry.forImage(size: size) }
        let mapping: PmemMapping
        do {
            // Sparse until the target is known to be ours to overwrite: a refused format must not
            // fill an existing sparse file's holes.
            mapping = try PmemMapping(
                path: path,
                options: MapOptions(
                    disposition: .openOrCreate, size: size ?? (Self.exists(path) ? nil : Self.defaultImageSize),
                    allocation: .sparse, persistence: persistence))
        } catch { throw FSError(error) }
        let geometry: Geometry
        do { geometry = try Geometry.forImage(size: mapping.length) } catch {
            if mapping.created { Glibc.unlink(path) }
            throw error
        }
        try Self.lockImage(mapping)
        if !mapping.created && !force {
            // Read through a view whose holes are zero pages: the holes are not allocated yet, and
            // reading one through the shared mapping would take a page from the file system.
            let view: PmemMapping
            do { view = try mapping.readOnlyView() } catch { throw FSError(error) }
            try Self.refuseData(view)
        }
        do { try mapping.allocateBackingStore() } catch {
            if mapping.created { Glibc.unlink(path) }
            throw FSError(error)
        }
        let media = Media(mapping: mapping)
        try Self.writeEmptyFileSystem(media: media, geometry: geometry)
        return FormatReport(path: path, size: mapping.length, created: mapping.created, geometry: geometry)
    }

    /// Refuses a target that holds anything: a daxlab image, a known signature, a non-zero byte.
    private static func refuseData(_ mapping: PmemMapping) throws(FSError) {
        let path = mapping.path
        let backup = Superblock.backupBlock(of: mapping) * pageSize
        if mapping.base.loadUnaligned(as: UInt64.self) == Superblock.magic {
            throw FSError(.notEmpty, "\(path): already holds a daxlab file system (use --force to overwrite it)")
        }
        if backup > 0, mapping.base.loadUnaligned(fromByteOffset: backup, as: UInt64.self) == Superblock.magic {
            throw FSError(
                .notEmpty,
                "\(path): holds a daxlab file system whose superblock is damaged but whose backup is intact "
                    + "(daxlab fsck --repair restores it; --force overwrites it)")
        }
        if let signature = mapping.foreignSignature() {
            throw FSError(.notEmpty, "\(path): holds a signature libblkid recognizes (\(signature)); use --force to overwrite it")
        }
        if let offset = mapping.firstNonZeroByte() {
            throw FSError(
                .notEmpty, "\(path): holds data (a non-zero byte at offset \(offset)); use --force to overwrite it")
        }
    }

    private static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    private static func writeEmptyFileSystem(media: Media, geometry: Geometry) throws(FSError) {
        let base = media.base
        base.storeBytes(of: 0, as: UInt64.self)  // no valid magic until the end
        try media.persist(0, 8)

        // Log slots, inode table and bitmap, all zero to start with.
        try media.zero(geometry.logOffset, geometry.dataOffset - geometry.logOffset)
        for number in 0..<geometry.inodeCount {
            let record = InodeRecord(base + geometry.inodeOffset(number))
            switch number {
            case FileSystem.rootInode: record.initialize(kind: .rootDirectory, name: "", now: FileSystem.now())
            case FileSystem.lostFoundInode: record.initialize(kind: .lostFound, name: "lost+found", now: FileSystem.now())
            default: break
            }
            record.sealChecksum()
        }
        // Metadata blocks (and the backup superblock) are allocated; data blocks free; bits past
        // the end stay zero.
        let bitmap = base + geometry.bitmapOffset
        for block in Array(0..<geometry.dataStart) + [geometry.backupSuperblock] {
            let word = bitmap + (block / 64) * 8
            word.storeBytes(of: word.load(as: UInt64.self) | 1 << UInt64(block % 64), as: UInt64.self)
        }
        try media.flush(geometry.logOffset, geometry.dataOffset - geometry.logOffset)
        media.barrier()

        var generator = SystemRandomNumberGenerator()
        let superblock = Superblock(
            geometry: geometry, uuid: (generator.next(), generator.next()), createdNanoseconds: FileSystem.now())
        // The backup first, the primary last: until the primary's magic is written nothing mounts.
        let backup = geometry.backupSuperblock * pageSize
        superblock.write(to: base + backup)
        try media.persist(backup, pageSize)
        superblock.write(to: base)
        try media.persist(0, pageSize)
    }
}
