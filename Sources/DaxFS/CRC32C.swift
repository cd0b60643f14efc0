/// CRC-32C (Castagnoli), the checksum of every daxlab metadata structure. Table-driven; metadata
/// records are small (a 256-byte superblock, 512-byte inodes, log headers).
enum CRC32C {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 != 0 ? (value >> 1) ^ 0x82F6_3B78 : value >> 1 }
        return value
    }

    /// The checksum of `count` bytes at `start`, continuing from `seed` (the result of an earlier call).
    static func checksum(_ start: UnsafeRawPointer, count: Int, seed: UInt32 = 0) -> UInt32 {
        var crc = ~seed
        let bytes = start.assumingMemoryBound(to: UInt8.self)
        Self.table.withUnsafeBufferPointer { table in
            for index in 0..<count {
                crc = table[Int(UInt8(truncatingIfNeeded: crc) ^ bytes[index])] ^ (crc >> 8)
            }
        }
        return ~crc
    }

    /// The checksum of a structure whose own 4-byte checksum field, at `field`, counts as zero.
    static func checksum(_ start: UnsafeRawPointer, count: Int, skipping field: Int) -> UInt32 {
        var crc = Self.checksum(start, count: field)
        var zero: UInt32 = 0
        crc = withUnsafeBytes(of: &zero) { Self.checksum($0.baseAddress!, count: 4, seed: crc) }
        return Self.checksum(start + field + 4, count: count - field - 4, seed: crc)
    }
}
