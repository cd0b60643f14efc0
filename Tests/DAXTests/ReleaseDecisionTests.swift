@testable import DAX
@_spi(Oracle) import DaxFS
import Foundation
import Testing

/// Who drops a pin a revoker revokes: the holder's unpin and the revoker decide it by a Dekker
/// pair (each stores a mark, then loads the other's) with an asymmetric fence, and a locked
/// claim only where both saw each other (`PinBatch.releaseByHolder`, `PinBatch.revoke`). Each
/// interleaving is made on purpose, with the test hooks (builds with DAXLAB_TEST_HOOKS=1), under the asymmetric
/// fence and under the sequentially consistent fallback: the pins must be dropped exactly once
/// (a count that went below zero would read as a huge count, and a block left pinned as one).
@Suite("Who drops a revoked pin", .serialized, .timeLimit(.minutes(1)))
struct ReleaseDecisionTests {
    #if DAXLAB_TEST_HOOKS
    private func lab(fallback: Bool) throws -> Lab {
        let lab = try Lab(policy: .leaseBreak, pages: 4, asymmetricFence: !fallback)
        #expect(try lab.space.leases.asymmetric == (!fallback && AsymmetricFence.available))
        return lab
    }
    #endif

    @Test("a revocation between the holder's mark and its look: the revoker stands back, the holder drops the pins once",
          arguments: [false, true])
    func revokedWhileUnpinning(fallback: Bool) throws {
        #if DAXLAB_TEST_HOOKS
        let lab = try self.lab(fallback: fallback)
        let space = try lab.space
        let handle = try space.pin(1..<3, write: true)
        let blocks = [handle.block(at: 0), handle.block(at: 1)]
        var revocation: PinBatch.Revocation?
        space.releaseHook = { batch in revocation = batch.revoke() }
        defer { space.releaseHook = nil }
        handle.unpin()
        #expect(revocation == .nothing, "the revoker saw the holder's mark and left the pins to it")
        for block in blocks { #expect(lab.dax.pins.pinCount(block) == 0) }
        #expect(space.leaseList.isEmpty)
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }

    @Test("a revocation while pinning: the pin fails busy and undoes its own pins; the revoker drops none",
          arguments: [false, true])
    func revokedWhilePinning(fallback: Bool) throws {
        #if DAXLAB_TEST_HOOKS
        let lab = try self.lab(fallback: fallback)
        let space = try lab.space
        for page in 0..<4 { _ = try space.fault(page, write: true) }
        var revocations: [PinBatch.Revocation] = []
        space.pinFastPathHook = { _, _ in
            guard revocations.isEmpty else { return }
            space.leases.forEachOverlapping(0..<4) { revocations.append($0.revoke()) }
        }
        defer { space.pinFastPathHook = nil }
        let error = refusal("the pin succeeded though its lease was revoked while pinning") {
            try space.pin(1..<3, write: true)
        }
        #expect(error?.code == .busy)
        #expect(revocations == [.revoked(mustUnpin: false)], "the revoker found the pin unpublished")
        for page in 0..<4 { #expect(lab.dax.pins.pinCount(lab.fs.currentBlock(lab.file, page: page)) == 0) }
        #expect(space.leaseList.isEmpty)
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }

    @Test("a revocation of a published pin: the revoker drops the pins, the holder's later unpin drops none",
          arguments: [false, true])
    func revokedThenUnpinned(fallback: Bool) throws {
        #if DAXLAB_TEST_HOOKS
        let lab = try self.lab(fallback: fallback)
        let space = try lab.space
        let handle = try space.pin(1..<3, write: true)
        let blocks = [handle.block(at: 0), handle.block(at: 1)]
        var revocations: [PinBatch.Revocation] = []
        space.leases.forEachOverlapping(1..<3) { batch in
            let revocation = batch.revoke()
            revocations.append(revocation)
            if revocation == .revoked(mustUnpin: true) { space.unpinRevoked(batch) }
        }
        #expect(revocations == [.revoked(mustUnpin: true)])
        let revoked = handle.isRevoked
        #expect(revoked)
        for block in blocks { #expect(lab.dax.pins.pinCount(block) == 0, "the revoker dropped the pins") }
        handle.unpin()
        for block in blocks { #expect(lab.dax.pins.pinCount(block) == 0, "the unpin dropped them again") }
        #expect(space.leaseList.isEmpty)
        #else
        try Test.cancel(testHooksMissing)
        #endif
    }
}
