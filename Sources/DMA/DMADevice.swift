import Atomics
import DAX
import DaxFS

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// One device: it pins a range of a file (faulting holes in, `pin_user_pages` with a lease),
/// writes 4 KiB into each pinned block, and unpins. It holds at most one pin at a time. Its
/// `kind` says who writes:
///
/// - `simulated`: the device's thread, straight through its pin (a non-temporal copy, fenced
///   against revocation: a revoked pin's writes are refused);
/// - `kernel-longterm`, `kernel-direct`, `rdma`: the kernel or the RDMA device
///   (`KernelTransport`), into the pin's view of the blocks, which it pinned for the whole pin
///   (an io_uring fixed buffer, an RDMA memory region) or pins for each I/O. The write is
///   submitted whatever the lease's state; after a revocation or a truncate's unmap the kernel
///   itself refuses it (EFAULT), and it is counted refused.
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
    /// An on-demand-paging device's mirror of its range, instead of a pin (`DeviceMirror`).
    var mirror: DeviceMirror?
    /// Whether the device pages on demand (policy `odp`): translations, never pins.
    public let onDemandPaging: Bool
    var mirrors: UInt64 = 0
    var file = FileID(inode: 0, generation: 0)
    var cookies: [UInt64] = []
    /// The blocks of the pin held now, or mirrored now (empty with none).
    public internal(set) var pinnedBlocks: [UInt32] = []
    var sequence: UInt64 = 0
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: pageSize)
    /// The kernel's machinery, for a kernel device.
    private let transport: KernelTransport?
    public var kind: DeviceKind { self.transport?.kind ?? .simulated }
    /// How long its pins are meant to last (a kernel device's kind decides it: `kernel-direct`
    /// pins are short-term, `kernel-longterm` ones long-term).
    public let term: PinTerm
    /// Completed pin-write-unpin cycles: progress, for a watchdog.
    public let cycles = ManagedAtomic<Int>(0)

    /// - Parameters:
    ///   - kind: who writes (see the type's comment).
    ///   - term: the term of a simulated device's pins (a kernel device's kind implies its own).
    ///   - onDemandPaging: mirror ranges instead of pinning them (a simulated device only).
    ///   - rdmaDevice: the RDMA device an `rdma` device uses (nil: the first here).
    ///   - sourceDirectory: where a `kernel-direct` device keeps its (unnamed) source file: a
    ///     directory on a block device.
    /// - Throws: for a kernel device, `.notSupported` where io_uring or O_DIRECT is refused here
    ///   (one line, with the reason), `.notFound` for a missing source directory.
    public init(
        index: Int, dax: DAXFileSystem, observer: (any DMAObserver)?, statistics: DMAStatistics,
        kind: DeviceKind = .simulated, term: PinTerm = .longTerm, onDemandPaging: Bool = false,
        sourceDirectory: String = DeviceKind.defaultSourceDirectory, rdmaDevice: String? = nil
    ) throws(FSError) {
        if onDemandPaging && kind.isKernel {
            throw FSError(.invalidArgument, "\(kind) devices pin: only simulated devices page on demand")
        }
        self.term = kind.impliedTerm ?? term
        self.onDemandPaging = onDemandPaging
        self.transport = kind.isKernel
            ? try KernelTransport(kind: kind, device: index, sourceDirectory: sourceDirectory, rdmaDevice: rdmaDevice) : nil
        self.index = index
        self.dax = dax
        self.observer = observer
        self.statistics = statistics
        self.buffer.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: index + 1), count: pageSize)
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

    /// Pins `pages` of `file` for writing (holes are faulted in as new blocks); a kernel device
    /// takes the kernel's pin too.
    /// - Throws: what `AddressSpace.pin` throws (the range was truncated away, no space, the
    ///   lease revoked while pinning; `.notSupported` when a long-term pin is refused, by the
    ///   kernel on fs-dax or by policy `mainline`); nothing is pinned then.
    public func pin(_ file: FileID, pages: Range<Int>) throws(FSError) {
        precondition(self.current == nil && self.mirror == nil, "DMADevice \(self.index) pins twice")
        if self.onDemandPaging { return try self.mirror(file, pages: pages) }
        let handle: PinHandle
        do {
            handle = try self.dax.open(file).pin(
                pages, write: true, holder: self, term: self.transport == nil ? self.term : nil,
                kernel: self.transport?.kernelPin ?? .none)
        } catch {
            if error.code == .notSupported {
                self.statistics.longTermRefusals.wrappingIncrement(ordering: .relaxed)
            } else {
                self.statistics.pinFailures.wrappingIncrement(ordering: .relaxed)
            }
            throw error
        }
        self.statistics.pins.wrappingIncrement(ordering: .relaxed)
        if self.term == .longTerm { self.statistics.longTermPins.wrappingIncrement(ordering: .relaxed) }
        if self.transport != nil { self.statistics.kernelPins.wrappingIncrement(ordering: .relaxed) }
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
    public var isPinned: Bool { self.current != nil || self.mirror != nil }
    public var isRevoked: Bool { self.current?.isRevoked ?? false }

    /// One transfer: writes every pinned page once, each drained before the next.
    /// - Returns: how many writes landed (the others were refused: the lease was revoked).
    @discardableResult
    public func transfer() -> Int {
        if self.mirror != nil { return self.transferThroughMirror() }
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
            let done: Bool
            if let transport = self.transport {
                guard let kernelDone = self.kernelWrite(write, at: index, through: handle, transport) else { continue }
                done = kernelDone
            } else {
                do {
                    done = try handle.write(at: index, from: self.buffer, count: pageSize, whileFenced: { block in
                        observer?.didWrite(write, block: block, landed: true)
                    })
                } catch {
                    // Landed (the observer heard), but not durable: counted apart.
                    self.statistics.persistErrors.wrappingIncrement(ordering: .relaxed)
                    done = true
                }
            }
            if done {
                landed += 1
                self.statistics.writes.wrappingIncrement(ordering: .relaxed)
            } else {
                observer?.didWrite(write, block: handle.block(at: index), landed: false)
                self.statistics.refusedWrites.wrappingIncrement(ordering: .relaxed)
            }
        }
        return landed
    }

    /// One write done by the kernel: the tagged block is staged in the source file, then the
    /// kernel copies it into the pin's view inside the revocation fence, and the oracle hears of
    /// it there, at its completion.
    /// - Returns: true when it landed, false when the kernel refused it (EFAULT: the range was
    ///   unmapped or the pin revoked), nil after an error of another kind (counted; the oracle
    ///   was told it landed if any byte may have).
    private func kernelWrite(
        _ write: DMAWrite, at index: Int, through handle: borrowing PinHandle, _ transport: KernelTransport
    ) -> Bool? {
        guard transport.stage(self.buffer) == 0 else {
            self.statistics.kernelErrors.wrappingIncrement(ordering: .relaxed)
            return nil
        }
        let block = handle.block(at: index)
        let slot = handle.kernelSlot
        let observer = self.observer
        let rdma = transport.rdma != nil
        let result = handle.kernelWrite(at: index) { address in
            let result = transport.write(into: address, slot: slot)
            // An RDMA WRITE that failed otherwise than by a remote access error (refused, nothing
            // landed) or the port's being gone (nothing posted) may have landed: the oracle hears
            // of it as landed, while the fence still holds the block.
            if result > 0 || (rdma && result != -EFAULT && result != -ENOTCONN) {
                observer?.didWrite(write, block: block, landed: true)
            }
            return result
        }
        if rdma {
            (result == Int32(pageSize) ? self.statistics.rdmaWrites : self.statistics.rdmaErrors)
                .wrappingIncrement(ordering: .relaxed)
        }
        switch result {
        case Int32(pageSize):
            self.statistics.kernelWrites.wrappingIncrement(ordering: .relaxed)
            return true
        case -EFAULT:
            return false
        default:
            self.statistics.kernelErrors.wrappingIncrement(ordering: .relaxed)
            return nil
        }
    }

    /// Drops the pin (ends the lease).
    public func unpin() {
        if self.mirror != nil { return self.unsubscribe() }
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
    /// Pins that took the kernel's pin too, and writes the kernel landed.
    public let kernelPins = ManagedAtomic<Int>(0)
    public let kernelWrites = ManagedAtomic<Int>(0)
    /// Long-term pins refused (EOPNOTSUPP): by the kernel (fs-dax pages), or by policy `mainline`.
    public let longTermRefusals = ManagedAtomic<Int>(0)
    /// Long-term pins granted (of `pins`): what `mainline` must never grant.
    public let longTermPins = ManagedAtomic<Int>(0)
    /// Kernel writes that failed otherwise (an I/O error, a short read).
    public let kernelErrors = ManagedAtomic<Int>(0)
    /// RDMA devices: RDMA WRITEs whose work completion was a success (each is a kernel write
    /// too), and those that did not complete successfully: a remote access error (the region was
    /// deregistered) is a refused write; any other error completion, a timeout or a failed post
    /// is a kernel error too.
    public let rdmaWrites = ManagedAtomic<Int>(0)
    public let rdmaErrors = ManagedAtomic<Int>(0)
    /// Simulated writes that landed but could not be made durable (the image's msync failed).
    public let persistErrors = ManagedAtomic<Int>(0)
    /// On-demand paging: writes that met a zapped translation and faulted the range in again.
    public let deviceRefaults = ManagedAtomic<Int>(0)
    public init() {}
}
