import CShims

/// CRC-32C (Castagnoli), the checksum of every daxlab metadata structure: the crc32 instruction
/// where the CPU has it (SSE4.2; about 8 bytes a cycle, so a log commit's checksums of a
/// 512-byte inode and its header cost tens of nanoseconds, not microseconds), else a table.
enum CRC32C {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 != 0 ? (value >> 1) ^ 0x82F6_3B78 : value >> 1 }
        return value
    }

    /// Whether `checksum` uses the instruction (checked once).
    static let usesInstruction = CShims_has_crc32c_instruction() == 1

    /// The checksum of `count` bytes at `start`, continuing from `seed` (the result of an earlier call).
    static func checksum(_ start: UnsafeRawPointer, count: Int, seed: UInt32 = 0) -> UInt32 {
        Self.usesInstruction
            ? ~CShims_crc32c_hardware(~seed, start, count) : Self.tableChecksum(start, count: count, seed: seed)
    }

    /// The same checksum from the table, byte by byte (CPUs without the instruction; tests
    /// compare the two).
    static func tableChecksum(_ start: UnsafeRawPointer, count: Int, seed: UInt32 = 0) -> UInt32 {
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
