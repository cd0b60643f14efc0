import CRing
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// An io_uring with a sparse table of fixed buffers: the kernel's own long-term pins and writes.
/// Registering a window range in a slot is `pin_user_pages(FOLL_WRITE | FOLL_LONGTERM)` on its
/// pages: the kernel then holds the *pages*, not the file offsets, which is the seed's problem.
/// `IORING_OP_READ_FIXED` into the range is the kernel writing into them (a device's DMA).
///
/// One ring per device thread, which alone submits on it; slots are taken and given back by
/// that thread, and a revoker (another thread) may only `defuse` a slot: registration calls
/// are serialized by the kernel.
public final class KernelRing: KernelRegistry, @unchecked Sendable {
    // `ring` is set once; `free` is behind its lock; `harmless` is a page nobody reads.
    private let ring: UnsafeMutableRawPointer
    private let free: Locked<[Int]>
    private let harmless: UnsafeMutableRawPointer
    public let slots: Int

    /// - Throws: `.notSupported` where io_uring is refused (a seccomp filter, an old kernel, or
    ///   io_uring_disabled), with the kernel's reason.
    public init(slots: Int = 16) throws(FSError) {
        guard let ring = CRing_create(8, UInt32(slots)) else {
            throw FSError(.notSupported, "io_uring is refused here: \(String(cString: strerror(errno)))")
        }
        self.ring = ring
        self.slots = slots
        self.free = Locked(Array((0..<slots).reversed()), rank: .kernelRegistrySlots)
        self.harmless = .allocate(byteCount: pageSize, alignment: pageSize)
        self.harmless.initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
    }

    deinit {
        CRing_destroy(self.ring)
        self.harmless.deallocate()
    }

    public var slotName: String { "fixed-buffer slot" }

    /// A free slot, or nil.
    public func take() -> Int? { self.free.withLock { $0.popLast() } }

    public func give(_ slot: Int) { self.free.withLock { $0.append(slot) } }

    /// Slots no pin holds now.
    public var freeSlots: Int { self.free.withLock { $0.count } }

    /// Registers `length` bytes at `address` in `slot`: the kernel pins the pages.
    /// - Throws: `.notSupported` (EOPNOTSUPP: fs-dax pages, which the kernel will not pin for
    ///   long: mainline's own answer to DMA versus truncate), `.busy` (EFAULT: the range is no
    ///   longer mapped), `.io` otherwise.
    public func register(slot: Int, address: UnsafeMutableRawPointer, length: Int) throws(FSError) {
        let result = CRing_update_buffer(self.ring, UInt32(slot), address, length)
        switch -result {
        case 0: return
        case EOPNOTSUPP:
            throw FSError(
                .notSupported,
                "the kernel refuses a long-term pin of these pages (EOPNOTSUPP): fs-dax pages are not pinned for long")
        case EFAULT: throw FSError(.busy, "the range was unmapped before the kernel could pin it (EFAULT)")
        default: throw FSError(.io, "io_uring buffer registration: \(String(cString: strerror(-result)))")
        }
    }

    /// Empties `slot`: the kernel unpins its pages (once the requests in flight on them finish).
    public func clear(_ slot: Int) {
        _ = CRing_update_buffer(self.ring, UInt32(slot), nil, 0)
    }

    /// Points `slot` at a page nobody reads: requests on the old range fail with EFAULT from now
    /// on, and the kernel drops the old pages once the requests in flight on them complete (the
    /// revocation of a lease, for real).
    public func defuse(_ slot: Int) {
        _ = CRing_update_buffer(self.ring, UInt32(slot), self.harmless, pageSize)
    }

    /// `IORING_OP_READ_FIXED`: the kernel reads `length` bytes at `offset` of `descriptor` into
    /// `address`, inside the buffer registered in `slot`; submitted and waited for.
    /// - Returns: the bytes read, or -errno (-EFAULT: the slot no longer holds that address).
    public func readFixed(
        from descriptor: Int32, offset: Int, into address: UnsafeMutableRawPointer, length: Int, slot: Int
    ) -> Int32 {
        CRing_read_fixed(self.ring, descriptor, UInt64(offset), address, UInt32(length), UInt32(slot))
    }
}
