import DAX
import DaxFS
import Foundation

/// One scratch image per benchmark process with every file the suites use, made once: the
/// framework calls each benchmark's closure many times, so closures only measure.
final class Fixture: @unchecked Sendable {
    static let shared = try! Fixture()

    let path = "/dev/shm/daxlab-benchmarks-\(getpid()).pmem"
    let fs: FileSystem
    let dax: DAXFileSystem
    /// 1024 mapped pages, for hot faults.
    let hot: AddressSpace
    /// 512 mapped pages, for pins.
    let pins: AddressSpace
    /// A file whose pages are cut back to holes between cold-fault rounds.
    let cold: (FileID, AddressSpace)
    /// 13 pages: page 0 (a direct pointer, the log path) and page 12 (a reserved block, the
    /// persisted-pointer path) are faulted in and punched out again.
    let alloc: (FileID, AddressSpace)
    /// 1024 mapped pages whose upper half is truncated away and refilled.
    let truncated: (FileID, AddressSpace)

    private init() throws {
        _ = try FileSystem.format(path: self.path, size: 256 << 20, force: true)
        let fs = try FileSystem.mount(path: self.path, persistence: .pmem)
        let dax = try DAXFileSystem(fs: fs, policy: .wait)
        self.fs = fs
        self.dax = dax
        func mapped(_ name: String, _ pages: Int) throws -> (FileID, AddressSpace) {
            let file = try fs.create(FileName(name))
            try fs.truncate(file, size: pages * 4096)
            let space = try dax.open(file)
            for page in 0..<pages { _ = try space.fault(page, write: true) }
            return (file, space)
        }
        self.hot = try mapped("hot", 1024).1
        self.pins = try mapped("pins", 512).1
        self.cold = try mapped("cold", 0)
        self.alloc = try mapped("alloc", 0)
        try fs.truncate(self.alloc.0, size: 13 * 4096)
        // Page 12 gets its map block and the file its reserve now, not in a measured sample.
        _ = try self.alloc.1.fault(12, write: true)
        try fs.punchHole(self.alloc.0, offset: 12 * 4096, length: 4096)
        self.truncated = try mapped("truncated", 1024)
        atexit { unlink(Fixture.shared.path) }
    }
}
