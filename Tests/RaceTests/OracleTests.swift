import CShims
import DAX
import DMA
@_spi(Oracle) import DaxFS
import Foundation
import Race
import Testing
import TestSupport

/// The oracle's two former blind spots, each made to happen deterministically. The oracle
/// before the shadow table had epochs and heard of allocations judged both of these clean.
@Suite("The oracle's blind spots", .serialized, .timeLimit(.minutes(1)))
struct OracleTests {
    /// A mounted image under policy `none`, one shared file, a device and an oracle.
    final class Scene {
        let path: String
        let fs: FileSystem
        let dax: DAXFileSystem
        let oracle: Oracle
        let file: FileID
        let device: DMADevice

        init(attachOracle: Bool = true) throws {
            self.path = "/dev/shm/daxlab-oracle-\(getpid())-\(UUID().uuidString.prefix(8))"
            _ = try FileSystem.format(path: self.path, size: 16 << 20)
            self.fs = try FileSystem.mount(path: self.path)
            self.dax = try DAXFileSystem(fs: self.fs, policy: .none)
            self.oracle = try Oracle(fs: self.fs, attach: attachOracle)
            self.file = try self.fs.create("shared")
            try self.fs.truncate(self.file, size: 4 * 4096)
            self.device = try DMADevice(index: 0, dax: self.dax, observer: self.oracle, statistics: DMAStatistics())
        }

        deinit { unlink(self.path) }

        var stale: Int { self.oracle.staleWrites.load(ordering: .relaxed) }
    }

    /// The file system keeps its allocation observer; the oracle must not keep the file system,
    /// or neither ever goes (nor the image's mapping, nor the lock on it): a demo's races, each
    /// on a fresh image, kept every image mapped and a later race found its image in use.
    @Test("an oracle attached to a file system keeps neither alive once the scene is gone, nor the image mapped")
    func oracleLetsTheFileSystemGo() throws {
        weak var fileSystem: FileSystem?
        weak var oracle: Oracle?
        var path = ""
        do {
            let scene = try Scene()
            path = scene.path
            fileSystem = scene.fs
            oracle = scene.oracle
            try scene.fs.unmount()
        }
        #expect(fileSystem == nil, "the file system outlived its last user")
        #expect(oracle == nil, "the oracle outlived its last user")
        let maps = try String(contentsOfFile: "/proc/self/maps", encoding: .utf8)
        #expect(!maps.contains(path), "the image is still mapped")
    }

    /// One CPU for the whole scene: a freed block goes back to the shard this thread allocates
    /// from, so the next allocation is that very block (the allocator is LIFO per shard).
    private func onOneCPU<Result>(_ body: () throws -> Result) rethrows -> Result {
        _ = CShims_bind_to_cpu(CShims_current_cpu())
        defer { _ = CShims_unbind_cpu() }
        return try body()
    }

    @Test("a write through a stale pin into its block, reallocated to the same file and page, is stale and corrupts")
    func reuseBySameFileAndPage() throws {
        let scene = try Scene()
        try self.onOneCPU {
            try scene.device.pin(scene.file, pages: 2..<3)
            let block = scene.device.pinnedBlocks[0]
            scene.device.transfer()
            #expect(scene.stale == 0, "a write through a valid pin")
            // Truncate away the pinned page (policy none frees it), grow back, and fault the page
            // in again: the allocator hands out the very block the device still pins.
            try scene.fs.truncate(scene.file, size: 2 * 4096)
            try scene.fs.truncate(scene.file, size: 4 * 4096)
            _ = try scene.dax.open(scene.file).fault(2, write: true)
            try #require(scene.fs.currentBlock(scene.file, page: 2) == block, "the scene needs the block reused")
            #expect(scene.oracle.isOwned(block, by: scene.file, page: 2), "same file, same page: only the epoch differs")
            scene.device.transfer()
            #expect(scene.stale == 1, "the old pin's write is stale although the block is the same file's page again")
            scene.device.unpin()
            // The end check: the page holds a device tag naming this file and page, from an
            // earlier ownership of the block.
            let bytes = try scene.fs.read(scene.file, offset: 2 * 4096, count: 4096)
            let tags = try #require(bytes.withUnsafeBytes { BlockTag.readEach($0.baseAddress!) })
            #expect(tags.allSatisfy { $0.file == scene.file && $0.page == 2 })
            #expect(!scene.oracle.isOwnDeviceData(tags, file: scene.file, page: 2, block: block), "stale data")
        }
        try scene.fs.unmount()
    }

    /// Forwards the allocator's events to the oracle and, the moment a chosen block is allocated
    /// (before its new owner has written it), lets a device write through its stale pin.
    final class Interposer: AllocationObserver, @unchecked Sendable {
        let oracle: Oracle
        var watched: UInt32 = 0
        var onAllocation: (() -> Void)?
        init(_ oracle: Oracle) { self.oracle = oracle }
        func didAllocate(_ block: UInt32, inode: Int, page: Int?) {
            self.oracle.didAllocate(block, inode: inode, page: page)
            if block == self.watched, let action = self.onAllocation {
                self.onAllocation = nil
                action()
            }
        }
        func didFree(_ block: UInt32) { self.oracle.didFree(block) }
    }

    @Test("a device write into a block a writer has allocated but not yet written is stale")
    func writeIntoFreshAllocation() throws {
        let scene = try Scene(attachOracle: false)
        let interposer = Interposer(scene.oracle)
        try #require(scene.fs.observeAllocations(interposer))
        let other = try scene.fs.create("writer")
        try self.onOneCPU {
            try scene.device.pin(scene.file, pages: 1..<2)
            let block = scene.device.pinnedBlocks[0]
            try scene.fs.truncate(scene.file, size: 0)  // policy none: the pinned block is freed
            var landed = 0
            interposer.watched = block
            interposer.onAllocation = { landed = scene.device.transfer() }
            // The writer's write allocates the freed block; the device writes into it inside the
            // allocation, before the writer's data lands and before the write returns.
            try scene.fs.write(other, offset: 0, bytes: [UInt8](repeating: 7, count: 4096))
            try #require(scene.fs.currentBlock(other, page: 0) == block, "the scene needs the block reused")
            #expect(landed == 1)
            #expect(scene.stale == 1, "the block belonged to the writer from its allocation on")
            scene.device.unpin()
        }
        try scene.fs.unmount()
    }
}
