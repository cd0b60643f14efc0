@testable import DAX
@_spi(Oracle) import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

/// `FileSystem.write` from a window: the source's faults take file locks shared, so the write
/// copies the source before it takes the file's lock (the kernel's fault-in before the locks).
/// Each write runs on a thread of its own: one that waits for its own lock would hang the suite
/// (or, in a debug build, trap in the lock-order checker).
@Suite("Writes whose source is a window", .serialized, .timeLimit(.minutes(1)))
struct WindowSourceWriteTests {
    /// `count` bytes that differ from page to page and from the file's 0xAA.
    static func pattern(_ count: Int, seed: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: ($0 / 4096) &* 31 &+ ($0 % 4096) &* 7 &+ seed) | 1 }
    }

    /// Writes `count` bytes from `source` into `file` at `offset` on another thread.
    /// - Returns: when it finished, and what it threw.
    static func write(
        _ lab: Lab, _ file: FileID, offset: Int, from source: UnsafeRawPointer, count: Int
    ) -> (Finished, Box<FSError?>) {
        let failure = Box<FSError?>(nil)
        let address = UInt(bitPattern: source)
        let fs = lab.fs
        let finished = lab.background {
            let bytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: count)
            do throws(FSError) { try fs.write(file, offset: offset, bytes: bytes) } catch { failure.value = error }
        }
        return (finished, failure)
    }

    @Test("a window is fault-served memory from its first use until its address space goes")
    func windowRegistration() throws {
        weak var gone: AddressSpace?
        var address: UInt = 0
        try {
            let lab = try Lab(policy: .wait, pages: 4)
            let space = try lab.space
            gone = space
            let window = try space.mapWindow()
            address = UInt(bitPattern: window)
            let length = FileSystem.maximumFileSize
            #expect(FaultServedMemory.overlaps(UnsafeRawBufferPointer(start: window, count: 1)))
            #expect(FaultServedMemory.overlaps(UnsafeRawBufferPointer(start: window + length - 1, count: 1)))
            #expect(!FaultServedMemory.overlaps(UnsafeRawBufferPointer(start: window + length, count: 1)))
            #expect(FaultServedMemory.kernelFaultsThroughout(UnsafeRawBufferPointer(start: window, count: 1))
                        == (space.windowFaults == .userfaultfd),
                    "a userfaultfd window serves the kernel's faults too, a signals one only the CPU's")
            try lab.fs.unmount()
        }()
        #expect(gone == nil, "the address space outlived its layer")
        #expect(!FaultServedMemory.overlaps(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: 1)),
                "the window is still registered after its address space went")
    }

    @Test("a file written from an untouched page of its own window: the write completes with the page's bytes")
    func ownWindowUntouchedPage() throws {
        let lab = try Lab(policy: .wait, pages: 4)
        let bytes = Self.pattern(4096, seed: 3)
        try lab.fs.write(lab.file, offset: 4096, bytes: bytes)  // (from ordinary memory)
        let space = try lab.space
        let window = try space.mapWindow()
        #expect(space.lookup(1) == 0, "page 1 of the window is untouched: the write's read of it faults")
        let (written, failure) = Self.write(lab, lab.file, offset: 0, from: window + 4096, count: 4096)
        #expect(written.wait(seconds: 30), "the write from its own window never finished: its fault waits for its lock")
        #expect(failure.value == nil)
        #expect(try lab.fs.read(lab.file, offset: 0, count: 4096) == bytes, "page 0 has page 1's bytes")
        #expect(try lab.fs.read(lab.file, offset: 4096, count: 4096) == bytes, "page 1 kept them")
        #expect(space.lookup(1) != 0, "the source page was faulted in through the window")
    }

    @Test("a write from many untouched pages of the file's own window, more than one bounce chunk")
    func severalChunks() throws {
        let pages = FileSystem.bounceChunk / 4096 + 44
        let lab = try Lab(policy: .wait, pages: 1)
        let bytes = Self.pattern(pages * 4096, seed: 11)
        try lab.fs.write(lab.file, offset: 0, bytes: bytes)
        let space = try lab.space
        let window = try space.mapWindow()
        #expect((0..<pages).allSatisfy { space.lookup($0) == 0 }, "no source page is mapped yet")
        let destination = 2 * pages * 4096  // (past the source: the chunks read nothing the write changed)
        let (written, failure) = Self.write(lab, lab.file, offset: destination, from: window, count: pages * 4096)
        #expect(written.wait(seconds: 30), "the write from its own window never finished")
        #expect(failure.value == nil)
        #expect(try lab.fs.read(lab.file, offset: destination, count: pages * 4096) == bytes)
        #expect(try lab.fs.stat(lab.file).size == destination + pages * 4096)
        #expect((0..<pages).allSatisfy { space.lookup($0) != 0 }, "every source page was faulted in")
    }

    @Test("writes between two files through each other's windows, both ways round the inode order")
    func anotherFilesWindow() throws {
        let lab = try Lab(policy: .wait, pages: 4)
        let older = lab.file
        let newer = try lab.fs.create("newer")
        let newerBytes = Self.pattern(4 * 4096, seed: 5)
        try lab.fs.write(newer, offset: 0, bytes: newerBytes)
        let olderSpace = try lab.space
        let newerSpace = try lab.dax.open(newer)
        let olderWindow = try olderSpace.mapWindow()
        let newerWindow = try newerSpace.mapWindow()

        // Into the newer file from the older one's window: a fault under the newer file's lock
        // would take a lower-numbered file's lock, against the lock order.
        let (first, firstFailure) = Self.write(lab, newer, offset: 3 * 4096, from: olderWindow + 2 * 4096, count: 4096)
        #expect(first.wait(seconds: 30), "the write into the newer file never finished")
        #expect(firstFailure.value == nil)
        #expect(try lab.fs.read(newer, offset: 3 * 4096, count: 4096) == [UInt8](repeating: 0xAA, count: 4096))

        let (second, secondFailure) = Self.write(lab, older, offset: 0, from: newerWindow + 4096, count: 2 * 4096)
        #expect(second.wait(seconds: 30), "the write into the older file never finished")
        #expect(secondFailure.value == nil)
        #expect(try lab.fs.read(older, offset: 0, count: 2 * 4096) == Array(newerBytes[4096..<(3 * 4096)]))
    }

    @Test("a write whose source file's lock is held faults it in without holding its own file's lock")
    func faultInHoldsNoLock() throws {
        let lab = try Lab(policy: .wait, pages: 4)
        let source = try lab.fs.create("source")
        let bytes = Self.pattern(4096, seed: 9)
        try lab.fs.write(source, offset: 0, bytes: bytes)
        let sourceSpace = try lab.dax.open(source)
        let window = try sourceSpace.mapWindow()
        let sourceLock = lab.fs.invalidateLock(for: source)
        sourceLock.lockExclusive()  // a truncate-like holder of the source file
        let (written, failure) = Self.write(lab, lab.file, offset: 0, from: window, count: 4096)
        // The write's fault sleeps on the source file's lock (its waiting bit is set) ...
        let waiting = waitUntil(seconds: 30) { sourceLock.hasWaiters }
        #expect(waiting, "the write's fault never waited for the source file's lock")
        // ... and meanwhile the destination's lock is free: a reader of it goes on.
        let fs = lab.fs
        let file = lab.file
        let reader = lab.background { _ = try? fs.read(file, offset: 0, count: 1) }
        let readerDone = reader.wait(seconds: 30)
        #expect(!written.isDone, "the write finished while its source's lock was held")
        sourceLock.unlock()
        #expect(readerDone, "a reader of the destination waited: the write held its lock while it faulted")
        #expect(written.wait(seconds: 30), "the write did not go on once the source's lock was released")
        #expect(failure.value == nil)
        #expect(try lab.fs.read(lab.file, offset: 0, count: 4096) == bytes)
    }
}
