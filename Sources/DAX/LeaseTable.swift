import DaxlabSupport

/// A file's leases: the pin batches that hold pages of it (FL_ALLOCATED-style: each pin batch
/// records its lease before it pins). Listing and breaking take its mutex; pinning takes it
/// once per batch.
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

    /// Runs `body` on each batch whose range overlaps `pages`, under the table's mutex (so none
    /// of them can end and be recycled meanwhile).
    func forEachOverlapping(_ pages: Range<Int>, _ body: (PinBatch) -> Void) {
        self.active.withLock { batches in
            for batch in batches where batch.pages.overlaps(pages) { body(batch) }
        }
    }

    /// The batches whose range overlaps `pages`, each held (so it cannot be recycled) until the
    /// caller calls `unhold()` on it.
    func holdOverlapping(_ pages: Range<Int>) -> [PinBatch] {
        self.active.withLock { batches in
            batches.filter { $0.pages.overlaps(pages) }.map { batch in
                batch.hold()
                return batch
            }
        }
    }
}
