import Foundation
import Pmem
import Testing
import TestSupport

@Suite("Mapping a path")
struct MappingTests {
    @Test("create, write, persist, unmap, reopen keeps the data")
    func roundTripSurvivesReopen() throws {
        try withTemporaryPath { path in
            let size = 4 << 20
            let data = randomBytes(count: 1 << 20, seed: 7)
            do {
                let mapping = try PmemMapping(path: path, options: .create(size: size))
                #expect(mapping.created)
                #expect(mapping.length == size)
                #expect(mapping.medium == .tmpfs)
                #expect(mapping.alignment == 4096)
                try data.withUnsafeBytes { bytes in
                    try mapping.copy(to: 12288, from: bytes.baseAddress!, count: bytes.count)
                }
                try mapping.persist(offset: 12288, length: data.count)
            }  // the mapping is released here
            let reopened = try PmemMapping(path: path)
            #expect(!reopened.created)
            #expect(reopened.length == size)
            let readBack = Array(UnsafeRawBufferPointer(start: reopened.pointer(at: 12288), count: data.count))
            #expect(readBack == data)
            // Bytes never written read as zeros (a sparse file).
            #expect(reopened.pointer(at: 0).load(as: UInt64.self) == 0)
        }
    }

    @Test("files daxlab creates are mode 0600, whatever the umask")
    func createdFileMode() throws {
        try withTemporaryPath { path in
            let previous = umask(0)
            defer { umask(previous) }
            _ = try PmemMapping(path: path, options: .create(size: 65536, allocation: .full))
            var status = stat()
            #expect(stat(path, &status) == 0)
            #expect(status.st_mode & 0o777 == 0o600)
            #expect(status.st_blocks * 512 >= 65536, "full allocation reserves every block")
        }
    }

    @Test("openOrCreate creates a missing file and opens an existing one of the same size")
    func openOrCreate() throws {
        try withTemporaryPath { path in
            let first = try PmemMapping(path: path, options: .openOrCreate(size: 8192))
            #expect(first.created)
            let second = try PmemMapping(path: path, options: .openOrCreate(size: 8192))
            #expect(!second.created)
            #expect(second.length == 8192)
        }
    }

    @Test("resize grows an existing file only when asked, keeping its data")
    func resizeWhenAsked() throws {
        try withTemporaryPath { path in
            do {
                let mapping = try PmemMapping(path: path, options: .create(size: 4096))
                try mapping.fill(offset: 0, byte: 0xAB, count: 4096)
            }
            let grown = try PmemMapping(path: path, options: MapOptions(size: 16384, resize: true))
            #expect(grown.length == 16384)
            #expect(grown.pointer(at: 4095).load(as: UInt8.self) == 0xAB)
            #expect(grown.pointer(at: 4096).load(as: UInt8.self) == 0)
        }
    }

    @Test("is-pmem follows pmem_is_pmem, and decides the persistence strategy once")
    func isPmemDecidesPersistence() throws {
        try withTemporaryPath { path in
            let mapping = try PmemMapping(path: path, options: .create(size: 4096))
            // This process's environment decides (the CLI tests flip PMEM_IS_PMEM_FORCE in a child).
            let forced = ProcessInfo.processInfo.environment["PMEM_IS_PMEM_FORCE"] == "1"
            #expect(mapping.isPmem == forced)
            #expect(mapping.persistence == (forced ? .pmem : .msync))
            #expect(!mapping.synchronousFaults, "tmpfs refuses MAP_SYNC")
        }
    }

    @Test("the kernel's VmFlags for the mapping itself: shared, readable, writable, no MAP_SYNC here")
    func kernelFlagsDescribeTheMapping() throws {
        try withTemporaryPath { path in
            let mapping = try PmemMapping(path: path, options: .create(size: 64 << 10))
            let flags = try #require(mapping.kernelFlags, "/proc/self/smaps lists every mapping")
            #expect(Set(["rd", "wr", "sh"]).isSubset(of: Set(flags)))
            #expect(!flags.contains("sf"), "a tmpfs mapping never gets VM_SYNC")
            // A second mapping of the same file is found at its own address, not confused with the first.
            let other = try PmemMapping(path: path)
            #expect(other.kernelFlags == flags)
            #expect(other.base != mapping.base)
        }
    }

    @Test("many threads write disjoint ranges of one mapping")
    func concurrentDisjointWriters() async throws {
        try await withTemporaryPath { path in
            let threads = 8
            let slice = 256 << 10
            let mapping = try PmemMapping(path: path, options: .create(size: threads * slice))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for thread in 0..<threads {
                    group.addTask {
                        let bytes = randomBytes(count: slice, seed: UInt64(thread))
                        for chunk in stride(from: 0, to: slice, by: 4096) {
                            try bytes.withUnsafeBytes { buffer in
                                try mapping.copy(
                                    to: thread * slice + chunk, from: buffer.baseAddress! + chunk, count: 4096,
                                    flags: .nonTemporal)
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            for thread in 0..<threads {
                let expected = randomBytes(count: slice, seed: UInt64(thread))
                let actual = Array(UnsafeRawBufferPointer(start: mapping.pointer(at: thread * slice), count: slice))
                #expect(actual == expected, "thread \(thread)'s range")
            }
        }
    }
}

/// `withTemporaryPath` for async bodies.
func withTemporaryPath<Result>(_ body: (String) async throws -> Result) async throws -> Result {
    let path = "/dev/shm/daxlab-test-\(getpid())-\(UUID().uuidString.prefix(8))"
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}
