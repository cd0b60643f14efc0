import CShims
import DaxFS
import Foundation
import Testing
import TestSupport

/// Whether process_vm_readv works in this process (a seccomp profile may refuse it).
let processVMReadvWorks: Bool = {
    var source: UInt64 = 0x1234
    var destination: UInt64 = 0
    return CShims_process_vm_readv_self(&destination, &source, 8) == 8 && destination == 0x1234
}()

/// Writes from memory registered as fault-served whose faults the kernel's own accesses serve
/// (as userfaultfd's are): the write copies the source with process_vm_readv, outside the lock,
/// a bounce chunk at a time. The memory here is ordinary (an anonymous mapping), registered in
/// the process's registry for the length of each test.
@Suite("Writes copied through the bounce buffer", .serialized, .timeLimit(.minutes(1)))
struct BounceBufferWriteTests {
    /// An anonymous read-write mapping of `length` bytes, registered with `kernelFaults` for the
    /// length of `body`.
    static func withRegistered<Result>(
        _ length: Int, kernelFaults: Bool, _ body: (UnsafeMutableRawPointer) throws -> Result
    ) throws -> Result {
        let memory = try #require(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        try #require(memory != MAP_FAILED)
        defer { munmap(memory, length) }
        let token = FaultServedMemory.register(base: memory, length: length, kernelFaults: kernelFaults)
        defer { FaultServedMemory.unregister(token) }
        return try body(memory)
    }

    @Test("a write of several chunks from registered memory arrives whole, by either copy", arguments: [true, false])
    func severalChunks(kernelFaults: Bool) throws {
        let length = 2 * FileSystem.bounceChunk + 3 * 4096 + 100
        try Self.withRegistered(length, kernelFaults: kernelFaults) { memory in
            let bytes = randomBytes(count: length, seed: kernelFaults ? 1 : 2)
            bytes.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: length) }
            try withFileSystem { fs, _ in
                let id = try fs.create("f")
                try fs.write(id, offset: 100, bytes: UnsafeRawBufferPointer(start: memory, count: length))
                #expect(try fs.read(id, offset: 100, count: length) == bytes)
                #expect(try fs.stat(id).size == 100 + length)
            }
        }
    }

    @Test("a source the kernel cannot fault in fails the write with .badAddress; the chunks before it are written",
          .enabled(if: processVMReadvWorks, "process_vm_readv is refused here"))
    func badAddress() throws {
        let chunk = FileSystem.bounceChunk
        let length = chunk + 2 * 4096
        try Self.withRegistered(length, kernelFaults: true) { memory in
            memory.initializeMemory(as: UInt8.self, repeating: 0x5A, count: length)
            // The last page as a window's page past its file's end is to the kernel: no access.
            #expect(mprotect(memory + length - 4096, 4096, PROT_NONE) == 0)
            try withFileSystem { fs, _ in
                let id = try fs.create("f")
                let error = #expect(throws: FSError.self) {
                    try fs.write(id, offset: 0, bytes: UnsafeRawBufferPointer(start: memory, count: length))
                }
                #expect(error?.code == .badAddress)
                #expect(try fs.stat(id).size == chunk, "the first chunk is written, nothing of the second")
                #expect(try fs.read(id, offset: 0, count: chunk).allSatisfy { $0 == 0x5A })
            }
        }
    }
}
