import Foundation
import Pmem
import Testing
import TestSupport

@Suite("Persistence paths")
struct PersistenceTests {
    /// Writes through every persistence primitive with the given strategy, unmaps, reopens and
    /// checks every byte.
    @Test("every primitive lands its bytes, on both the pmem and the msync path",
          arguments: [PersistenceStrategy.pmem, .msync])
    func primitivesLand(strategy: PersistenceStrategy) throws {
        try withTemporaryPath { path in
            let size = 1 << 20
            let payload = randomBytes(count: 64 << 10, seed: 11)
            do {
                let mapping = try PmemMapping(
                    path: path, options: MapOptions(disposition: .createNew, size: size, persistence: strategy))
                #expect(mapping.persistence == strategy)
                try payload.withUnsafeBytes { bytes in
                    // A plain persisted copy, a non-temporal copy, and a batch of no-drain copies.
                    try mapping.copy(to: 0, from: bytes.baseAddress!, count: bytes.count)
                    try mapping.copy(to: 65536, from: bytes.baseAddress!, count: bytes.count, flags: .nonTemporal)
                    for chunk in stride(from: 0, to: bytes.count, by: 4096) {
                        try mapping.copy(
                            to: 131072 + chunk, from: bytes.baseAddress! + chunk, count: 4096, flags: .noDrain)
                    }
                    mapping.drain()
                    // Stores, then flush + drain of the range.
                    mapping.pointer(at: 196608).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
                    try mapping.flush(offset: 196608, length: bytes.count)
                    mapping.drain()
                }
                try mapping.fill(offset: 262144, byte: 0x5A, count: 8192)
                mapping.pointer(at: 270336).storeBytes(of: 0xDEAD_BEEF as UInt32, as: UInt32.self)
                try mapping.persist(offset: 270336, length: 4)
                try mapping.deepPersist(offset: 0, length: 274432)
            }
            let reopened = try PmemMapping(path: path)
            func bytes(_ offset: Int, _ count: Int) -> [UInt8] {
                Array(UnsafeRawBufferPointer(start: reopened.pointer(at: offset), count: count))
            }
            for offset in [0, 65536, 131072, 196608] {
                #expect(bytes(offset, payload.count) == payload, "payload at \(offset)")
            }
            #expect(bytes(262144, 8192) == [UInt8](repeating: 0x5A, count: 8192))
            #expect(reopened.pointer(at: 270336).load(as: UInt32.self) == 0xDEAD_BEEF)
        }
    }

    @Test("copy flags are libpmem's PMEM_F_MEM_* bits")
    func copyFlagBits() {
        #expect(CopyFlags.noDrain.rawValue == 1 << 0)
        #expect(CopyFlags.nonTemporal.rawValue == 1 << 1)
        #expect(CopyFlags.noFlush.rawValue == 1 << 5)
    }
}
