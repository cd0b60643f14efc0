import DAX
import DaxFS
import Foundation
@_spi(TestHooks) import Pmem
import Testing
import TestSupport

/// A device write through a pin reports a persist it could not make: the bytes land, but the
/// caller hears that they may not survive a crash, instead of being told the write succeeded.
@Suite("A device write's persist", .serialized, .timeLimit(.minutes(1)))
struct PinWriteTests {
    @Test("write(at:) and writeAll throw .io when the mapping's msync fails, after the bytes landed and the fence's callback ran")
    func persistFailureReported() throws {
        #if DAXLAB_TEST_HOOKS
        try withTemporaryPath("pin-write") { path in
            _ = try FileSystem.format(path: path, size: 16 << 20)
            let fs = try FileSystem.mount(path: path, persistence: .msync)
            let dax = try DAXFileSystem(fs: fs, policy: .wait)
            let file = try fs.create("buffer")
            try fs.truncate(file, size: 2 * 4096)
            // Held in a slot a `defer` unpins: a failure below is reported, not a process abort.
            let slot = HandleSlot(try dax.open(file).pin(0..<2, write: true))
            defer { slot.unpin() }
            try slot.withHandle { (pins: borrowing PinHandle) throws in
                let data = [UInt8](repeating: 0x5A, count: 2 * 4096)
                #expect(try data.withUnsafeBytes { try pins.write(at: 0, from: $0.baseAddress!, count: 4096) })

                fs.mapping.msyncFailsForTests.store(true, ordering: .relaxed)
                defer { fs.mapping.msyncFailsForTests.store(false, ordering: .relaxed) }
                // (do/catch, not #expect(throws:): its closure cannot capture the ~Copyable handle)
                let fenced = Box<UInt32>(0)
                do {
                    _ = try data.withUnsafeBytes { bytes in
                        try pins.write(at: 1, from: bytes.baseAddress!, count: 4096) { fenced.value = $0 }
                    }
                    Issue.record("a write whose msync failed reported success")
                } catch {
                    #expect((error as? FSError)?.code == .io, "\(error)")
                }
                #expect(fenced.value == pins.block(at: 1), "the oracle's callback runs for a write that landed")
                #expect(try fs.read(file, offset: 4096, count: 4096) == Array(data[4096...]), "the bytes landed")
                do {
                    _ = try data.withUnsafeBytes { bytes in try pins.writeAll(from: bytes.baseAddress!) }
                    Issue.record("a transfer whose msync failed reported success")
                } catch {
                    #expect((error as? FSError)?.code == .io, "\(error)")
                }

                fs.mapping.msyncFailsForTests.store(false, ordering: .relaxed)
                #expect(try data.withUnsafeBytes { try pins.writeAll(from: $0.baseAddress!) })
            }
            slot.unpin()
            try fs.unmount()
        }
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }
}
