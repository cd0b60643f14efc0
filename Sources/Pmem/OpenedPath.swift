#if canImport(Glibc)
import Glibc
#endif
import CShims

/// A path opened for reading and writing and checked against `MapOptions`: a regular file of a
/// valid size, or a device-dax device of a valid geometry. Whoever makes one owns `descriptor`:
/// it hands it to a mapping, or calls `discard()`.
///
/// Nothing is written to an existing path here unless `MapOptions.resize` asks for it; a file
/// created here and then found unusable is removed again.
struct OpenedPath {
    let path: String
    let descriptor: Int32
    let medium: Medium
    let size: Int
    let alignment: Int
    let created: Bool

    /// Opens (or creates) `path` as `options` say.
    /// - Throws: `PmemError` with the code of the first check that fails.
    init(path: String, options: MapOptions) throws(PmemError) {
        if let size = options.size { try Self.checkSize(size, path: path) }
        self.path = path

        var created = false
        var fd: Int32 = -1
        if options.disposition != .createNew {
            fd = open(path, O_RDWR | O_CLOEXEC)
            if fd < 0 {
                let error = Glibc.errno
                guard error == ENOENT, options.disposition == .openOrCreate else {
                    throw Self.openError(errno: error, path: path)
                }
            }
        }
        if fd < 0 {
            guard let size = options.size else {
                throw PmemError(.invalidSize, path: path, detail: "a size is needed to create a file")
            }
            fd = try Self.createFile(path: path, size: size, allocation: options.allocation)
            created = true
        }
        self.descriptor = fd
        self.created = created

        let found: (medium: Medium, size: Int, alignment: Int)
        do {
            found = try Self.inspect(fd: fd, path: path, options: options)
        } catch {
            close(fd)
            if created { unlink(path) }
            throw error
        }
        self.medium = found.medium
        self.size = found.size
        self.alignment = found.alignment
    }

    /// Closes the descriptor and, when the file was created here, removes it: for a failure after
    /// creation, so nothing is left behind.
    func discard() {
        close(self.descriptor)
        if self.created { unlink(self.path) }
    }

    static func checkSize(_ size: Int, path: String) throws(PmemError) {
        guard size > 0 else {
            throw PmemError(.invalidSize, path: path, detail: "size must be greater than 0")
        }
        guard size % pmemPageSize == 0 else {
            throw PmemError(.invalidSize, path: path, detail: "size \(size) is not a multiple of \(pmemPageSize)")
        }
    }

    private static func openError(errno: Int32, path: String) -> PmemError {
        switch errno {
        case ENOENT: PmemError(.notFound, path: path, detail: "no such file or device", errno: errno)
        case EISDIR: PmemError(.isDirectory, path: path, detail: "is a directory, not a file or device", errno: errno)
        case EACCES, EPERM: PmemError(.permissionDenied, path: path, detail: "permission denied", errno: errno)
        default: PmemError.system("open", errno: errno, path: path)
        }
    }

    /// Creates a new regular file of mode 0600 at `size` bytes.
    private static func createFile(path: String, size: Int, allocation: MapOptions.Allocation) throws(PmemError) -> Int32 {
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let error = Glibc.errno
            if error == EEXIST {
                throw PmemError(.alreadyExists, path: path, detail: "already exists", errno: error)
            }
            throw Self.openError(errno: error, path: path)
        }
        do {
            try Self.setSize(fd: fd, size: size, allocation: allocation, path: path)
            return fd
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
    }

    private static func setSize(
        fd: Int32, size: Int, allocation: MapOptions.Allocation, path: String
    ) throws(PmemError) {
        if ftruncate(fd, off_t(size)) != 0 {
            throw PmemError.system("resize to \(size) bytes", errno: Glibc.errno, path: path)
        }
        if allocation == .full {
            let result = posix_fallocate(fd, 0, off_t(size))
            if result != 0 { throw PmemError.system("allocate \(size) bytes", errno: result, path: path) }
        }
    }

    /// Finds what `fd` is and checks it against `options`.
    /// - Returns: the medium, the size to map and the alignment.
    private static func inspect(
        fd: Int32, path: String, options: MapOptions
    ) throws(PmemError) -> (Medium, Int, Int) {
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw PmemError.system("stat", errno: Glibc.errno, path: path) }
        switch status.st_mode & S_IFMT {
        case S_IFREG:
            var size = Int(status.st_size)
            if let wanted = options.size, wanted != size {
                guard options.resize else {
                    throw PmemError(
                        .sizeMismatch, path: path,
                        detail: "existing file is \(size) bytes, not \(wanted) (resize it explicitly to change it)")
                }
                try Self.setSize(fd: fd, size: wanted, allocation: options.allocation, path: path)
                size = wanted
            }
            guard size > 0 else { throw PmemError(.invalidSize, path: path, detail: "file is empty") }
            try Self.checkSize(size, path: path)
            return (Self.regularFileMedium(fd: fd), size, pmemPageSize)
        case S_IFCHR:
            let major = CShims_dev_major(status.st_rdev)
            let minor = CShims_dev_minor(status.st_rdev)
            guard DeviceDAXSysfs.isDeviceDAX(major: major, minor: minor),
                let geometry = DeviceDAXSysfs.geometry(major: major, minor: minor)
            else {
                throw PmemError(.unsupportedFileType, path: path, detail: "a character device that is not device-dax")
            }
            try geometry.validate(requestedSize: options.size, path: path)
            return (.deviceDAX, geometry.size, geometry.alignment)
        case S_IFDIR:
            throw PmemError(.isDirectory, path: path, detail: "is a directory, not a file or device")
        case S_IFBLK:
            throw PmemError(
                .unsupportedFileType, path: path,
                detail: "a block device: mount it with -o dax and use a file on it, or make the namespace devdax")
        default:
            throw PmemError(.unsupportedFileType, path: path, detail: "not a regular file or a device-dax device")
        }
    }

    /// tmpfs, a DAX-state file (statx `STATX_ATTR_DAX`), or a plain page-cache file.
    private static func regularFileMedium(fd: Int32) -> Medium {
        if CShims_fstatfs_type(fd) == CShims_TMPFS_MAGIC { return .tmpfs }
        var attributes: UInt64 = 0
        var supported: UInt64 = 0
        if CShims_statx_attributes(fd, &attributes, &supported) == 0,
            supported & CShims_STATX_ATTR_DAX != 0, attributes & CShims_STATX_ATTR_DAX != 0
        {
            return .fsDAX
        }
        return .file
    }
}
