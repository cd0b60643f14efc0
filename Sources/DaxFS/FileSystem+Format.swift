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
    /// It refuses, changing nothing, when the target already holds a daxlab image or anything
    /// non-zero in its first block, unless `force`. The old superblock is invalidated first and
    /// the new one written last, so a crash part-way leaves no image that mounts as valid.
    /// - Throws: `.pmem` (the path), `.notEmpty`, `.inUse`, `.invalidArgument` (size).
    public static func format(
        path: String, size: Int? = nil, force: Bool = false, persistence: PersistenceStrategy? = nil
    ) throws(FSError) -> FormatReport {
        if let size { _ = try Geometry.forImage(size: size) }
        let mapping: PmemMapping
        do {
            mapping = try PmemMapping(
                path: path,
                options: MapOptions(
                    disposition: .openOrCreate, size: size ?? (Self.exists(path) ? nil : Self.defaultImageSize),
                    persistence: persistence))
        } catch { throw FSError(error) }
        let geometry: Geometry
        do { geometry = try Geometry.forImage(size: mapping.length) } catch {
            if mapping.created { Glibc.unlink(path) }
            throw error
        }
        try Self.lockImage(mapping)
        if !mapping.created && !force {
            let first = UnsafeRawBufferPointer(start: mapping.base, count: Geometry.blockSize)
            if first.loadUnaligned(as: UInt64.self) == Superblock.magic {
                throw FSError(.notEmpty, "\(path): already holds a daxlab file system (use --force to overwrite)")
            }
            if first.contains(where: { $0 != 0 }) {
                throw FSError(.notEmpty, "\(path): first block is not empty (use --force to overwrite)")
            }
        }
        let media = Media(mapping: mapping)
        try Self.writeEmptyFileSystem(media: media, geometry: geometry)
        return FormatReport(path: path, size: mapping.length, created: mapping.created, geometry: geometry)
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
        // Metadata blocks are allocated; data blocks free; bits past the end stay zero.
        let bitmap = base + geometry.bitmapOffset
        for block in 0..<geometry.dataStart {
            let word = bitmap + (block / 64) * 8
            word.storeBytes(of: word.load(as: UInt64.self) | 1 << UInt64(block % 64), as: UInt64.self)
        }
        try media.flush(geometry.logOffset, geometry.dataOffset - geometry.logOffset)
        media.barrier()

        var generator = SystemRandomNumberGenerator()
        let superblock = Superblock(
            geometry: geometry, uuid: (generator.next(), generator.next()), createdNanoseconds: FileSystem.now())
        superblock.write(to: base)
        try media.persist(0, Geometry.blockSize)
    }
}
