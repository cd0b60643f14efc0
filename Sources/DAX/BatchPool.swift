import Atomics
import CShims
import Synchronization

/// Recycled pin batches, so that pinning allocates nothing once warm.
///
/// Two levels. **A cell per thread** (the first `cells` threads by `CShims_thread_index`, each a
/// cache line of its own) holds the batch its thread gave back last: a thread that pins and
/// unpins takes it back with plain loads and stores, no locked instruction, as the kernel's
/// per-CPU page lists serve a CPU's frees to its next allocation. Only the cell's thread fills
/// it; the only other hand in it is `close`'s, which empties it (below). **Shared slots**
/// (`slots`, a cache line each) take the rest: a batch enters or leaves one with a single atomic
/// compare-exchange or exchange, and a thread starts at its CPU's slot, so threads on different
/// CPUs do not share lines. At every moment a batch is owned by exactly one side (a cell, a slot
/// or a thread), and nothing links batches to one another, so there is no ABA problem. A full
/// pool lets a returned batch go (ARC frees it).
///
/// The pool hands out and takes back one strong reference per batch, unmanaged: the reference a
/// cell or slot held becomes the lease's (the lease table names it without retaining it again),
/// and the lease gives it back here. A pin and an unpin touch no reference count for the batch.
///
/// A batch holds its layer, whose pool this is (`PinBatch.layer`): `close` (the unmount) breaks
/// that cycle. From then on the pool keeps nothing: what it held goes at once, and a batch given
/// back later (a pin that outlived the unmount) goes too. Against a cell's owner, `close` decides
/// by a Dekker pair with the asymmetric fence (`AsymmetricFence`): the owner marks its cell busy,
/// then looks at `closed` (a compiler barrier between); the closer sets `closed`, calls
/// membarrier, then empties every cell not marked busy, by exchange. Either the owner's mark was
/// visible to the closer, which leaves that cell alone, or the owner's look came after the fence
/// and saw `closed`, so it empties its cell itself (by exchange) instead of touching it with
/// plain accesses: never both plainly. An owner that stored a batch looks at `closed` once more
/// after unmarking its cell, so a batch stored while the closer passed by does not stay. Where
/// membarrier is missing the cells are not used (the shared slots alone, as before them).
final class BatchPool: @unchecked Sendable {
    private static let slots = 128
    /// Threads with a cell of their own (a thread whose index is past it uses the slots alone).
    static let cells = 64
    /// Words per slot or cell: 64 bytes. A cell's word 0 is its batch, word 1 its busy mark.
    private static let stride = 8
    private let words: UnsafeMutablePointer<UnsafeAtomic<UInt>.Storage>
    private let cellWords: UnsafeMutablePointer<UnsafeAtomic<UInt>.Storage>
    private let closed = Atomic<Bool>(false)
    /// Whether the cells are in use: the asymmetric fence is (see above).
    let usesCells: Bool

    #if DAXLAB_TEST_HOOKS
    /// Where a cell's owner is (tests make `close` run there): in a take, between the busy mark
    /// and the look at `closed` (`.takeMarked`), or after a look that found the pool open, before
    /// the batch is taken (`.takeLooked`); in a put, after such a look, before the batch is
    /// stored (`.putLooked`).
    enum CellStage { case takeMarked, takeLooked, putLooked }
    nonisolated(unsafe) var cellHook: ((CellStage) -> Void)?
    #endif

    /// - Parameter usesCells: give each thread a cell (only where `AsymmetricFence.available`).
    init(usesCells: Bool) {
        self.words = .allocate(capacity: Self.slots * Self.stride)
        self.words.initialize(repeating: UnsafeAtomic<UInt>.Storage(0), count: Self.slots * Self.stride)
        self.cellWords = .allocate(capacity: Self.cells * Self.stride)
        self.cellWords.initialize(repeating: UnsafeAtomic<UInt>.Storage(0), count: Self.cells * Self.stride)
        self.usesCells = usesCells
    }

    deinit {
        self.close()
        self.words.deallocate()
        self.cellWords.deallocate()
    }

    /// Lets every pooled batch go, and every batch given back from now on. A pooled batch keeps
    /// its layer and its last address space, which keep this pool: the unmount closes it, which
    /// breaks those cycles. A `put` to the shared slots that races with the close finds the flag
    /// set after its batch entered a slot (both sequentially consistent), or the close finds the
    /// batch; a cell's owner and the close decide as the type's comment says.
    func close() {
        self.closed.store(true, ordering: .sequentiallyConsistent)
        if self.usesCells {
            AsymmetricFence.heavy()
            for index in 0..<Self.cells where self.busy(index).load(ordering: .acquiring) == 0 {
                self.empty(self.cellBatch(index))
            }
        }
        for slot in 0..<Self.slots { self.empty(self.slot(slot)) }
    }

    /// Takes whatever `word` holds and lets it go: whoever exchanges a batch out owns it.
    private func empty(_ word: UnsafeAtomic<UInt>) {
        let bits = word.exchange(0, ordering: .sequentiallyConsistent)
        if bits != 0 { Self.batch(bits).release() }
    }

    /// A batch from the pool, or a new one: one strong reference, the caller's to give back
    /// with `put` (or to release).
    @inline(__always)
    func take() -> Unmanaged<PinBatch> { self.take(thread: Int(CShims_thread_index())) }

    /// `take` for a caller that has the calling thread's index (`CShims_thread_index`) at hand
    /// already: the pin path, which indexes the lease table by it too.
    @inline(__always)
    func take(thread: Int) -> Unmanaged<PinBatch> {
        if let index = self.cell(ofThread: thread), let batch = self.takeFromCell(index) { return batch }
        return self.takeShared()
    }

    /// Gives back the reference `take` handed out; the caller must not touch the batch afterwards.
    @inline(__always)
    func put(_ reference: Unmanaged<PinBatch>) {
        if let index = self.cell(ofThread: Int(CShims_thread_index())), self.putInCell(index, reference) { return }
        self.putShared(reference)
    }

    // MARK: The calling thread's cell

    /// The cell of the thread whose index is `thread` (the calling thread's), where cells are in
    /// use and the thread has one.
    @inline(__always)
    private func cell(ofThread thread: Int) -> Int? {
        guard self.usesCells else { return nil }
        return thread < Self.cells ? thread : nil
    }

    /// The batch in this thread's cell, if there is one and the pool is open (closed: the cell is
    /// emptied here, and the caller takes from the shared slots).
    @inline(__always)
    private func takeFromCell(_ index: Int) -> Unmanaged<PinBatch>? {
        let batch = self.cellBatch(index)
        // (A hint only, before the mark: only this thread fills the cell, so an empty one stays
        // empty; the batch taken is the one loaded after the look at `closed`.)
        guard batch.load(ordering: .relaxed) != 0 else { return nil }
        let busy = self.busy(index)
        busy.store(1, ordering: .relaxed)
        AsymmetricFence.light()
        #if DAXLAB_TEST_HOOKS
        self.cellHook?(.takeMarked)
        #endif
        if self.closed.load(ordering: .relaxed) {
            busy.store(0, ordering: .releasing)
            self.empty(batch)
            return nil
        }
        #if DAXLAB_TEST_HOOKS
        self.cellHook?(.takeLooked)
        #endif
        let bits = batch.load(ordering: .acquiring)
        batch.store(0, ordering: .relaxed)
        busy.store(0, ordering: .releasing)
        return bits == 0 ? nil : Self.batch(bits)
    }

    /// Stores `reference` in this thread's cell if it is empty and the pool is open.
    /// - Returns: false when it did not (the caller gives it to the shared slots, which let it go
    ///   if the pool is closed).
    @inline(__always)
    private func putInCell(_ index: Int, _ reference: Unmanaged<PinBatch>) -> Bool {
        let batch = self.cellBatch(index)
        guard batch.load(ordering: .relaxed) == 0 else { return false }  // (only this thread fills it)
        let busy = self.busy(index)
        busy.store(1, ordering: .relaxed)
        AsymmetricFence.light()
        if self.closed.load(ordering: .relaxed) {
            busy.store(0, ordering: .releasing)
            return false
        }
        #if DAXLAB_TEST_HOOKS
        self.cellHook?(.putLooked)
        #endif
        batch.store(UInt(bitPattern: reference.toOpaque()), ordering: .releasing)
        busy.store(0, ordering: .releasing)
        AsymmetricFence.light()
        // A close that passed by while the cell was marked did not take this batch: let it go.
        if self.closed.load(ordering: .relaxed) { self.empty(batch) }
        return true
    }

    @inline(__always)
    private func cellBatch(_ index: Int) -> UnsafeAtomic<UInt> {
        UnsafeAtomic(at: self.cellWords + index * Self.stride)
    }

    @inline(__always)
    private func busy(_ index: Int) -> UnsafeAtomic<UInt> {
        UnsafeAtomic(at: self.cellWords + index * Self.stride + 1)
    }

    // MARK: The shared slots

    @inline(__always)
    private func takeShared() -> Unmanaged<PinBatch> {
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

    @inline(__always)
    private func putShared(_ reference: Unmanaged<PinBatch>) {
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
