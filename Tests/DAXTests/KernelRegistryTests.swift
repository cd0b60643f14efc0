@testable import DAX
@_spi(Oracle) import DaxFS
import DaxlabSupport
import Foundation
import Testing
import TestSupport

/// A registry of long-term kernel pins that only records what the DAX layer asks of it, and what
/// the file system's state was at each call: the contract every registry (io_uring's fixed
/// buffers, RDMA's memory regions) relies on, checked without either.
final class RecordingRegistry: KernelRegistry, @unchecked Sendable {
    enum Call: Equatable {
        case take(Int), register(Int, pages: Int), defuse(Int), clear(Int), give(Int)
    }
    private let lock = NSLock()
    private var free: [Int]
    private var log: [Call] = []
    /// Run at each defuse, before it is recorded (under no lock of the registry's).
    var onDefuse: (@Sendable (Int) -> Void)?

    init(slots: Int) { self.free = Array((0..<slots).reversed()) }

    var calls: [Call] { self.lock.withLock { self.log } }
    var freeSlots: Int { self.lock.withLock { self.free.count } }
    var slotName: String { "recorded slot" }

    func take() -> Int? {
        self.lock.withLock {
            guard let slot = self.free.popLast() else { return nil }
            self.log.append(.take(slot))
            return slot
        }
    }
    func give(_ slot: Int) { self.lock.withLock { self.free.append(slot); self.log.append(.give(slot)) } }
    func register(slot: Int, address: UnsafeMutableRawPointer, length: Int) throws(FSError) {
        self.lock.withLock { self.log.append(.register(slot, pages: length / 4096)) }
    }
    func clear(_ slot: Int) { self.lock.withLock { self.log.append(.clear(slot)) } }
    func defuse(_ slot: Int) {
        self.onDefuse?(slot)
        self.lock.withLock { self.log.append(.defuse(slot)) }
    }
}

/// What the DAX layer does with any `KernelRegistry`: the pin registers the pin's view in a slot,
/// a revocation defuses that slot while the blocks are still the file's, and the unpin clears
/// and gives it back once.
@Suite("Long-term kernel pins through any registry", .serialized, .timeLimit(.minutes(2)))
struct KernelRegistryTests {
    @Test("a long-term pin takes a slot, registers the pin's whole range, and the unpin clears and gives it back once")
    func pinAndUnpin() throws {
        let lab = try Lab(policy: .wait, pages: 4)
        let registry = RecordingRegistry(slots: 2)
        let handle = try lab.space.pin(1..<4, write: true, kernel: .longTerm(registry))
        let kernelSlot = handle.kernelSlot
        guard let slot = kernelSlot else {
            handle.unpin()
            Issue.record("the long-term pin holds no slot")
            return
        }
        #expect(registry.calls == [.take(slot), .register(slot, pages: 3)])
        handle.unpin()
        #expect(registry.calls == [.take(slot), .register(slot, pages: 3), .clear(slot), .give(slot)])
        #expect(registry.freeSlots == 2)
    }

    /// The revoker defuses the slot, waits for the writes in flight, then unpins the revoked pin
    /// for its holder: the slot is cleared and given back there, while the blocks are still the
    /// file's, and the holder's own unpin later touches the registry no more.
    @Test("lease-break defuses the slot, then clears and gives it back, all before the truncate frees the blocks; the holder's unpin adds nothing")
    func revocationDefusesBeforeTheBlocksGo() throws {
        let lab = try Lab(policy: .leaseBreak, pages: 4, times: PolicyTimes(leaseBreakTime: .milliseconds(20)))
        let registry = RecordingRegistry(slots: 2)
        let holder = Holder()  // ignores the break, as a device in the middle of a transfer does
        let freeAtDefuse = Box<Bool?>(nil)
        let fs = lab.fs
        let slot: Int = try holding(try lab.space.pin(2..<4, write: true, holder: holder, kernel: .longTerm(registry))) { handle in
            let block = handle.block(at: 0)
            let kernelSlot = handle.kernelSlot
            let slot = try #require(kernelSlot)
            registry.onDefuse = { _ in freeAtDefuse.value = fs.isFreeForAllocation(block) }
            try lab.fs.truncate(lab.file, size: 4096)
            let revoked = handle.isRevoked
            #expect(revoked)
            #expect(holder.breaks.value == 1)
            #expect(freeAtDefuse.value == false, "the slot was defused while the block was still the file's")
            #expect(registry.calls == [.take(slot), .register(slot, pages: 2), .defuse(slot), .clear(slot), .give(slot)],
                    "defused, then dropped by the revoker once the writes in flight drained")
            return slot
        }
        #expect(registry.calls.count == 5, "the holder's unpin of the revoked pin cleared nothing again: \(registry.calls)")
        #expect(registry.freeSlots == 2, "slot \(slot) is back")
    }

    @Test("with no free slot the pin fails with busy, naming the registry's slot, and nothing stays pinned")
    func noFreeSlot() throws {
        let lab = try Lab(policy: .wait, pages: 4)
        let registry = RecordingRegistry(slots: 0)
        let blocks = (0..<2).map { lab.fs.currentBlock(lab.file, page: $0) }
        let space = try lab.space
        let error = try #require(refusal("a pin without a free slot was granted") {
            try space.pin(0..<2, write: true, kernel: .longTerm(registry))
        })
        #expect(error.code == .busy)
        #expect(error.message.contains("no free recorded slot"), "\(error.message)")
        for block in blocks { #expect(lab.dax.pins.pinCount(block) == 0) }
        #expect(space.leaseList.isEmpty)
    }
}
