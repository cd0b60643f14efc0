import Atomics
import CVerbs
import DAX
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// One RDMA device's loopback path (libibverbs; soft-RoCE's `rdma_rxe` in the guests): a
/// protection domain with two reliable-connected queue pairs connected to each other over the
/// port's own GID. Its memory registrations are a device's long-term kernel pins
/// (`KernelRegistry`): `ibv_reg_mr` of a pin's view is `ib_umem_get`, which pins the pages with
/// `FOLL_LONGTERM`; an RDMA WRITE posted on one queue pair to a region's rkey is executed by the
/// device (the kernel, for rxe) into the pages it pinned, and its work completion says it landed.
///
/// One port per device thread, which alone posts on it and registers; a revoker (another thread)
/// may `defuse` a slot: the region is deregistered, and later writes to its rkey complete with a
/// remote access error, landing nowhere.
public final class RDMAPort: KernelRegistry, @unchecked Sendable {
    // `port` is set once and used by the device thread (libibverbs' calls are thread-safe); each
    // slot's region is its `ibv_mr` pointer, 0 (none) or `deregistering` (a defuse and the
    // unpin's clear race: the one that takes the region deregisters it, the other waits until
    // it is gone, so neither returns before the region is); its rkey is set by the pinning
    // thread before the pin is published and kept after a defuse, so that the device's later
    // writes go to the deregistered region and are refused.
    private let port: OpaquePointer
    private let regions: [ManagedAtomic<UInt>]
    private let rkeys: [ManagedAtomic<UInt32>]
    private let free: Locked<[Int]>
    public let slots: Int
    /// The device's name (`rxe0`).
    public let name: String

    /// Opens `device` (nil: the first RDMA device here), port 1.
    /// - Throws: `.notSupported` with one line where there is no RDMA device (a kernel without
    ///   InfiniBand, no `rdma link` made) or it cannot be used; `.notFound` for a device not here.
    public init(device: String? = nil, slots: Int = 4) throws(FSError) {
        var reason = [CChar](repeating: 0, count: 256)
        guard let port = CVerbs_open(device, &reason, reason.count) else {
            let error = errno
            let message = Self.string(reason)
            if error == ENODEV, device != nil, !message.hasPrefix("no RDMA device here") {
                throw FSError(.notFound, message + " (`daxlab devices` lists the RDMA devices here)")
            }
            throw FSError(.notSupported, message)
        }
        self.port = port
        self.name = String(cString: CVerbs_name(port))
        self.slots = slots
        self.regions = (0..<slots).map { _ in ManagedAtomic(0) }
        self.rkeys = (0..<slots).map { _ in ManagedAtomic(0) }
        self.free = Locked(Array((0..<slots).reversed()), rank: .kernelRegistrySlots)
    }

    deinit {
        for slot in 0..<self.slots { self.deregister(slot) }
        CVerbs_close(self.port)
    }

    /// The names of the RDMA devices here (empty: none, as on a kernel without InfiniBand).
    public static var deviceNames: [String] {
        var buffer = [CChar](repeating: 0, count: 1024)
        guard CVerbs_device_names(&buffer, buffer.count) > 0 else { return [] }
        return Self.string(buffer).split(separator: " ").map(String.init)
    }

    /// The NUL-terminated text in `buffer`.
    private static func string(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var slotName: String { "RDMA memory-region slot" }

    public func take() -> Int? { self.free.withLock { $0.popLast() } }

    public func give(_ slot: Int) { self.free.withLock { $0.append(slot) } }

    public func register(slot: Int, address: UnsafeMutableRawPointer, length: Int) throws(FSError) {
        var region: UnsafeMutableRawPointer?
        var rkey: UInt32 = 0
        let result = CVerbs_register(self.port, address, length, 0, &region, &rkey)
        switch -result {
        case 0:
            self.rkeys[slot].store(rkey, ordering: .relaxed)
            let old = self.regions[slot].exchange(UInt(bitPattern: region), ordering: .acquiringAndReleasing)
            precondition(old == 0, "RDMAPort: slot \(slot) registered twice")
        case EOPNOTSUPP:
            throw FSError(
                .notSupported,
                "the kernel refuses an RDMA registration of these pages (ibv_reg_mr: EOPNOTSUPP): fs-dax pages are not pinned for long")
        case EFAULT: throw FSError(.busy, "the range was unmapped before the RDMA device could pin it (EFAULT)")
        case ENOMEM:
            throw FSError(
                .io, "ibv_reg_mr: \(String(cString: strerror(ENOMEM))) (run as root, or raise the locked-memory limit: ulimit -l)")
        default: throw FSError(.io, "ibv_reg_mr on \(self.name): \(String(cString: strerror(-result)))")
        }
    }

    public func clear(_ slot: Int) { self.deregister(slot) }

    public func defuse(_ slot: Int) { self.deregister(slot) }

    /// A slot's region while one caller deregisters it.
    private static let deregistering: UInt = 1

    /// Deregisters `slot`'s region, once, and returns when it is gone (whoever calls first
    /// deregisters; a second caller waits for it). The rkey stays.
    private func deregister(_ slot: Int) {
        while true {
            let region = self.regions[slot].load(ordering: .acquiring)
            if region == 0 { return }
            if region == Self.deregistering {
                sched_yield()
                continue
            }
            guard self.regions[slot].compareExchange(
                expected: region, desired: Self.deregistering, ordering: .acquiringAndReleasing
            ).exchanged else { continue }
            let result = CVerbs_deregister(UnsafeMutableRawPointer(bitPattern: region))
            // (It fails only with memory windows bound to the region, which daxlab never binds: a
            // region left registered would leave the revoked pin's writes landing.)
            precondition(result == 0, "ibv_dereg_mr on \(self.name): \(String(cString: strerror(-result)))")
            self.regions[slot].store(0, ordering: .releasing)
            return
        }
    }

    /// The buffer the writes are sent from (4 KiB, registered for local use).
    public var source: UnsafeMutableRawPointer { CVerbs_source(self.port) }

    /// An RDMA WRITE of the source buffer's `length` bytes to `address` in the region registered
    /// in `slot` (even after a defuse: then it is refused), posted and waited for.
    /// - Returns: `length` once it landed; -EFAULT when the device refused it (a remote access
    ///   error: the region is deregistered, nothing landed); -EIO or -ETIMEDOUT when it may or
    ///   may not have landed (another error completion, or none); -ENOTCONN when the port can no
    ///   longer write (nothing was posted).
    public func write(into address: UnsafeMutableRawPointer, length: Int, slot: Int) -> Int32 {
        var status: Int32 = 0
        return CVerbs_write(
            self.port, UInt64(UInt(bitPattern: address)), self.rkeys[slot].load(ordering: .relaxed), UInt32(length),
            &status)
    }

    /// The device's answer to an on-demand-paging registration (`IBV_ACCESS_ON_DEMAND`) of one
    /// page: nil when it accepts, else the refusal in words.
    public func onDemandPagingRefusal() -> String? {
        var capable: Int32 = 0
        let result = CVerbs_probe_on_demand(self.port, &capable)
        guard result != 0 else { return nil }
        return "\(self.name) refuses on-demand-paging registrations (ibv_reg_mr with IBV_ACCESS_ON_DEMAND: "
            + "\(String(cString: strerror(-result))); ODP \(capable != 0 ? "advertised" : "not advertised") for RC writes)"
    }
}
