import Synchronization

/// The layer's "unmounting" flag, shared by reference with every address space: set by the
/// unmount's final layout break, checked by every pin and every fault that would map something
/// new. A final class over the standard library's `Atomic`, so the check inlines to one load
/// (swift-atomics' `ManagedAtomic` is an open class: each access from another type went through
/// a virtual call to its storage's address).
final class UnmountFlag: Sendable {
    private let raised = Atomic<Bool>(false)

    /// Whether an unmount is under way (acquiring: what the unmount did before it raised the
    /// flag is seen by whoever sees the flag).
    @inline(__always)
    var isRaised: Bool { self.raised.load(ordering: .acquiring) }

    /// Raised before the unmount's first scan (sequentially consistent: ordered before its loads
    /// of the leases and pin counts, against a pinner's entry and its check of this flag).
    func raise() { self.raised.store(true, ordering: .sequentiallyConsistent) }

    /// Lowered again when the unmount fails: pins are allowed again.
    func lower() { self.raised.store(false, ordering: .releasing) }
}
