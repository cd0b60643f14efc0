#if DEBUG
import DAX
import DaxFS
import DaxlabSupport
import Foundation
import Testing

/// The lock-order checker sees the file system's and the DAX layer's locks: a workload that
/// reaches each of them counts acquisitions under each one's rank. So the checker that every
/// debug test run carries (`make test`) checks every acquisition of those locks, and a suite
/// that passes under it took none of them out of order.
@Suite("The lock-order checker sees every lock", .serialized, .timeLimit(.minutes(1)))
struct LockOrderCoverageTests {
    @Test("a window, faults, pins, a sequestering truncate, a waiting one, a rename over a file, a device mirror and an unmount take every rank of DaxFS and the DAX layer")
    func everyRankChecked() throws {
        // (Not the kernel ring's slots: io_uring may be refused here. KernelPinTests take them.)
        let ranks: [LockRank] = [
            .breakerSlot, .namespace, .inode, .lostFound, .spaceTable, .subscriptions, .deviceMirror, .faultStripe,
            .logSlot, .lostFoundPages, .allocatorShard, .leaseOverflow, .waitQueue, .reclaimer, .faultServedMemory,
        ]
        let before = ranks.map(LockOrder.acquisitions(of:))

        let lab = try Lab(policy: .sequester)
        let space = try lab.space
        // A window: its registration as fault-served memory.
        try space.mapWindow()
        // A write fault to a hole (a fault stripe), a pin (its lease), a lease list.
        try lab.fs.truncate(lab.file, size: 17 * 4096)
        _ = try space.fault(16, write: true)
        let pinned = try space.pin(2..<3, write: true)
        #expect(space.leaseList.count == 1)
        // A device mirror: its subscription, its translations, invalidated by the truncate.
        let mirror = DeviceMirror(space: space, pages: 4..<6)
        try mirror.map()
        // Sequestered: lost+found's lock and page table; the unpin queues the reclaimer.
        try lab.fs.truncate(lab.file, size: 4096)
        #expect(lab.fs.lostFoundBlocks == 1)
        #expect(mirror.translation(at: 0) == 0)
        mirror.unsubscribe()
        pinned.unpin()
        lab.dax.waitForReclaims()
        // A removal that waits for a pin: the wait queue.
        try lab.fs.truncate(lab.file, size: 4 * 4096)
        let waited = try space.pin(2..<3, write: true)
        let block = waited.block(at: 0)
        let file = lab.file
        let truncated = lab.background { try! lab.fs.truncate(file, size: 0, policy: .wait) }
        #expect(waitUntil(seconds: 30) { lab.dax.pins.hasWaiters(on: block) })
        waited.unpin()
        #expect(truncated.wait(seconds: 30))
        // A rename over a file (two inode locks), then the unmount (the breaker's slot).
        _ = try lab.fs.create("other")
        try lab.fs.rename("data", to: "other")
        try lab.fs.unmount()

        for (rank, count) in zip(ranks, before) {
            #expect(LockOrder.acquisitions(of: rank) > count, "no acquisition of \(rank) reached the checker")
        }
    }
}
#endif
