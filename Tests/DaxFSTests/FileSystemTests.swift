import DaxFS
import Foundation
import Pmem
import Testing
import TestSupport

/// Formats a fresh image of `size` at a temporary path and mounts it.
func withFileSystem<Result>(
    size: Int = 64 << 20, _ body: (FileSystem, String) throws -> Result
) throws -> Result {
    try withTemporaryPath("daxfs") { path in
        _ = try FileSystem.format(path: path, size: size)
        let fs = try FileSystem.mount(path: path)
        return try body(fs, path)
    }
}

/// Unmounts, fscks and remounts `path`.
func remount(_ fs: FileSystem, _ path: String) throws -> FileSystem {
    try fs.unmount()
    return try FileSystem.mount(path: path)
}

@Suite("DaxFS operations", .timeLimit(.minutes(2)))
struct FileSystemTests {
    @Test("random data of several MiB reads back after a remount")
    func roundTripAfterRemount() throws {
        try withTemporaryPath("daxfs") { path in
            _ = try FileSystem.format(path: path, size: 64 << 20)
            var expected: [String: [UInt8]] = [:]
            do {
                let fs = try FileSystem.mount(path: path)
                for index in 0..<6 {
                    let name = "file-\(index)"
                    let data = randomBytes(count: (1 << 20) + index * 12345, seed: UInt64(index))
                    let id = try fs.create(FileName(name))
                    try fs.write(id, offset: 0, bytes: data)
                    expected[name] = data
                }
                // A sparse write far out: pages past the direct and indirect maps.
                let sparse = try fs.create("sparse")
                let tail = randomBytes(count: 10_000, seed: 99)
                try fs.write(sparse, offset: 9 << 20, bytes: tail)
                expected["sparse"] = [UInt8](repeating: 0, count: 9 << 20) + tail
                try fs.unmount()
            }
            let fs = try FileSystem.mount(path: path)
            #expect(!fs.mountReport.wasDirty)
            #expect(Set(fs.list().map(\.name)) == Set(expected.keys.map { FileName($0) }))
            for (name, data) in expected {
                let id = try fs.lookup(FileName(name))
                #expect(try fs.stat(id).size == data.count)
                #expect(try fs.read(id, offset: 0, count: data.count + 100) == data, "\(name)")
            }
            try fs.unmount()
            let report = try Fsck.run(path: path)
            #expect(report.result.isClean, "\(report.result.problems)")
        }
    }
}
