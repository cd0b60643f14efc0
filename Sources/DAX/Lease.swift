import Atomics
import DaxFS

/// Whoever holds pins under a lease: told when the file system wants the range back (the SIGIO
/// that breaks an FL_ALLOCATED / F_LONGTERM lease).
public protocol LeaseHolder: AnyObject, Sendable {
    /// Called once per lease, from the truncating thread, without any file-system lock held.
    /// A cooperative holder unpins soon; one that does not is revoked when the lease-break time
    /// runs out.
    func leaseBroken(_ lease: LeaseInfo)
}

/// A lease as the lease table lists it.
public struct LeaseInfo: Sendable, Equatable, CustomStringConvertible {
    public var id: UInt64
    public var file: FileID
    public var pages: Range<Int>
    /// The holder was told to give the range back.
    public var breaking: Bool
    /// The pins were revoked: writes through the handle are refused.
    public var revoked: Bool

    public var description: String {
        "lease \(self.id) on \(self.file) pages \(self.pages.lowerBound)..<\(self.pages.upperBound)"
            + (self.revoked ? " (revoked)" : self.breaking ? " (breaking)" : "")
    }
}

/// One pin batch: the blocks it pinned, its lease, and the state word that fences DMA writes
/// against revocation. Pooled and reused, so pinning allocates nothing once warm.
///
/// State word: bit 0 pinned, bit 1 revoked, bit 2 released (pins dropped), bit 3 break notified;
/// bits 16 and up count threads inside the batch (a DMA write, or a revoker at work).
final class PinBatch: @unchecked Sendable {
    static let pinnedBit: UInt64 = 1
    static let revokedBit: UInt64 = 2
    static let releasedBit: UInt64 = 4
    static let notifiedBit: UInt64 = 8
    static let inside: UInt64 = 1 << 16

    // Written by the pinning thread before the batch enters its address space's lease table (a
    // mutex) and the pinned bit is set; read by others only after taking it from that table.
    var space: AddressSpace?
    var pages: Range<Int> = 0..<0
    var blocks: [UInt32] = []
    var holder: LeaseHolder?
    var leaseID: UInt64 = 0
    let state = ManagedAtomic<UInt64>(0)

    init() { self.blocks.reserveCapacity(512) }

    var info: LeaseInfo {
        let state = self.state.load(ordering: .acquiring)
        return LeaseInfo(
            id: self.leaseID, file: self.space!.id, pages: self.pages, breaking: state & Self.notifiedBit != 0,
            revoked: state & Self.revokedBit != 0)
    }

    /// Waits until no other thread is inside the batch (a DMA write or a revoker); short: each is
    /// one block copy or one unpin loop.
    func waitUntilAlone() {
        while self.state.load(ordering: .acquiring) >= Self.inside { sched_yield() }
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// A file's leases: the pin batches that hold pages of it. Listing and breaking take its mutex;
/// pinning takes it once per batch.
final class LeaseTable: Sendable {
    private let active = Locked<[PinBatch]>([])

    init() { self.active.withLock { $0.reserveCapacity(64) } }

    func add(_ batch: PinBatch) { self.active.withLock { $0.append(batch) } }

    func remove(_ batch: PinBatch) {
        self.active.withLock { batches in
            if let index = batches.firstIndex(where: { $0 === batch }) { batches.swapAt(index, batches.count - 1) }
            batches.removeLast()
        }
    }

    var list: [LeaseInfo] { self.active.withLock { $0.map(\.info) } }

    /// The batches whose range overlaps `pages`, each entered (its inside count raised) so it
    /// cannot be recycled until `leave`.
    func enterOverlapping(_ pages: Range<Int>) -> [PinBatch] {
        self.active.withLock { batches in
            batches.filter { $0.pages.overlaps(pages) }.map { batch in
                batch.state.wrappingIncrement(by: PinBatch.inside, ordering: .acquiringAndReleasing)
                return batch
            }
        }
    }
}
