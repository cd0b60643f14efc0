import DaxFS
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// The pins of one batch, as `pin_user_pages` returns them: `count` blocks, their addresses, and
/// a fenced write for DMA. Release with `unpin()`; a handle dropped without it stops the program
/// ("pin leaked"), since a leaked pin would keep its blocks busy forever.
///
/// `~Copyable`, holding its pooled batch unmanaged, so taking and dropping pins allocates nothing.
public struct PinHandle: ~Copyable {
    let batch: Unmanaged<PinBatch>

    init(_ batch: Unmanaged<PinBatch>) { self.batch = batch }

    private var object: PinBatch { self.batch.takeUnretainedValue() }

    /// Pages pinned (the batch's page range).
    public var pages: Range<Int> { self.object.pages }
    public var count: Int { self.object.count }
    public var lease: LeaseInfo { self.object.info }

    /// The block behind the `index`-th pinned page (0 for a read pin of a hole: the zero page).
    public func block(at index: Int) -> UInt32 {
        let batch = self.object
        precondition(index >= 0 && index < batch.count, "pin index out of range")
        return batch.blocks[index]
    }

    /// Whether the pins were revoked (lease-break): writes are refused from then on.
    public var isRevoked: Bool { self.object.isRevoked }

    /// For a kernel pin: the address of the `index`-th pinned block in the pin's view, where the
    /// kernel's I/O goes (unmapped once a truncate or a revocation took the range back).
    public func kernelAddress(at index: Int) -> UnsafeMutableRawPointer {
        let batch = self.object
        precondition(index >= 0 && index < batch.count, "pin index out of range")
        guard let view = batch.view else { preconditionFailure("kernelAddress of a pin without a kernel pin") }
        return view.address(page: index)
    }

    /// For a long-term kernel pin: the slot of its `KernelRegistry` that holds the range.
    public var kernelSlot: Int? { self.object.kernelRegistry == nil ? nil : self.object.kernelSlot }

    /// Runs a write the kernel does into the `index`-th pinned block, inside the revocation
    /// fence: a revoker waits for it to complete before it lets the blocks go. `body` gets the
    /// block's address in the pin's view, submits the I/O, waits for it and returns the bytes
    /// written or -errno. The write is submitted even after a revocation: the kernel itself
    /// refuses it then (EFAULT).
    ///
    /// For a short-term pin the page is faulted in (again, after a truncate unmapped it) as the
    /// kernel's GUP does, but only while the file still has the pinned block there and the pin
    /// is not revoked: with userfaultfd the kernel faults it through the fault service; without,
    /// an I/O that failed with EFAULT is tried again after this maps the page.
    public func kernelWrite(at index: Int, _ body: (UnsafeMutableRawPointer) -> Int32) -> Int32 {
        let batch = self.object
        precondition(index >= 0 && index < batch.count, "pin index out of range")
        guard let view = batch.view else { preconditionFailure("kernelWrite through a pin without a kernel pin") }
        let address = view.address(page: index)
        batch.enterFlight()
        defer { batch.endWrite() }
        var result = body(address)
        var tries = 0
        // (Another truncate may unmap the page again before the retried I/O reaches it: GUP
        // would fault again too. A few tries, then the write counts as refused.)
        while result == -EFAULT, tries < 8, batch.kernelRegistry == nil {
            if view.faults == nil {
                guard batch.space!.refault(batch, index: index) else { break }
            } else {
                // The kernel faulted the page through the fault service, which refused it (a
                // fence), or found it `PROT_NONE` while an unmap registered it again: a pin that
                // may still have its page tries once more, after that unmap, and the kernel
                // faults it again.
                guard !batch.isRevoked, !batch.isOrphaned else { break }
                batch.space!.waitForInvalidation()
            }
            result = body(address)
            tries += 1
        }
        return result
    }

    /// A device write into the `index`-th pinned block: a non-temporal copy of `count` bytes at
    /// `offset` in the block, made durable before it returns. Fenced against revocation: once the
    /// lease is revoked the write is refused (nothing lands) and this returns false.
    /// - Parameter whileFenced: runs after the write landed, still inside the fence, with the
    ///   block: a revocation (and so the truncate behind it) waits for it to return. The oracle
    ///   checks ownership here.
    /// - Returns: whether the write landed (false: refused, the lease was revoked).
    /// - Throws: `.io` when the bytes landed but could not be made durable (a mapping persisted
    ///   by msync whose write-back failed; pmem's stores do not fail): the block holds them, a
    ///   crash may lose them, and `whileFenced` has run, as for any write that landed.
    @inline(__always)
    public func write(
        at index: Int, offset: Int = 0, from source: UnsafeRawPointer, count: Int,
        whileFenced: ((UInt32) -> Void)? = nil
    ) throws(FSError) -> Bool {
        let batch = self.object
        guard batch.beginWrite() else { return false }
        defer { batch.endWrite() }
        precondition(index >= 0 && index < batch.count, "pin index out of range")
        let block = batch.blocks[index]
        precondition(block != 0 && offset >= 0 && offset + count <= pageSize, "write outside the pinned block")
        let mapping = batch.space!.mapping
        var failure: PmemError?
        do {
            try mapping.copy(to: Int(block) * pageSize + offset, from: source, count: count, flags: [.nonTemporal, .noDrain])
        } catch {
            failure = error
        }
        mapping.drain()
        whileFenced?(block)
        if let failure { throw FSError(failure) }
        return true
    }

    /// A device transfer into every pinned block in order, from `source` (4096 bytes per block):
    /// non-temporal copies, one drain at the end, as a DMA engine completes one descriptor chain.
    /// Fenced like `write(at:)`.
    /// - Returns: false (nothing landed) if the lease was revoked.
    /// - Throws: `.io` when the bytes of a block landed but could not be made durable (see
    ///   `write(at:)`): every block was written, the first such failure is reported.
    public func writeAll(from source: UnsafeRawPointer) throws(FSError) -> Bool {
        let batch = self.object
        guard batch.beginWrite() else { return false }
        defer { batch.endWrite() }
        let mapping = batch.space!.mapping
        var failure: PmemError?
        for index in 0..<batch.count {
            let block = batch.blocks[index]
            precondition(block != 0, "write into a read pin of a hole")
            do {
                try mapping.copy(
                    to: Int(block) * pageSize, from: source + index * pageSize, count: pageSize, flags: [.nonTemporal, .noDrain])
            } catch {
                failure = failure ?? error
            }
        }
        mapping.drain()
        if let failure { throw FSError(failure) }
        return true
    }

    /// Drops the pins (the analogue of `unpin_user_pages`) and ends the lease. After a
    /// revocation the pins are already gone; this only ends the lease.
    public consuming func unpin() {
        let lease = self.batch
        discard self
        lease._withUnsafeGuaranteedRef { batch in batch.owner!._withUnsafeGuaranteedRef { $0.release(batch) } }
    }

    deinit {
        fatalError("PinHandle dropped without unpin(): a leaked pin keeps its blocks busy forever")
    }
}
