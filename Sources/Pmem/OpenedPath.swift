#if canImport(Glibc)
import Glibc
#endif
import CShims

/// A path opened as `MapOptions` say and checked against them: a regular file of a valid size,
/// or a device-dax device of a valid geometry. Whoever makes one owns `descriptor`: it hands it
/// to a mapping, or calls `discard()`.
///
/// A final symbolic link is followed only when it leads to a character device (a device-dax
/// device named through a link): a link planted where daxlab creates or formats an image must
/// not send the format somewhere else. Nothing is written to an existing path here unless
/// `MapOptions.resize` asks for it (allocating a file's holes writes no data); a file created
/// here and then found unusable is removed again.
struct OpenedPath {
    let path: String
    let descriptor: Int32
    let medium: Medium
    let size: Int
    let alignment: Int
    let created: Bool
    let readOnly: Bool

    /// Opens (or creates) `path` as `options` say.
    /// - Throws: `PmemError` with the code of the first check that fails.
    init(path: String, options: MapOptions) throws(PmemError) {
        if let size = options.size { try Self.checkSize(size, path: path) }
        self.path = path

        self.readOnly = options.access == .readOnly
        var created = false
        var fd: Int32 = -1
        var followedLink = false
        if options.disposition != .createNew {
            (fd, followedLink) = try Self.openWithoutFollowing(path, flags: self.readOnly ? O_RDONLY : O_RDWR)
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
        do throws(PmemError) {
            found = try Self.inspect(fd: fd, path: path, options: options)
            if followedLink, found.medium != .deviceDAX {
                throw PmemError(.symbolicLink, path: path, detail: "is a symbolic link that no longer leads to a device")
            }
            if found.medium != .deviceDAX, !self.readOnly, options.allocation == .full, !created {
                try Self.allocateHoles(fd: fd, size: found.size, path: path)
            }
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
        guard size % pageSize == 0 else {
            throw PmemError(.invalidSize, path: path, detail: "size \(size) is not a multiple of \(pageSize)")
        }
    }

    /// Opens `path` without following a final symbolic link, unless the link leads to a character
    /// device. The open does not block (a FIFO opened for reading would wait for a writer); the
    /// descriptor is made blocking again before it is returned, and `inspect` refuses what is not
    /// a file or a device. - Returns: the descriptor (-1 with errno set when the open failed), and
    /// whether a link was followed (the caller checks that what it opened is indeed a device).
    private static func openWithoutFollowing(_ path: String, flags: Int32) throws(PmemError) -> (Int32, Bool) {
        let fd = Self.openNonBlocking(path, flags | O_NOFOLLOW)
        guard fd < 0, Glibc.errno == ELOOP else { return (fd, false) }
        var target = stat()
        guard stat(path, &target) == 0 else {
            throw PmemError(.symbolicLink, path: path, detail: "is a symbolic link that leads nowhere; daxlab does not follow it")
        }
        guard target.st_mode & S_IFMT == S_IFCHR else {
            throw PmemError(
                .symbolicLink, path: path,
                detail: "is a symbolic link; daxlab follows links only to devices (name the file itself)")
        }
        return (Self.openNonBlocking(path, flags), true)
    }

    /// `open` with O_NONBLOCK, which is cleared again once the open succeeded.
    /// - Returns: the descriptor, or -1 with errno set.
    private static func openNonBlocking(_ path: String, _ flags: Int32) -> Int32 {
        let fd = open(path, flags | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return fd }
        let status = fcntl(fd, F_GETFL)
        guard status >= 0, fcntl(fd, F_SETFL, status & ~O_NONBLOCK) == 0 else {
            let error = Glibc.errno
            close(fd)
            Glibc.errno = error
            return -1
        }
        return fd
    }

    /// What is at `path`, for a message: "a regular file of 4096 bytes", "a symbolic link", ...
    static func describe(_ path: String) -> String {
        var status = stat()
        guard lstat(path, &status) == 0 else { return String(cString: strerror(Glibc.errno)).lowercased() }
        switch status.st_mode & S_IFMT {
        case S_IFREG: return "a regular file of \(status.st_size) bytes"
        case S_IFDIR: return "a directory"
        case S_IFLNK: return "a symbolic link"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        default: return "a special file"
        }
    }

    private static func openError(errno: Int32, path: String) -> PmemError {
        switch errno {
        case ENOENT: PmemError(.notFound, path: path, detail: "no such file or device", errno: errno)
        case EISDIR: PmemError(.isDirectory, path: path, detail: "is a directory, not a file or device", errno: errno)
        case EACCES, EPERM: PmemError(.permissionDenied, path: path, detail: "permission denied", errno: errno)
        case EROFS: PmemError(.permissionDenied, path: path, detail: "read-only file system", errno: errno)
        default: PmemError.system("open", errno: errno, path: path)
        }
    }

    /// Creates a new regular file of mode 0600 at `size` bytes.
    private static func createFile(path: String, size: Int, allocation: MapOptions.Allocation) throws(PmemError) -> Int32 {
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let error = Glibc.errno
            if error == EEXIST {
                throw PmemError(.alreadyExists, path: path, detail: "already exists (\(Self.describe(path)))", errno: error)
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
        if allocation == .full { try Self.allocateHoles(fd: fd, size: size, path: path) }
    }

    /// Allocates every block of the file the file system does not hold yet (fallocate mode 0:
    /// data already there is left alone), so no later store into the mapping can fault for space.
    /// A file system without fallocate is left as it is.
    /// - Throws: `.noSpace` when the file system under the image is full.
    static func allocateHoles(fd: Int32, size: Int, path: String) throws(PmemError) {
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw PmemError.system("stat", errno: Glibc.errno, path: path) }
        let held = Int(status.st_blocks) * 512
        guard held < size else { return }
        let result = CShims_fallocate(fd, 0, size)
        if result == 0 || result == -EOPNOTSUPP { return }
        if result == -ENOSPC || result == -EDQUOT {
            throw PmemError(
                .noSpace, path: path,
                detail: "no space on the backing file system: the image needs \(size - held) more bytes of its \(size)",
                errno: -result)
        }
        throw PmemError.system("allocate \(size) bytes", errno: -result, path: path)
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
            return (Self.regularFileMedium(fd: fd), size, pageSize)
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
