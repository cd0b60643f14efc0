@_spi(Oracle) import DAX
import DaxFS
import Foundation
import Testing
import TestSupport

/// The file system holds its DAX layer until unmount and lets go of it there; the DAX layer holds
/// the file system. So nothing keeps an unmounted image mapped once its users let go: no object
/// cycle leaks a mapping, a descriptor, a zero page or a reclaimer thread.
@Suite("Mount and DAX lifetimes", .serialized, .timeLimit(.minutes(2)))
struct LifetimeTests {
    /// Mappings and open descriptors of `path` in this process now.
    private func usage(of path: String) -> (mappings: Int, descriptors: Int) {
        // (Read to the end: a procfs file's size reads 0, and a whole-file read of it was seen to
        // stop short, missing the image's line, once the process had more mappings.)
        let handle = FileHandle(forReadingAtPath: "/proc/self/maps")
        defer { try? handle?.close() }
        let maps = String(decoding: (try? handle?.readToEnd()) ?? Data(), as: UTF8.self)
        guard maps.contains("[stack]") else { return (-1, -1) }  // (unreadable: every expectation fails)
        let mappings = maps.split(separator: "\n").filter { $0.hasSuffix(path) }.count
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        let descriptors = entries.filter {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)")) == path
        }.count
        return (mappings, descriptors)
    }

    /// Mounts `path`, attaches the DAX layer under `policy`, and opens a 4-page file "f".
    private func mount(_ path: String, policy: TruncatePolicy) throws
        -> (fs: FileSystem, dax: DAXFileSystem, file: FileID, space: AddressSpace)
    {
        let fs = try FileSystem.mount(path: path)
        let dax = try DAXFileSystem(fs: fs, policy: policy)
        let file = try fs.openOrCreate("f")
        try fs.truncate(file, size: 4 * 4096)
        return try (fs, dax, file, dax.open(file))
    }

    /// Mount, attach the DAX layer, fault, pin, sequester a pinned block, unpin (the reclaimer
    /// runs), unmount; every reference dropped on return.
    private func cycle(_ path: String) throws -> (fs: FileSystem?, dax: DAXFileSystem?) {
        weak var weakFS: FileSystem?
        weak var weakDAX: DAXFileSystem?
        try {
            let (fs, dax, file, space) = try self.mount(path, policy: .sequester)
            weakFS = fs
            weakDAX = dax
            _ = try space.fault(0, write: true)
            try holding(try space.pin(0..<2, write: true)) { _ in try fs.truncate(file, size: 0) }
            dax.waitForReclaims()
            try fs.unmount()
        }()
        return (weakFS, weakDAX)
    }

    @Test("after unmount the image is unmapped and closed; 200 cycles leave mappings and descriptors flat")
    func noCycles() throws {
        try withTemporaryPath("lifetime") { path in
            _ = try FileSystem.format(path: path, size: 4 << 20)
            let left = try self.cycle(path)
            #expect(left.fs == nil, "the file system outlived its last reference")
            #expect(left.dax == nil, "the DAX layer outlived its last reference")
            let before = self.usage(of: path)
            #expect(before.mappings == 0, "the image is still mapped after unmount")
            #expect(before.descriptors == 0, "the image is still open after unmount")
            for _ in 0..<200 { _ = try self.cycle(path) }
            let after = self.usage(of: path)
            #expect(after.mappings == before.mappings)
            #expect(after.descriptors == before.descriptors)
            #expect(try Fsck.run(path: path).isClean)
        }
    }

    /// A pin holds its layer without a reference of its own: its batch holds the layer from its
    /// first lease on, pooled or not, and the unmount closes the pool (`BatchPool.close`). So a
    /// pin that outlives the unmount (policy none) must still keep the layer, the file system
    /// and the image alive, and its unpin must let them all go: a closed pool keeps nothing.
    @Test("a pin that outlives the unmount keeps the layer and the image until its unpin, then nothing is left")
    func pinOutlivesUnmount() throws {
        try withTemporaryPath("pin-outlives") { path in
            _ = try FileSystem.format(path: path, size: 4 << 20)
            weak var weakFS: FileSystem?
            weak var weakDAX: DAXFileSystem?
            let handle = try { () throws -> PinHandle in
                let (fs, dax, _, space) = try self.mount(path, policy: .none)
                weakFS = fs
                weakDAX = dax
                // Batches in the pool before the unmount: the one given back by this unpin.
                try space.pin(0..<2, write: true).unpin()
                let handle = try space.pin(2..<3, write: true)
                do { try fs.unmount() } catch {  // policy none: the pin outlives it
                    handle.unpin()
                    throw error
                }
                #expect(dax.statistics.pinsOutlivingUnmount.load(ordering: .relaxed) == 1)
                return handle
            }()
            #expect(weakDAX != nil, "the layer went while a pin of it was outstanding")
            #expect(weakFS != nil, "the file system went while a pin of it was outstanding")
            #expect(self.usage(of: path).mappings > 0)
            var bytes = [UInt8](repeating: 0x5A, count: 4096)
            #expect(try handle.write(at: 0, from: &bytes, count: 4096), "the outstanding pin's write")
            handle.unpin()
            #expect(weakDAX == nil, "the layer outlived its last pin: a closed pool kept its batch")
            #expect(weakFS == nil, "the file system outlived its last pin")
            #expect(self.usage(of: path).mappings == 0, "the image is still mapped after the last unpin")
        }
    }

    @Test("a second DAX layer on one mount is refused; after unmount none can attach")
    func attachOnce() throws {
        try withTemporaryPath("attach") { path in
            _ = try FileSystem.format(path: path, size: 4 << 20)
            let fs = try FileSystem.mount(path: path)
            let first = try DAXFileSystem(fs: fs, policy: .wait)
            #expect(throws: FSError.self) { try DAXFileSystem(fs: fs, policy: .fail) }
            try fs.unmount()
            #expect(throws: FSError.self) { try DAXFileSystem(fs: fs, policy: .wait) }
            _ = first
        }
    }

    /// A file's address space is found by inode number. Opening the address space of a removed
    /// file whose inode now belongs to a new file (a stale FileID, held by a device that has not
    /// heard of the removal) is refused, and must not displace the live file's space: the breaker
    /// would then unmap the stale space's empty table and leave the live file's mappings pointing
    /// at the blocks a truncate frees.
    @Test("opening a removed file's stale id is refused, and leaves the live file's address space to the breaker")
    func staleOpenKeepsLiveSpace() throws {
        let lab = try Lab(policy: .wait)
        let removed = try lab.fs.create("removed")
        try lab.fs.truncate(removed, size: 4096)
        _ = try lab.dax.open(removed).fault(0, write: true)
        try lab.fs.unlink("removed")
        let live = try lab.fs.create("live")
        #expect(live.inode == removed.inode, "the inode was not reused; the test needs it to be")
        try lab.fs.truncate(live, size: 2 * 4096)
        let space = try lab.dax.open(live)
        _ = try space.fault(0, write: true)
        _ = try space.fault(1, write: true)
        let stale = #expect(throws: FSError.self) { try lab.dax.open(removed) }  // the removed file is gone
        #expect(stale?.code == .notFound)
        #expect(try lab.dax.open(live) === space, "the stale open displaced the live file's space")
        try lab.fs.truncate(live, size: 4096)
        #expect(space.staleMappings().isEmpty, "page 1 is still mapped to the block the truncate freed")
        #expect(try lab.fs.stat(live).size == 4096)
    }

    /// A FileID is caller input (its initializer is public): one that names no file of the image
    /// is refused with `.notFound`, as the file system's operations refuse it, never a trap.
    @Test("an address space for an id outside the image, of a reserved inode or of a wrong generation is refused")
    func openRefusesForeignIDs() throws {
        let lab = try Lab(policy: .wait)
        let inodes = lab.fs.geometry.inodeCount
        let foreign = [
            FileID(inode: -1, generation: 0), FileID(inode: inodes, generation: 0), FileID(inode: Int.max, generation: 0),
            FileID(inode: 0, generation: 0), FileID(inode: FileSystem.lostFoundInode, generation: 0),
            FileID(inode: lab.file.inode, generation: lab.file.generation &+ 1),
        ]
        for id in foreign {
            let error = #expect(throws: FSError.self, "\(id)") { try lab.dax.open(id) }
            #expect(error?.code == .notFound, "\(id): \(String(describing: error))")
        }
        #expect(try lab.dax.open(lab.file).id == lab.file)
    }

    /// The file system lends its layout breaker to a removal unretained, for as long as the
    /// removal holds the file's lock (`BreakerSlot`); unmount detaches it only after every
    /// file's lock has been free once. A punch that sleeps for a pin drops its lock, so an
    /// unmount can detach the breaker under it: on waking it must find it gone and fail,
    /// changing nothing, not use it (or remove blocks from an image already marked clean).
    @Test("a punch asleep for a pin when the file system is unmounted wakes to an error and changes nothing")
    func unmountUnderSleepingPunch() throws {
        try withTemporaryPath("unmount-sleeper") { path in
            _ = try FileSystem.format(path: path, size: 4 << 20)
            let fs = try FileSystem.mount(path: path)
            // Default policy none: the unmount lets the pin outlive it instead of waiting for it.
            let dax = try DAXFileSystem(fs: fs, policy: .none, times: PolicyTimes(waitTimeout: .seconds(60)))
            let file = try fs.create("f")
            try fs.write(file, offset: 0, bytes: [UInt8](repeating: 0xAB, count: 2 * 4096))
            let space = try dax.open(file)
            let failure = Box<FSError?>(nil)
            let finished = Finished()
            try holding(try space.pin(0..<1, write: true)) { handle in
                let block = handle.block(at: 0)
                Thread {
                    do throws(FSError) {
                        try fs.punchHole(file, offset: 0, length: 4096, policy: .wait)
                    } catch {
                        failure.value = error
                    }
                    finished.signal()
                }.start()
                try #require(waitUntil(seconds: 30) { dax.pins.hasWaiters(on: block) || finished.isDone },
                             "the punch neither returned nor slept on the pinned block")
                #expect(!finished.isDone, "the punch did not wait for the pin")
                #expect(dax.statistics.truncatesWaited.load(ordering: .relaxed) == 1)
                try fs.unmount()  // passes the file's lock, which the sleeping punch dropped
            }
            #expect(finished.wait(seconds: 30), "the punch never woke")
            let error = try #require(failure.value, "the punch went on after the unmount")
            #expect(error.message.contains("unmounted while the call waited"), "\(error)")
            #expect(try Fsck.run(path: path).isClean)
            let again = try FileSystem.mount(path: path)
            let id = try again.lookup("f")
            #expect(try again.read(id, offset: 0, count: 4096) == [UInt8](repeating: 0xAB, count: 4096))
            try again.unmount()
        }
    }
}
