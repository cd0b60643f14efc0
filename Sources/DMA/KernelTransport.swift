import CShims
import DAX
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// Which machinery does a device's writes.
public enum DeviceKind: String, CaseIterable, Sendable, CustomStringConvertible {
    /// daxlab's model of a device: a thread copying into the pinned block through daxlab's pin.
    case simulated
    /// The kernel, long-term: the pinned range is registered as an io_uring fixed buffer
    /// (`pin_user_pages(FOLL_LONGTERM)`, RDMA-like), and each write is an
    /// `IORING_OP_READ_FIXED` from a memfd: the kernel copies into the page it pinned.
    case kernelLongterm = "kernel-longterm"
    /// The kernel, short-term: each write is an O_DIRECT read from a file on a block device into
    /// the pinned range (`FOLL_PIN` for the one I/O, block-layer DMA into the page).
    case kernelDirect = "kernel-direct"
    /// An RDMA device (libibverbs; soft-RoCE in the guests), long-term: each pin registers the
    /// range as a memory region (`ibv_reg_mr`: `pin_user_pages(FOLL_LONGTERM)` in
    /// `ib_umem_get`), and each write is an RDMA WRITE the device executes into the pages it
    /// pinned, posted from a second queue pair of the same port (`RDMAPort`).
    case rdma

    public var description: String { self.rawValue }

    /// Whether the kernel does the device's pins and writes.
    public var isKernel: Bool { self != .simulated }

    /// The term of a kernel device's pins; nil for simulated devices (any term).
    public var impliedTerm: PinTerm? {
        switch self {
        case .simulated: nil
        case .kernelLongterm, .rdma: .longTerm
        case .kernelDirect: .shortTerm
        }
    }

    /// Checks that devices of this kind can run here (io_uring for long-term pins, O_DIRECT in
    /// `sourceDirectory` for short-term ones, an RDMA device for RDMA ones), before anything is
    /// formatted for them.
    /// - Throws: what `DMADevice.init` would throw.
    public func checkAvailable(sourceDirectory: String, rdmaDevice: String? = nil) throws(FSError) {
        guard self.isKernel else { return }
        _ = try KernelTransport(kind: self, device: 0, sourceDirectory: sourceDirectory, rdmaDevice: rdmaDevice)
    }

    /// Where a short-term device's source file goes unless told: a disk file system on most
    /// machines (tmpfs has no real O_DIRECT: it would copy, not pin).
    public static let defaultSourceDirectory = "/var/tmp"

    /// An unnamed file opened O_DIRECT in `directory`, which must be on a block device: a
    /// kernel-direct device's source, or any reader that needs the kernel to pin the pages it
    /// reads into (GUP `FOLL_PIN`) rather than copy.
    /// - Parameter device: a number that keeps the names of concurrent callers apart.
    /// - Throws: `.notFound` when `directory` cannot be opened; `.notSupported` when it is on
    ///   tmpfs or ramfs (no real O_DIRECT: it copies) or its file system refuses O_DIRECT; `.io`.
    public static func openDirectSource(in directory: String, device: Int) throws(FSError) -> Int32 {
        let probe = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard probe >= 0 else {
            throw FSError(.notFound, "\(directory): \(String(cString: strerror(errno))) (the source directory of kernel-direct devices)")
        }
        let type = CShims_fstatfs_type(probe)
        close(probe)
        guard type != CShims_TMPFS_MAGIC, type != CShims_RAMFS_MAGIC else {
            throw FSError(
                .notSupported,
                "\(directory) is on tmpfs or ramfs, which has no real O_DIRECT (it copies, the kernel pins nothing): "
                    + "give kernel-direct devices a directory on a disk file system")
        }
        var random = SplitMix64(seed: MonotonicClock.now(), stream: UInt64(device))
        let path = "\(directory)/.daxlab-source-\(getpid())-\(device)-\(String(random.next(), radix: 36))"
        let descriptor = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | CShims_O_DIRECT, 0o600)
        guard descriptor >= 0 else {
            let error = errno
            if error == EINVAL {
                throw FSError(.notSupported, "\(directory): its file system refuses O_DIRECT")
            }
            throw FSError(.io, "\(path): \(String(cString: strerror(error)))")
        }
        unlink(path)  // unnamed from now on: nothing to clean up
        return descriptor
    }
}

/// A kernel device's machinery: the source file its blocks come from (the device stages each
/// tagged block there, the kernel copies it into the pinned page) and, for long-term pins, the
/// io_uring whose fixed-buffer table holds its pin; for an RDMA device, its port (the source is
/// the port's registered buffer, and the regions hold its pins).
final class KernelTransport {
    let kind: DeviceKind
    let ring: KernelRing?
    let rdma: RDMAPort?
    private let source: Int32

    /// - Parameter rdmaDevice: the RDMA device's name (nil: the first here).
    /// - Throws: `.notSupported` where io_uring (long-term) or O_DIRECT (short-term) is refused,
    ///   the source directory is not on a block device, or there is no RDMA device; `.io`
    ///   otherwise. One line each.
    init(kind: DeviceKind, device: Int, sourceDirectory: String, rdmaDevice: String? = nil) throws(FSError) {
        precondition(kind.isKernel, "a transport for a simulated device")
        self.kind = kind
        if kind == .rdma {
            self.ring = nil
            self.rdma = try RDMAPort(device: rdmaDevice)
            self.source = -1
            return
        }
        self.rdma = nil
        if kind == .kernelLongterm {
            self.ring = try KernelRing(slots: 4)
            let descriptor = CShims_memfd("daxlab-device-\(device)")
            guard descriptor >= 0 else {
                throw FSError(.io, "memfd for device \(device): \(String(cString: strerror(-descriptor)))")
            }
            self.source = descriptor
        } else {
            self.ring = nil
            self.source = try DeviceKind.openDirectSource(in: sourceDirectory, device: device)
        }
        guard ftruncate(self.source, off_t(pageSize)) == 0 else {
            let error = errno
            close(self.source)
            throw FSError(.io, "size the source file of device \(device): \(String(cString: strerror(error)))")
        }
    }

    deinit { if self.source >= 0 { close(self.source) } }

    /// The kernel pin a pin of this device asks for.
    var kernelPin: KernelPin {
        if let ring = self.ring { return .longTerm(ring) }
        if let rdma = self.rdma { return .longTerm(rdma) }
        return .shortTerm
    }

    /// Puts `block` (4096 bytes, 4096-aligned) in the source file, where the kernel reads it (in
    /// the RDMA port's source buffer, for an RDMA device).
    /// - Returns: 0, or -errno.
    func stage(_ block: UnsafeRawPointer) -> Int32 {
        if let rdma = self.rdma {
            rdma.source.copyMemory(from: block, byteCount: pageSize)
            return 0
        }
        while true {
            let written = pwrite(self.source, block, pageSize, 0)
            if written == pageSize { return 0 }
            if written >= 0 { return -EIO }
            if errno != EINTR { return -errno }
        }
    }

    /// The kernel writes the staged block at `address` (in a kernel pin's view; `slot` holds it
    /// for a long-term pin), and returns when it has landed.
    /// - Returns: bytes written, or -errno (-EFAULT: the range is no longer the pin's, because a
    ///   truncate unmapped it or a revocation defused it).
    func write(into address: UnsafeMutableRawPointer, slot: Int?) -> Int32 {
        if let rdma = self.rdma, let slot { return rdma.write(into: address, length: pageSize, slot: slot) }
        if let ring = self.ring, let slot {
            return ring.readFixed(from: self.source, offset: 0, into: address, length: pageSize, slot: slot)
        }
        while true {
            let read = pread(self.source, address, pageSize, 0)
            if read >= 0 { return Int32(read) }
            if errno != EINTR { return -errno }
        }
    }
}
