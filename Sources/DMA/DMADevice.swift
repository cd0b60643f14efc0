import Atomics
import DAX
import DaxFS

/// One simulated device: it pins a range of a file (faulting holes in, `pin_user_pages` with a
/// lease), writes 4 KiB into each pinned block straight through its pin (a non-temporal copy,
/// fenced against revocation), and unpins. It holds at most one pin at a time.
///
/// Devices ignore lease breaks (they only count them), as hardware in the middle of a transfer
/// does; `lease-break` then revokes them and their later writes are refused.
public final class DMADevice: LeaseHolder, @unchecked Sendable {
    // `current`, `cookies`, `sequence` and `buffer` are used only by the thread driving the
    // device (one at a time); the counters are atomic.
    public let index: Int
    let dax: DAXFileSystem
    let observer: (any DMAObserver)?
    let statistics: DMAStatistics
    private var current: PinHandle?
    private var file = FileID(inode: 0, generation: 0)
    private var cookies: [UInt64] = []
    /// The blocks of the pin held now (empty with none).
    public private(set) var pinnedBlocks: [UInt32] = []
    private var sequence: UInt64 = 0
    private let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
    /// Completed pin-write-unpin cycles: progress, for a watchdog.
    public let cycles = ManagedAtomic<Int>(0)

    public init(index: Int, dax: DAXFileSystem, observer: (any DMAObserver)?, statistics: DMAStatistics) {
        self.index = index
        self.dax = dax
        self.observer = observer
        self.statistics = statistics
        self.buffer.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: index + 1), count: 4096)
        self.cookies.reserveCapacity(512)
        self.pinnedBlocks.reserveCapacity(512)
    }

    deinit {
        precondition(self.current == nil, "DMADevice \(self.index) dropped while holding a pin")
        self.buffer.deallocate()
    }

    public func leaseBroken(_ lease: LeaseInfo) {
        self.statistics.leaseBreaks.wrappingIncrement(ordering: .relaxed)
    }

    /// Pins `pages` of `file` for writing (holes are faulted in as new blocks).
    /// - Throws: what `AddressSpace.pin` throws (the range was truncated away, no space, the
    ///   lease revoked while pinning); nothing is pinned then.
    public func pin(_ file: FileID, pages: Range<Int>) throws(FSError) {
        precondition(self.current == nil, "DMADevice \(self.index) pins twice")
        let handle: PinHandle
        do { handle = try self.dax.open(file).pin(pages, write: true, holder: self) } catch {
            self.statistics.pinFailures.wrappingIncrement(ordering: .relaxed)
            throw error
        }
        self.statistics.pins.wrappingIncrement(ordering: .relaxed)
        self.statistics.pinnedPages.wrappingIncrement(by: handle.count, ordering: .relaxed)
        self.file = file
        self.cookies.removeAll(keepingCapacity: true)
        self.pinnedBlocks.removeAll(keepingCapacity: true)
        let lease = handle.lease.id
        for index in 0..<handle.count {
            self.pinnedBlocks.append(handle.block(at: index))
            self.cookies.append(
                self.observer?.didPin(file, page: pages.lowerBound + index, block: handle.block(at: index), lease: lease)
                    ?? 0)
        }
        self.current = consume handle
    }

    /// Whether the device holds a pin now, and whether its lease was revoked.
    public var isPinned: Bool { self.current != nil }
    public var isRevoked: Bool { self.current?.isRevoked ?? false }

    /// One transfer: writes every pinned page once, each drained before the next.
    /// - Returns: how many writes landed (the others were refused: the lease was revoked).
    @discardableResult
    public func transfer() -> Int {
        guard let handle = self.current.take() else { return 0 }
        let landed = self.transfer(through: handle)
        self.current = consume handle
        return landed
    }

    private func transfer(through handle: borrowing PinHandle) -> Int {
        let first = handle.pages.lowerBound
        let lease = handle.lease.id
        var landed = 0
        for index in 0..<handle.count {
            self.sequence += 1
            let write = DMAWrite(
                file: self.file, page: first + index, device: self.index, sequence: self.sequence, lease: lease,
                cookie: self.cookies[index])
            self.observer?.fill(self.buffer, for: write)
            let observer = self.observer
            if handle.write(at: index, from: self.buffer, count: 4096, whileFenced: { block in
                observer?.didWrite(write, block: block, landed: true)
            }) {
                landed += 1
                self.statistics.writes.wrappingIncrement(ordering: .relaxed)
            } else {
                observer?.didWrite(write, block: handle.block(at: index), landed: false)
                self.statistics.refusedWrites.wrappingIncrement(ordering: .relaxed)
            }
        }
        return landed
    }

    /// Drops the pin (ends the lease).
    public func unpin() {
        guard let handle = self.current.take() else { return }
        self.pinnedBlocks.removeAll(keepingCapacity: true)
        handle.unpin()
        self.cycles.wrappingIncrement(ordering: .relaxed)
    }
}

/// Counters the devices of an engine keep (relaxed atomics).
public final class DMAStatistics: Sendable {
    public let pins = ManagedAtomic<Int>(0)
    public let pinnedPages = ManagedAtomic<Int>(0)
    public let writes = ManagedAtomic<Int>(0)
    /// Writes refused after a revocation: fenced, never landed.
    public let refusedWrites = ManagedAtomic<Int>(0)
    /// Pins that failed (the range was truncated away first, or no space for a hole).
    public let pinFailures = ManagedAtomic<Int>(0)
    /// Lease-break notices received.
    public let leaseBreaks = ManagedAtomic<Int>(0)
    public init() {}
}
