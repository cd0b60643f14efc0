import Pmem

/// Block 0: what the image is and where its structures are. The first 256 bytes are written once
/// by mkfs and checksummed; the mount state is one 8-byte word after them, updated with a single
/// atomic store so a crash can never tear it. The image's last block holds a copy (the backup),
/// from which fsck --repair restores a damaged block 0. See docs/FORMAT.md.
struct Superblock: Sendable, Equatable {
    static let magic: UInt64 = 0x5346_4241_4C58_4144  // "DAXLABFS" little-endian
    /// Version 3: block-map entries of 8 bytes, each with its check. (Version 2 added the backup
    /// superblock in the last block, intents in the inodes, names as bytes.)
    static let version: UInt32 = 3
    static let checksummedLength = 256
    static let checksumOffset = 252
    static let stateOffset = 256

    enum MountState: UInt32 {
        case clean = 1
        case mounted = 2
    }

    var geometry: Geometry
    var uuid: (UInt64, UInt64)
    var createdNanoseconds: UInt64

    static func == (lhs: Superblock, rhs: Superblock) -> Bool {
        lhs.geometry == rhs.geometry && lhs.uuid == rhs.uuid && lhs.createdNanoseconds == rhs.createdNanoseconds
    }

    /// Writes the checksummed part to `base` (the image's first byte) and the state word `clean`.
    func write(to base: UnsafeMutableRawPointer) {
        let g = self.geometry
        base.initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
        base.storeBytes(of: Self.magic, toByteOffset: 0, as: UInt64.self)
        base.storeBytes(of: Self.version, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: UInt32(pageSize), toByteOffset: 12, as: UInt32.self)
        base.storeBytes(of: UInt64(g.blockCount), toByteOffset: 16, as: UInt64.self)
        base.storeBytes(of: UInt32(g.inodeCount), toByteOffset: 24, as: UInt32.self)
        base.storeBytes(of: UInt32(g.logSlotCount), toByteOffset: 28, as: UInt32.self)
        base.storeBytes(of: UInt32(g.logSlotBlocks), toByteOffset: 32, as: UInt32.self)
        base.storeBytes(of: UInt64(g.logStart), toByteOffset: 40, as: UInt64.self)
        base.storeBytes(of: UInt64(g.inodeTableStart), toByteOffset: 48, as: UInt64.self)
        base.storeBytes(of: UInt64(g.bitmapStart), toByteOffset: 56, as: UInt64.self)
        base.storeBytes(of: UInt64(g.dataStart), toByteOffset: 64, as: UInt64.self)
        base.storeBytes(of: self.uuid.0, toByteOffset: 72, as: UInt64.self)
        base.storeBytes(of: self.uuid.1, toByteOffset: 80, as: UInt64.self)
        base.storeBytes(of: self.createdNanoseconds, toByteOffset: 88, as: UInt64.self)
        let sum = CRC32C.checksum(base, count: Self.checksummedLength, skipping: Self.checksumOffset)
        base.storeBytes(of: sum, toByteOffset: Self.checksumOffset, as: UInt32.self)
        base.storeBytes(of: Self.stateWord(.clean, mounts: 0), toByteOffset: Self.stateOffset, as: UInt64.self)
    }

    static func stateWord(_ state: MountState, mounts: UInt32) -> UInt64 {
        UInt64(state.rawValue) | UInt64(mounts) << 32
    }

    /// The block of `mapping` that holds the backup: its last.
    static func backupBlock(of mapping: PmemMapping) -> Int { mapping.length / pageSize - 1 }

    /// What `read` appends when block 0 holds no daxlab magic.
    static let mkfsHint = "; run daxlab mkfs"

    /// `message` without `mkfsHint`.
    static func withoutMkfsHint(_ message: String) -> String {
        message.hasSuffix(Self.mkfsHint) ? String(message.dropLast(Self.mkfsHint.count)) : message
    }

    /// Reads the superblock in block 0, as mount and info do. When it is damaged but the backup
    /// in the last block is intact, the error says so and points to `daxlab fsck --repair`
    /// (which restores it), not to mkfs.
    static func readPrimary(from mapping: PmemMapping) throws(FSError) -> (Superblock, MountState?, UInt32) {
        do { return try Self.read(from: mapping) } catch {
            let backup = Self.backupBlock(of: mapping)
            guard backup > 0, (try? Self.read(from: mapping, block: backup)) != nil else { throw error }
            var detail = "bad magic"
            if error.code != .notAnImage {
                detail = error.message
                for prefix in ["\(mapping.path): superblock: ", "\(mapping.path): "] where detail.hasPrefix(prefix) {
                    detail = String(detail.dropFirst(prefix.count))
                    break
                }
            }
            throw FSError(
                .corrupt,
                "\(mapping.path): the superblock is damaged (\(detail)) but its backup in block \(backup) is intact; "
                    + "run daxlab fsck --repair")
        }
    }

    /// Reads and validates the superblock at `block` of a mapping (0, or the backup). Writes nothing.
    /// - Returns: the superblock, its mount state (nil when the state word is not a valid one: the
    ///   rest is intact and fsck --repair rewrites it) and the mount count.
    /// - Throws: `.notAnImage` without the magic; `.notSupported` for another format version;
    ///   `.corrupt` for a bad checksum, flags, geometry, or an image whose size differs from the
    ///   superblock's.
    static func read(from mapping: PmemMapping, block: Int = 0) throws(FSError) -> (Superblock, MountState?, UInt32) {
        let where_ = block == 0 ? "superblock" : "backup superblock (block \(block))"
        guard block >= 0, (block + 1) * pageSize <= mapping.length else {
            throw FSError(.notAnImage, "\(mapping.path): too small to hold a daxlab file system")
        }
        let base = UnsafeRawPointer(mapping.base + block * pageSize)
        guard base.loadUnaligned(as: UInt64.self) == Self.magic else {
            throw FSError(
                .notAnImage,
                "\(mapping.path): no daxlab file system (bad magic in the \(where_))" + (block == 0 ? Self.mkfsHint : ""))
        }
        func corrupt(_ what: String) -> FSError { FSError(.corrupt, "\(mapping.path): \(where_): \(what)") }
        let stored = base.loadUnaligned(fromByteOffset: Self.checksumOffset, as: UInt32.self)
        guard stored == CRC32C.checksum(base, count: Self.checksummedLength, skipping: Self.checksumOffset) else {
            throw corrupt("checksum mismatch")
        }
        let version = base.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
        guard version == Self.version else {
            // Not damage: nothing to repair, and nothing is written.
            throw FSError(
                .notSupported,
                version < Self.version
                    ? "\(mapping.path): format version \(version) is from an older daxlab (this one reads version "
                        + "\(Self.version)); copy its files out with the daxlab that made it, then re-create it with daxlab mkfs"
                    : "\(mapping.path): format version \(version) is from a newer daxlab (this one reads version \(Self.version))")
        }
        let flags = base.loadUnaligned(fromByteOffset: 36, as: UInt32.self)
        guard flags == 0 else { throw corrupt("unknown flags 0x\(String(flags, radix: 16))") }
        guard base.loadUnaligned(fromByteOffset: 12, as: UInt32.self) == UInt32(pageSize) else {
            throw corrupt("block size is not \(pageSize)")
        }
        let geometry = Geometry(
            blockCount: Int(base.loadUnaligned(fromByteOffset: 16, as: UInt64.self) & 0xFFFF_FFFF_FFFF),
            inodeCount: Int(base.loadUnaligned(fromByteOffset: 24, as: UInt32.self)),
            logSlotCount: Int(base.loadUnaligned(fromByteOffset: 28, as: UInt32.self)),
            logSlotBlocks: Int(base.loadUnaligned(fromByteOffset: 32, as: UInt32.self)))
        guard geometry.isPlausible,
            base.loadUnaligned(fromByteOffset: 40, as: UInt64.self) == UInt64(geometry.logStart),
            base.loadUnaligned(fromByteOffset: 48, as: UInt64.self) == UInt64(geometry.inodeTableStart),
            base.loadUnaligned(fromByteOffset: 56, as: UInt64.self) == UInt64(geometry.bitmapStart),
            base.loadUnaligned(fromByteOffset: 64, as: UInt64.self) == UInt64(geometry.dataStart)
        else { throw corrupt("inconsistent geometry") }
        guard geometry.blockCount * pageSize == mapping.length else {
            throw FSError(
                .corrupt,
                "\(mapping.path): image is \(mapping.length) bytes but its superblock says "
                    + "\(geometry.blockCount * pageSize) (cut short or resized?)")
        }
        let word = base.loadUnaligned(fromByteOffset: Self.stateOffset, as: UInt64.self)
        let state = MountState(rawValue: UInt32(truncatingIfNeeded: word))
        let superblock = Superblock(
            geometry: geometry,
            uuid: (base.loadUnaligned(fromByteOffset: 72, as: UInt64.self),
                   base.loadUnaligned(fromByteOffset: 80, as: UInt64.self)),
            createdNanoseconds: base.loadUnaligned(fromByteOffset: 88, as: UInt64.self))
        return (superblock, state, UInt32(word >> 32))
    }
}
