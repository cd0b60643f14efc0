import DaxFS

/// What holds a device's long-term kernel pins: a table of slots, each the registration of one
/// range of a pin's view with the kernel (`pin_user_pages(FOLL_WRITE | FOLL_LONGTERM)` on its
/// pages), which the kernel then writes into for as long as it holds them. An io_uring's sparse
/// fixed-buffer table (`KernelRing`) is one; an RDMA device's memory registrations (the DMA
/// layer's `RDMAPort`) are another.
///
/// The pinning thread takes a slot, registers the view in it, and at the unpin clears it and
/// gives it back. A revoker (another thread, holding no file lock) may `defuse` a slot while the
/// device writes through it: from its return on, the kernel refuses writes through the slot's old
/// registration (they land nowhere), and it lets the pages go once the transfers in flight on
/// them finish. A slot defused, then cleared, is cleared once.
public protocol KernelRegistry: AnyObject, Sendable {
    /// A free slot, or nil.
    func take() -> Int?
    /// Gives `slot` back (cleared).
    func give(_ slot: Int)
    /// Registers `length` bytes at `address` in `slot`: the kernel pins the pages.
    /// - Throws: `.notSupported` (EOPNOTSUPP: pages the kernel will not pin for long, as fs-dax
    ///   pages), `.busy` (EFAULT: the range is not mapped, or no longer), `.io` otherwise.
    func register(slot: Int, address: UnsafeMutableRawPointer, length: Int) throws(FSError)
    /// Empties `slot` (the unpin): the kernel lets the pages go once the transfers in flight on
    /// them finish.
    func clear(_ slot: Int)
    /// Revokes `slot`'s registration (a lease's revocation, for real): later writes through it
    /// fail without landing. The slot stays taken until `clear` and `give`.
    func defuse(_ slot: Int)
    /// What a slot is, for messages ("fixed-buffer slot", "memory region").
    var slotName: String { get }
}
