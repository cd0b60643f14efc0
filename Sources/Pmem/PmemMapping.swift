#if canImport(Glibc)
import Glibc
#endif
import CShims
#if DAXLAB_TEST_HOOKS
import Synchronization
#endif

/// A whole file or device-dax device mapped shared, read-write, through libpmem's `pmem_map_file`.
///
/// The mapping is released exactly once, when the last reference goes (`deinit`: `pmem_unmap`,
/// then the descriptor is closed). Many threads may use one mapping at once on disjoint ranges;
/// the mapping itself is immutable after `init`.
///
/// How data is made durable is decided once, here, from `isPmem` (see `PersistenceStrategy`).
public final class PmemMapping {
    /// The path the mapping was made from.
    public let path: String
    /// The first mapped byte.
    public let base: UnsafeMutableRawPointer
    /// The mapped length in bytes: the whole file or device.
    public let length: Int
    /// What backs the mapping.
    public let medium: Medium
    /// The alignment the medium requires of mappings and ranges (4096 for files, the device's
    /// alignment for device-dax).
    public let alignment: Int
    /// Whether libpmem judges the range to be persistent memory (`pmem_is_pmem`, which honours
    /// `PMEM_IS_PMEM_FORCE`; always true for device-dax).
    public let isPmem: Bool
    /// Whether page faults on this mapping are synchronous, so that a CPU flush alone makes data and
    /// the file's metadata durable: MAP_SYNC on fs-dax files, and always on device-dax.
    public let synchronousFaults: Bool
    /// The kernel's flags for the mapping (`VmFlags` in `/proc/self/smaps`: `sh` shared, `sf`
    /// MAP_SYNC, ...), or nil when /proc could not tell.
    public let kernelFlags: [String]?
    /// How `persist` and friends make data durable: `.pmem` when `isPmem`, else `.msync`, unless
    /// `MapOptions.persistence` forced one.
    public let persistence: PersistenceStrategy
    /// Whether `init` created the file.
    public let created: Bool
    /// Opened read-only: a regular file is mapped private (copy-on-write: stores stay in this
    /// process) with anonymous zero pages over its holes, a device read-only.
    public let isReadOnly: Bool
    /// The open descriptor of the path, held for the mapping's life (file locks use it).
    public let descriptor: Int32

    #if DAXLAB_TEST_HOOKS
    /// Tests only (builds with DAXLAB_TEST_HOOKS=1): once set, every msync of the mapping fails with EIO, as one
    /// whose write-back failed does, so tests see how the layers above report a persist that
    /// could not be made.
    @_spi(TestHooks) public let msyncFailsForTests = Atomic<Bool>(false)
    #endif

    /// Maps `path` as `options` say.
    /// - Parameters:
    ///   - path: a regular file (on tmpfs, fs-dax or any file system) or a `/dev/daxX.Y` device.
    ///   - options: whether to create it, at what size, and how to allocate it.
    /// - Throws: `PmemError`: `.notFound`, `.isDirectory`, `.permissionDenied`, `.invalidSize`,
    ///   `.sizeMismatch`, `.deviceSizeMismatch`, `.unalignedDevice`, `.unsupportedFileType`,
    ///   `.alreadyExists`, `.mapFailed`, `.ioFailed`.
    public init(path: String, options: MapOptions = .existing) throws(PmemError) {
        let opened = try OpenedPath(path: path, options: options)
        var mappedLength = 0
        var isPmem: Int32 = 0
        let base: UnsafeMutableRawPointer
        if opened.readOnly {
            // A device-dax device cannot be mapped private; it is mapped read-only instead.
            let device = opened.medium == .deviceDAX
            let mapped = mmap(
                nil, opened.size, device ? PROT_READ : PROT_READ | PROT_WRITE, device ? MAP_SHARED : MAP_PRIVATE,
                opened.descriptor, 0)
            guard let mapped, mapped != MAP_FAILED else {
                let error = errno
                opened.discard()
                throw PmemError.system("map \(opened.size) bytes read-only", errno: error, path: path)
            }
            base = mapped
            mappedLength = opened.size
            isPmem = pmem_is_pmem(mapped, opened.size)
        } else {
            // Map what was opened and checked, not whatever the path names by now.
            let procPath = "/proc/self/fd/\(opened.descriptor)"
            errno = 0
            guard let mapped = pmem_map_file(procPath, 0, 0, 0, &mappedLength, &isPmem) else {
                let error = errno
                opened.discard()
                throw PmemError.libpmem(.mapFailed, "map \(opened.size) bytes", errno: error, path: path)
            }
            base = mapped
        }
        guard mappedLength == opened.size else {
            pmem_unmap(base, mappedLength)
            opened.discard()
            throw PmemError(.mapFailed, path: path, detail: "mapped \(mappedLength) bytes, expected \(opened.size)")
        }
        // The kernel's flags for this very mapping, when /proc says; the probe otherwise.
        let kernelFlags = KernelMappingFlags.flags(ofMappingAt: base)
        if opened.readOnly, opened.medium != .deviceDAX {
            // Holes read as anonymous zero pages, not through the file system (PmemMapping+Holes).
            do throws(PmemError) {
                try Self.coverHoles(base: base, length: mappedLength, descriptor: opened.descriptor, path: path)
            } catch {
                pmem_unmap(base, mappedLength)
                opened.discard()
                throw error
            }
        }
        self.path = path
        self.base = base
        self.length = mappedLength
        self.medium = opened.medium
        self.alignment = opened.alignment
        self.isPmem = isPmem != 0 || opened.medium == .deviceDAX
        self.kernelFlags = kernelFlags
        self.synchronousFaults =
            opened.medium == .deviceDAX
            || (self.kernelFlags.map { $0.contains("sf") }
                ?? Self.supportsMapSync(descriptor: opened.descriptor, length: opened.alignment))
        self.persistence = options.persistence ?? (self.isPmem ? .pmem : .msync)
        self.created = opened.created
        self.isReadOnly = opened.readOnly
        self.descriptor = opened.descriptor
    }

    /// A read-only view of `source`'s file (see `readOnlyView()`).
    private init(readOnlyViewOf source: PmemMapping) throws(PmemError) {
        // A read-only descriptor of the very file `source` holds, whatever its path names now.
        let descriptor = open("/proc/self/fd/\(source.descriptor)", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw PmemError.system("open read-only", errno: errno, path: source.path)
        }
        let mapped = mmap(nil, source.length, PROT_READ | PROT_WRITE, MAP_PRIVATE, descriptor, 0)
        guard let mapped, mapped != MAP_FAILED else {
            let error = errno
            close(descriptor)
            throw PmemError.system("map \(source.length) bytes read-only", errno: error, path: source.path)
        }
        let kernelFlags = KernelMappingFlags.flags(ofMappingAt: mapped)
        do throws(PmemError) {
            try Self.coverHoles(base: mapped, length: source.length, descriptor: descriptor, path: source.path)
        } catch {
            munmap(mapped, source.length)
            close(descriptor)
            throw error
        }
        self.path = source.path
        self.base = mapped
        self.length = source.length
        self.medium = source.medium
        self.alignment = source.alignment
        self.isPmem = source.isPmem
        self.kernelFlags = kernelFlags
        self.synchronousFaults = false
        self.persistence = source.persistence
        self.created = false
        self.isReadOnly = true
        self.descriptor = descriptor
    }

    /// The same file mapped as `MapOptions.readOnly` maps one: private, its holes zero pages, so
    /// reading it asks the file system under it for nothing (reading a hole through a shared
    /// mapping of a tmpfs file takes a page of it, a SIGBUS when it is full). For reading a file
    /// mapped `.sparse` before its holes are allocated. This mapping itself when it is read-only
    /// or a device (which has no holes).
    public func readOnlyView() throws(PmemError) -> PmemMapping {
        guard !self.isReadOnly, self.medium != .deviceDAX else { return self }
        return try PmemMapping(readOnlyViewOf: self)
    }

    deinit {
        pmem_unmap(self.base, self.length)
        close(self.descriptor)
    }

    /// The address of byte `offset` of the mapping.
    @inlinable
    public func pointer(at offset: Int) -> UnsafeMutableRawPointer {
        self.base + offset
    }

    /// Whether `offset..<offset+length` lies inside the mapping.
    @inlinable
    public func contains(offset: Int, length: Int) -> Bool {
        offset >= 0 && length >= 0 && offset <= self.length && length <= self.length - offset
    }

    /// Whether the kernel accepts MAP_SYNC for this descriptor: it does for files in DAX state
    /// (and libpmem then maps with it); tmpfs and page-cache files answer EOPNOTSUPP.
    private static func supportsMapSync(descriptor: Int32, length: Int) -> Bool {
        let flags = CShims_MAP_SHARED_VALIDATE | CShims_MAP_SYNC
        let probe = mmap(nil, length, PROT_READ | PROT_WRITE, flags, descriptor, 0)
        guard let probe, probe != MAP_FAILED else { return false }
        munmap(probe, length)
        return true
    }
}

// The stored properties are all `let`s set once in `init` (the test hook of the builds that have
// it is an atomic); `base` points at shared memory whose bytes callers partition among threads (one range,
// one writer), as the kernel's users of a DAX mapping do. Hence the mapping may be shared across
// threads.
extension PmemMapping: @unchecked Sendable {}
