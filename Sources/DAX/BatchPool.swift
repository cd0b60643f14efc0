import Atomics
import CShims

/// Recycled pin batches, so that pinning allocates nothing once warm.
///
/// Lock-free: each slot, a cache line of its own, holds at most one batch, and a batch enters or
/// leaves a slot with a single atomic compare-exchange or exchange. At every moment a batch is
/// owned by exactly one side (a slot or a thread), and nothing links batches to one another, so
/// there is no ABA problem. A thread starts at its CPU's slot, so threads on different CPUs do
/// not share lines. A full pool lets a returned batch go (ARC frees it).
///
/// The pool hands out and takes back one strong reference per batch, unmanaged: the reference a
/// slot held becomes the lease's (the lease table names it without retaining it again), and the
/// lease gives it back here. A pin and an unpin touch no reference count for the batch.
///
/// A batch holds its layer, whose pool this is (`PinBatch.layer`): `close` (the unmount) breaks
/// that cycle. From then on the pool keeps nothing: what it held goes at once, and a batch given
/// back later (a pin that outlived the unmount) goes too.
final class BatchPool: @unchecked Sendable {
    private static let slots = 128
    /// Words per slot: 64 bytes.
    private static let stride = 8
    private let words: UnsafeMutablePointer<UnsafeAtomic<UInt>.Storage>
    private let closed = ManagedAtomic<Bool>(false)

    init() {
        self.words = .allocate(capacity: Self.slots * Self.stride)
        self.words.initialize(repeating: UnsafeAtomic<UInt>.Storage(0), count: Self.slots * Self.stride)
    }

    deinit {
        self.close()
        self.words.deallocate()
    }

    /// Lets every pooled batch go, and every batch given back from now on. A pooled batch keeps
    /// its layer and its last address space, which keep this pool: the unmount closes it, which
    /// breaks those cycles. A `put` that races with the close finds the flag set after its
    /// batch entered a slot (both sequentially consistent), or the close finds the batch.
    func close() {
        self.closed.store(true, ordering: .sequentiallyConsistent)
        for slot in 0..<Self.slots { self.empty(self.slot(slot)) }
    }

    /// Takes whatever `slot` holds and lets it go: whoever exchanges a batch out owns it.
    private func empty(_ slot: UnsafeAtomic<UInt>) {
        let bits = slot.exchange(0, ordering: .sequentiallyConsistent)
        if bits != 0 { Self.batch(bits).release() }
    }

    /// A batch from the pool, or a new one: one strong reference, the caller's to give back
    /// with `put` (or to release).
    @inline(__always)
    func take() -> Unmanaged<PinBatch> {
        let start = Self.startSlot()
        for offset in 0..<Self.slots {
            let slot = self.slot((start + offset) & (Self.slots - 1))
            // Read before writing, so a scan over empty slots dirties no cache line.
            guard slot.load(ordering: .relaxed) != 0 else { continue }
            let bits = slot.exchange(0, ordering: .acquiring)
            if bits != 0 { return Self.batch(bits) }
        }
        return Unmanaged.passRetained(PinBatch())
    }

    /// Gives back the reference `take` handed out; the caller must not touch the batch afterwards.
    @inline(__always)
    func put(_ reference: Unmanaged<PinBatch>) {
        let bits = UInt(bitPattern: reference.toOpaque())
        let start = Self.startSlot()
        for offset in 0..<Self.slots {
            let slot = self.slot((start + offset) & (Self.slots - 1))
            guard slot.load(ordering: .relaxed) == 0 else { continue }
            if slot.compareExchange(expected: 0, desired: bits, ordering: .sequentiallyConsistent).exchanged {
                // (On x86-64 a plain load: the compare-exchange before it is a full barrier.)
                if self.closed.load(ordering: .sequentiallyConsistent) { self.empty(slot) }
                return
            }
        }
        reference.release()
    }

    @inline(__always)
    private func slot(_ index: Int) -> UnsafeAtomic<UInt> {
        UnsafeAtomic(at: self.words + index * Self.stride)
    }

    @inline(__always)
    private static func batch(_ bits: UInt) -> Unmanaged<PinBatch> {
        Unmanaged.fromOpaque(UnsafeRawPointer(bitPattern: bits)!)
    }

    /// The calling thread's CPU's slot (glibc answers from the rseq area, without a system call).
    @inline(__always)
    private static func startSlot() -> Int {
        Int(CShims_current_cpu()) & (Self.slots - 1)
    }
}
