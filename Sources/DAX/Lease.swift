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
/// bits 16-31 count DMA writes in flight (what a revocation fences), bits 32 and up count
/// breakers holding the batch (each keeps it from being recycled, none waits for another).
final class PinBatch: @unchecked Sendable {
    static let pinnedBit: UInt64 = 1
    static let revokedBit: UInt64 = 2
    static let releasedBit: UInt64 = 4
    static let notifiedBit: UInt64 = 8
    /// One DMA write in flight.
    static let writing: UInt64 = 1 << 16
    /// One breaker or revoker holding the batch.
    static let holding: UInt64 = 1 << 32

    static func writesInFlight(_ state: UInt64) -> UInt64 { (state >> 16) & 0xFFFF }

    // Written by the pinning thread before the batch enters its address space's lease table (a
    // mutex) and the pinned bit is set; read by others only after taking it from that table.
    var space: AddressSpace?
    var pages: Range<Int> = 0..<0
    /// The pinned blocks: a raw buffer (no copy-on-write or exclusivity checks on the pin path),
    /// `capacity` long, the first `count` in use.
    private(set) var blocks: UnsafeMutablePointer<UInt32>
    private(set) var capacity: Int
    var count = 0
    var holder: LeaseHolder?
    var leaseID: UInt64 = 0
    let state = ManagedAtomic<UInt64>(0)

    init() {
        self.capacity = 512
        self.blocks = .allocate(capacity: 512)
    }

    deinit { self.blocks.deallocate() }

    /// Makes room for `pages` blocks (cold: only batches over 512 pages grow).
    func reserve(_ pages: Int) {
        guard pages > self.capacity else { return }
        self.blocks.deallocate()
        self.capacity = pages
        self.blocks = .allocate(capacity: pages)
    }

    /// The pinned blocks, for loops that unpin them.
    var pinned: UnsafeBufferPointer<UInt32> { UnsafeBufferPointer(start: self.blocks, count: self.count) }

    var info: LeaseInfo {
        let state = self.state.load(ordering: .acquiring)
        return LeaseInfo(
            id: self.leaseID, file: self.space!.id, pages: self.pages, breaking: state & Self.notifiedBit != 0,
            revoked: state & Self.revokedBit != 0)
    }

    /// Waits until no DMA write is in flight and no breaker holds the batch; short: each is one
    /// block copy, or one notification and unpin loop.
    func waitUntilAlone() {
        while self.state.load(ordering: .acquiring) >= Self.writing { sched_yield() }
    }

    /// Waits until the DMA writes in flight have finished (a revoker, after setting the revoked bit).
    func waitForWrites() {
        while Self.writesInFlight(self.state.load(ordering: .acquiring)) > 0 { sched_yield() }
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

    /// The batches whose range overlaps `pages`, each held (so it cannot be recycled) until the
    /// caller drops its hold.
    func holdOverlapping(_ pages: Range<Int>) -> [PinBatch] {
        self.active.withLock { batches in
            batches.filter { $0.pages.overlaps(pages) }.map { batch in
                batch.state.wrappingIncrement(by: PinBatch.holding, ordering: .acquiringAndReleasing)
                return batch
            }
        }
    }
}
