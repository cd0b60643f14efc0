@testable import DaxFS
import Testing

/// The metadata checksum: the crc32 instruction and the table give the same CRC-32C.
@Suite("CRC-32C")
struct CRC32CTests {
    @Test("the check value of \"123456789\" is 0xE3069283 (RFC 3720), in both forms")
    func checkValue() {
        let bytes = Array("123456789".utf8)
        bytes.withUnsafeBytes { buffer in
            #expect(CRC32C.tableChecksum(buffer.baseAddress!, count: buffer.count) == 0xE306_9283)
            #expect(CRC32C.checksum(buffer.baseAddress!, count: buffer.count) == 0xE306_9283)
        }
    }

    @Test("instruction and table agree at every length and alignment, and when continued from a seed")
    func agreement() {
        var generator = 0x9E37_79B9_7F4A_7C15 as UInt64
        let bytes = (0..<700).map { _ in
            generator = generator &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: generator >> 33)
        }
        bytes.withUnsafeBytes { buffer in
            let base = buffer.baseAddress!
            for start in 0..<9 {
                for count in [0, 1, 3, 7, 8, 9, 15, 16, 63, 64, 512, 600] {
                    let expected = CRC32C.tableChecksum(base + start, count: count)
                    #expect(CRC32C.checksum(base + start, count: count) == expected, "start \(start), count \(count)")
                    let split = count / 3
                    let continued = CRC32C.checksum(
                        base + start + split, count: count - split, seed: CRC32C.checksum(base + start, count: split))
                    #expect(continued == expected, "continued at \(split), start \(start), count \(count)")
                }
            }
        }
    }

    @Test("on x86-64 the instruction is used (this machine has SSE4.2)", .enabled(if: Self.isX86))
    func instructionIsUsed() {
        #expect(CRC32C.usesInstruction)
    }

    static var isX86: Bool {
        #if arch(x86_64)
        true
        #else
        false
        #endif
    }
}
