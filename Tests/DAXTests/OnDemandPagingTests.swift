import Atomics
@testable import DAX
import DMA
@_spi(Oracle) import DaxFS
import Foundation
import Testing
import TestSupport

/// Policy `odp`: devices mirror translations (`DeviceMirror`) and a truncate invalidates them
/// (the `mmu_interval_notifier` protocol) instead of waiting for pins.
@Suite("On-demand paging: invalidate, never wait for a pin", .serialized, .timeLimit(.minutes(1)))
struct OnDemandPagingTests {
    @Test("a truncate over a mirrored range invalidates it and frees the blocks without waiting; the mirror then faults and finds the range gone")
    func truncateInvalidates() throws {
        let lab = try Lab(policy: .odp, pages: 8)
        let mirror = try DeviceMirror(space: lab.space, pages: 0..<4)
        let blocks = try mirror.map()
        #expect(blocks == (0..<4).map { lab.fs.currentBlock(lab.file, page: $0) })
        let file = lab.file
        // The device keeps its translations "for ever": a pin would make this truncate wait.
        let truncated = lab.background { _ = try? lab.fs.truncate(file, size: 0) }
        #expect(truncated.wait(seconds: 10), "the truncate waited for a device that holds no pin")
        let statistics = lab.dax.statistics
        #expect(statistics.truncatesWaited.load(ordering: .relaxed) == 0)
        #expect(statistics.odpInvalidations.load(ordering: .relaxed) == 1)
        #expect(mirror.invalidations.load(ordering: .relaxed) == 1)
        #expect((0..<4).allSatisfy { mirror.translation(at: $0) == 0 }, "every translation zapped")
        #expect(blocks.allSatisfy { lab.fs.isFreeForAllocation($0) }, "freed at once: nobody can write through them")
        let data = [UInt8](repeating: 7, count: 4096)
        #expect(!data.withUnsafeBytes { mirror.write(at: 0, from: $0.baseAddress!) { _ in } }, "a zapped translation is not used")
        do {
            try mirror.map()
            Issue.record("mapped a range past the end of file")
        } catch { #expect(error.code == .invalidArgument) }
        mirror.unsubscribe()
    }

    @Test("an invalidation between faulting the range in and programming it makes the mapping start again with a fresh sequence")
    func invalidationRacesTheMappingPath() throws {
        #if DAXLAB_TEST_HOOKS
        let lab = try Lab(policy: .odp, pages: 4)
        let file = lab.file
        let mirror = try DeviceMirror(space: lab.space, pages: 0..<4)
        let fired = Box(false)
        mirror.mappingHook = {
            guard !fired.value else { return }
            fired.value = true
            // The device faulted every page in and holds no lock: the punch runs whole.
            let punched = lab.background { _ = try? lab.fs.punchHole(file, offset: 4096, length: 2 * 4096) }
            #expect(punched.wait(seconds: 10), "the punch must not wait for a device holding no lock")
        }
        let blocks = try mirror.map()
        #expect(fired.value)
        #expect(mirror.retries.load(ordering: .relaxed) == 1, "readRetry saw the invalidation")
        #expect(mirror.invalidations.load(ordering: .relaxed) == 1)
        for page in 0..<4 {
            #expect(blocks[page] == lab.fs.currentBlock(file, page: page), "page \(page): the translation is the page's block now")
            #expect(mirror.translation(at: page) == blocks[page])
        }
        mirror.unsubscribe()
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }

    @Test("an invalidation waits for a device write in progress (the device's lock), and nothing more")
    func invalidationWaitsForAWriteInProgress() throws {
        let lab = try Lab(policy: .odp, pages: 4)
        let file = lab.file
        let mirror = try DeviceMirror(space: lab.space, pages: 0..<2)
        try mirror.map()
        let data = [UInt8](repeating: 9, count: 4096)
        var truncated: Finished?
        let landed = data.withUnsafeBytes { buffer in
            mirror.write(at: 0, from: buffer.baseAddress!) { _ in
                let running = lab.background { _ = try? lab.fs.truncate(file, size: 0) }
                truncated = running
                // The invalidation began (its sequence is odd) and sleeps on the device's lock,
                // which this write holds: the translation is still there and nothing returned.
                let asleep = waitUntil(seconds: 30) { mirror.lockHasWaiters }
                #expect(asleep, "the invalidation never waited for the write in progress")
                #expect(mirror.invalidations.load(ordering: .relaxed) == 0, "an invalidation ran past the device's lock")
                #expect(!running.isDone, "the truncate returned while a device write was in progress")
            }
        }
        #expect(landed)
        #expect(truncated?.wait(seconds: 10) == true, "the truncate did not finish once the write was done")
        #expect(mirror.translation(at: 0) == 0)
        mirror.unsubscribe()
    }

    @Test("an ODP device refaults a punched page and writes the page's new block, never the freed one")
    func deviceRefaults() throws {
        let lab = try Lab(policy: .odp, pages: 4)
        let statistics = DMAStatistics()
        let device = try DMADevice(index: 0, dax: lab.dax, observer: nil, statistics: statistics, onDemandPaging: true)
        try device.pin(lab.file, pages: 0..<4)
        #expect(device.transfer() == 4)
        #expect(lab.dax.pins.pinCount(device.pinnedBlocks[1]) == 0, "an ODP device pins nothing")
        let old = device.pinnedBlocks[1]
        try lab.fs.punchHole(lab.file, offset: 4096, length: 4096)
        #expect(lab.fs.isFreeForAllocation(old))
        #expect(device.transfer() == 4, "the zapped page was faulted in again and written")
        #expect(statistics.deviceRefaults.load(ordering: .relaxed) == 1)
        let now = lab.fs.currentBlock(lab.file, page: 1)
        #expect(now != 0 && device.pinnedBlocks[1] == now)
        #expect(try lab.fs.read(lab.file, offset: 4096, count: 4096).allSatisfy { $0 == 1 }, "the device's bytes (index + 1)")
        if now != old { #expect(lab.fs.isFreeForAllocation(old), "the freed block was not written into use") }
        device.unpin()
        try lab.fs.unmount()
        #expect(try Fsck.run(path: lab.path).isClean)
    }

    @Test("unmount invalidates every mirror; a mirror's fault afterwards is refused and allocates nothing on the image")
    func unmountInvalidates() throws {
        let lab = try Lab(policy: .odp, pages: 4)
        try lab.fs.truncate(lab.file, size: 8 * 4096)  // pages 4..<8 are holes
        let mirror = try DeviceMirror(space: lab.space, pages: 0..<2)
        try mirror.map()
        try lab.fs.unmount()
        #expect(mirror.invalidations.load(ordering: .relaxed) == 1)
        #expect(mirror.translation(at: 0) == 0)
        let late = try DeviceMirror(space: lab.space, pages: 4..<6)
        do {
            try late.map()
            Issue.record("a hole was faulted in after the unmount")
        } catch { #expect(error.code == .invalidArgument) }
        let fsck = try Fsck.run(path: lab.path)
        #expect(fsck.isClean, "\(fsck.result.problems.prefix(3))")
        let again = try FileSystem.mount(path: lab.path)
        #expect(again.currentBlock(try again.lookup("data"), page: 4) == 0, "nothing allocated after the unmount")
        try again.unmount()
    }
}
