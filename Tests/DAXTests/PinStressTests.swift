import Atomics
import DAX
@_spi(Oracle) import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

/// Pins and unpins from many threads at once on shared files: every batch (recycled through the
/// lock-free pool) must belong to one pinner at a time, so every pin is counted exactly once.
@Suite("pin and unpin from many threads", .timeLimit(.minutes(2)))
struct PinStressTests {
    @Test("4 threads x 20 000 pin/unpin of overlapping ranges: counts exact while held, all zero after")
    func concurrentPinUnpin() throws {
        let lab = try Lab(policy: .wait, pages: 64)
        let second = try lab.fs.create("second")
        try lab.fs.write(second, offset: 0, bytes: [UInt8](repeating: 0x55, count: 64 * 4096))
        let spaces = try [lab.space, lab.dax.open(second)]
        let failures = Box<[String]>([])
        let leasesSeen = ManagedAtomic<Int>(0)
        var workers: [Finished] = []
        for thread in 0..<4 {
            workers.append(lab.background {
                var random = SplitMix64(seed: UInt64(thread + 1))
                for round in 0..<20_000 {
                    let space = spaces[Int(random.next() % 2)]
                    let start = Int(random.next() % 60)
                    let length = 1 + Int(random.next() % 4)
                    do {
                        let handle = try space.pin(start..<(start + length), write: true)
                        // While held, each block carries at least this pin, and the handle's blocks
                        // are the file's own (a batch shared by two pinners would break either).
                        for index in 0..<handle.count {
                            let block = handle.block(at: index)
                            if lab.dax.pins.pinCount(block) < 1 { failures.value.append("block \(block) not pinned") }
                            if block != lab.fs.currentBlock(space.id, page: start + index) {
                                failures.value.append("handle block \(block) is not page \(start + index)'s")
                            }
                        }
                        if handle.pages != start..<(start + length) { failures.value.append("handle pages changed") }
                        if round % 1000 == 0, space.leaseList.contains(where: { $0.pages == handle.pages }) {
                            leasesSeen.wrappingIncrement(ordering: .relaxed)
                        }
                        handle.unpin()
                    } catch {
                        failures.value.append("pin: \(error)")
                    }
                    if failures.value.count > 5 { return }
                }
            })
        }
        for worker in workers { #expect(worker.wait(seconds: 60), "a pinner hung") }
        #expect(failures.value.isEmpty, "\(failures.value.prefix(5))")
        #expect(leasesSeen.load(ordering: .relaxed) == 4 * 20, "each sampled pin was listed as a lease")
        for space in spaces {
            #expect(space.leaseList.isEmpty)
            for page in 0..<64 {
                let block = lab.fs.currentBlock(space.id, page: page)
                #expect(lab.dax.pins.pinCount(block) == 0, "page \(page) of \(space.id) still pinned")
                #expect(!lab.dax.pins.maybeDMAPinned(block))
            }
        }
    }
}
