import Pmem

/// The one error type of DaxFS: a `Code` tests match, and one line for a person.
public struct FSError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { self.name }

        /// The path could not be mapped (see `pmem`).
        public static let pmem = Code("pmem")
        /// The image holds no daxlab file system (mount), or already holds data (mkfs).
        public static let notAnImage = Code("not an image")
        public static let notEmpty = Code("not empty")
        /// A metadata structure failed validation; nothing was written.
        public static let corrupt = Code("corrupt")
        /// Another process (or mount) holds the image.
        public static let inUse = Code("in use")
        public static let notFound = Code("no such file")
        public static let exists = Code("file exists")
        public static let invalidName = Code("invalid name")
        public static let invalidArgument = Code("invalid argument")
        public static let noSpace = Code("no space")
        public static let noInodes = Code("no free inodes")
        public static let fileTooLarge = Code("file too large")
        /// A truncate or punch refused because blocks are pinned (policy `fail`: EBUSY).
        public static let busy = Code("busy")
        /// A wait for pins ran past its timeout; nothing changed.
        public static let timedOut = Code("timed out")
        public static let io = Code("i/o")
        /// The file system is mounted read-only.
        public static let readOnly = Code("read-only")
        /// The kernel (or the medium) refuses what was asked (EOPNOTSUPP): a long-term pin of
        /// fs-dax pages, a window over a device aligned to more than 4 KiB, io_uring under seccomp.
        public static let notSupported = Code("not supported")
        /// A write's source could not be read (EFAULT): the kernel's copy of it found a page it
        /// could not fault in, such as a window page past its file's end.
        public static let badAddress = Code("bad address")
    }

    public var code: Code
    public var message: String
    /// The Pmem layer's error, when the mapping failed.
    public var pmem: PmemError?

    public init(_ code: Code, _ message: String, pmem: PmemError? = nil) {
        self.code = code
        self.message = message
        self.pmem = pmem
    }

    public init(_ error: PmemError) {
        self.init(error.code == .ioFailed ? .io : .pmem, error.description, pmem: error)
    }

    public var description: String { self.message }
}
