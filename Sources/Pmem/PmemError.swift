#if canImport(Glibc)
import Glibc
#endif
import CShims

/// The one error type of the Pmem layer: what went wrong (a `Code` tests can match), the path it
/// concerns, the errno and libpmem's own message when there is one.
///
/// `description` is one line meant for a person: `"/dev/shm/x: size 1000 is not a multiple of 4096"`.
public struct PmemError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of failure this is. A struct over a private enum, so codes can be added
    /// without breaking `switch`es in other modules.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Sendable {
            case notFound = "not found"
            case isDirectory = "is a directory"
            case permissionDenied = "permission denied"
            case invalidSize = "invalid size"
            case sizeMismatch = "size mismatch"
            case deviceSizeMismatch = "device-dax size mismatch"
            case unalignedDevice = "unaligned device"
            case unsupportedFileType = "unsupported file type"
            case alreadyExists = "already exists"
            case mapFailed = "map failed"
            case noSpace = "no space"
            case symbolicLink = "symbolic link"
            case ioFailed = "i/o failed"
            case discoveryFailed = "discovery failed"
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// The path does not exist (and was not to be created), or its parent does not.
        public static let notFound = Code(.notFound)
        /// The path is a directory.
        public static let isDirectory = Code(.isDirectory)
        /// The process may not open the path for reading and writing, or create it.
        public static let permissionDenied = Code(.permissionDenied)
        /// A size of 0, or one that is not a multiple of 4096, or a file that is empty.
        public static let invalidSize = Code(.invalidSize)
        /// An existing regular file whose size differs from the one asked for.
        public static let sizeMismatch = Code(.sizeMismatch)
        /// A device-dax device whose size differs from the one asked for.
        public static let deviceSizeMismatch = Code(.deviceSizeMismatch)
        /// A device-dax device whose size is not a multiple of its alignment.
        public static let unalignedDevice = Code(.unalignedDevice)
        /// Not a regular file nor a device-dax character device (a block device, a FIFO, ...).
        public static let unsupportedFileType = Code(.unsupportedFileType)
        /// The path exists but was to be created new.
        public static let alreadyExists = Code(.alreadyExists)
        /// libpmem could not map the path.
        public static let mapFailed = Code(.mapFailed)
        /// The file system under a file image cannot hold all of its blocks.
        public static let noSpace = Code(.noSpace)
        /// The path names a symbolic link to something other than a device: daxlab does not follow
        /// it (a link planted in a shared folder must not redirect a format).
        public static let symbolicLink = Code(.symbolicLink)
        /// A read, write, resize or sync of the path failed.
        public static let ioFailed = Code(.ioFailed)
        /// libndctl or libdaxctl could not be initialised.
        public static let discoveryFailed = Code(.discoveryFailed)

        public var description: String { self.value.rawValue }
    }

    /// What kind of failure this is.
    public var code: Code
    /// The path concerned, when there is one.
    public var path: String?
    /// A short explanation for a person, without the path.
    public var detail: String
    /// The errno of the failing call, when a system call failed.
    public var errno: Int32?
    /// `pmem_errormsg()` at the time of the failure, when libpmem failed.
    public var libraryMessage: String?

    public init(
        _ code: Code, path: String? = nil, detail: String, errno: Int32? = nil, libraryMessage: String? = nil
    ) {
        self.code = code
        self.path = path
        self.detail = detail
        self.errno = errno
        self.libraryMessage = libraryMessage
    }

    public var description: String {
        var line = self.path.map { "\($0): \(self.detail)" } ?? self.detail
        if let message = self.libraryMessage, !message.isEmpty, !line.contains(message) {
            line += " (libpmem: \(message))"
        }
        return line
    }
}

extension PmemError {
    /// The error for a failed system call, with its errno turned into the matching code.
    /// - Parameters:
    ///   - operation: what was being done, for the message ("open", "resize to 4096 bytes").
    ///   - errno: the errno the call left.
    ///   - path: the path concerned.
    static func system(_ operation: String, errno: Int32, path: String?) -> PmemError {
        let code: Code
        switch errno {
        case ENOENT, ENOTDIR: code = .notFound
        case EISDIR: code = .isDirectory
        case EACCES, EPERM, EROFS: code = .permissionDenied
        case EEXIST: code = .alreadyExists
        case ENOSPC, EDQUOT: code = .noSpace
        default: code = .ioFailed
        }
        let reason = String(cString: strerror(errno)).lowercased()
        return PmemError(code, path: path, detail: "\(operation): \(reason)", errno: errno)
    }

    /// The error for a failed libpmem call, with `pmem_errormsg()` attached.
    static func libpmem(_ code: Code, _ operation: String, errno: Int32, path: String?) -> PmemError {
        let message = pmem_errormsg().map { String(cString: $0) }
        let reason = errno != 0 ? String(cString: strerror(errno)).lowercased() : "failed"
        return PmemError(code, path: path, detail: "\(operation): \(reason)", errno: errno, libraryMessage: message)
    }
}
