@testable import DaxFS
import Pmem
import Testing
import TestSupport

/// What a committed log slot may touch: the inode table, the bitmap and the data area, which
/// ends before the backup superblock in the image's last block.
@Suite("Log records and where they may write")
struct LogValidationTests {
    /// One `bytes` record of 8 bytes at `offset`, as a slot holds it.
    private func validates(offset: Int, geometry: Geometry) -> Bool {
        var record = [UInt8](repeating: 0, count: LogRecord.headerSize + 8)
        record.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: LogRecord.Kind.bytes.rawValue, as: UInt16.self)
            raw.storeBytes(of: 8, toByteOffset: 4, as: UInt32.self)
            raw.storeBytes(of: UInt64(offset), toByteOffset: 8, as: UInt64.self)
        }
        return record.withUnsafeBytes {
            MetadataLog.validate(records: $0.baseAddress!, bytes: $0.count, count: 1, geometry: geometry)
        }
    }

    @Test("a record in the last data block is valid; one in the backup superblock, or past it, is damage")
    func backupSuperblockIsNotData() throws {
        try withFileSystem(size: 4 << 20) { fs, _ in
            let geometry = fs.geometry
            let backup = geometry.backupSuperblock * pageSize
            #expect(self.validates(offset: backup - 8, geometry: geometry))
            #expect(!self.validates(offset: backup, geometry: geometry), "the backup superblock")
            #expect(!self.validates(offset: backup - 4, geometry: geometry), "a record that runs into it")
            #expect(!self.validates(offset: geometry.inodeTableOffset - 8, geometry: geometry), "before the inode table")
        }
    }
}
