import CRing
import CShims
import CVerbs
import Foundation

/// What the kernel lets this process do, for tests that need its machinery: each is nil where it
/// works, or the reason it does not (for the test's skip message and the notes).
public enum KernelFacilities {
    /// io_uring with a sparse fixed-buffer table (refused by a seccomp filter, io_uring_disabled,
    /// or a kernel before 5.19).
    public static let ioUringRefusal: String? = {
        guard let ring = CRing_create(2, 1) else { return "io_uring is refused here: \(String(cString: strerror(errno)))" }
        CRing_destroy(ring)
        return nil
    }()

    /// userfaultfd (refused to a user without CAP_SYS_PTRACE under vm.unprivileged_userfaultfd=0,
    /// or by a seccomp filter): windows and kernel pins' views fault through it where it works.
    public static let userfaultfdRefusal: String? = {
        let descriptor = CShims_uffd_open()
        guard descriptor >= 0 else { return "userfaultfd is refused here: \(String(cString: strerror(-descriptor)))" }
        close(descriptor)
        return nil
    }()

    /// The directory kernel-direct devices use unless told.
    public static let directSourceDirectory = "/var/tmp"

    /// O_DIRECT in `directSourceDirectory` on a disk file system (tmpfs copies, it does not pin).
    public static let directIORefusal: String? = {
        let directory = Self.directSourceDirectory
        let probe = open(directory, O_RDONLY | O_DIRECTORY)
        guard probe >= 0 else { return "\(directory): \(String(cString: strerror(errno)))" }
        let type = CShims_fstatfs_type(probe)
        close(probe)
        guard type != CShims_TMPFS_MAGIC, type != CShims_RAMFS_MAGIC else { return "\(directory) is on tmpfs or ramfs" }
        let path = "\(directory)/.daxlab-probe-\(getpid())"
        let descriptor = open(path, O_RDWR | O_CREAT | O_EXCL | CShims_O_DIRECT, 0o600)
        guard descriptor >= 0 else { return "O_DIRECT in \(directory): \(String(cString: strerror(errno)))" }
        close(descriptor)
        unlink(path)
        return nil
    }()

    /// An RDMA device with an active port whose queue pairs connect (none on a kernel without
    /// InfiniBand, as this project's development machine; `rdma link add rxe0 type rxe netdev
    /// lo` makes one where the kernel has rdma_rxe).
    public static let rdmaRefusal: String? = {
        var reason = [CChar](repeating: 0, count: 256)
        guard let port = CVerbs_open(nil, &reason, reason.count) else {
            return String(decoding: reason.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        CVerbs_close(port)
        return nil
    }()
}
