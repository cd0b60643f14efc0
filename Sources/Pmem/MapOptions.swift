/// How `PmemMapping` treats the path it is given.
public struct MapOptions: Sendable, Equatable {
    /// Whether the path must exist, must not, or either.
    public enum Disposition: Sendable, Equatable {
        /// Open what is there; fail with `.notFound` otherwise.
        case openExisting
        /// Create a new regular file; fail with `.alreadyExists` if the path exists.
        case createNew
        /// Open what is there, or create a regular file when nothing is.
        case openOrCreate
    }

    /// How a file image gets its blocks from the file system under it.
    public enum Allocation: Sendable, Equatable {
        /// `ftruncate`: blocks are allocated on first write (a hole-filled file). A store into a
        /// hole the file system cannot fill is a SIGBUS, so this is only for scratch files.
        case sparse
        /// `fallocate`: every block allocated when the file is created, and any hole allocated
        /// when it is mapped read-write, so no later page fault of the mapping can fail; when the
        /// file system is full, the map fails with `.noSpace` before anything is written.
        case full
    }

    /// Reading and writing, or reading only.
    public enum Access: Sendable, Equatable {
        case readWrite
        /// Opened read-only (a user with read permission may use it). A regular file is mapped
        /// private copy-on-write: stores land in this process's copy only, never in the file. Its
        /// holes are mapped as anonymous zero pages, so reading one asks the file system under it
        /// for nothing (a full tmpfs would answer with a SIGBUS). A device-dax device is mapped
        /// read-only.
        case readOnly
    }

    public var disposition: Disposition
    /// The size in bytes: required to create; when given for an existing file or device it must
    /// match (unless `resize`). A positive multiple of 4096.
    public var size: Int?
    /// Let an existing regular file of another size be resized to `size` (shrinking loses data).
    public var resize: Bool
    public var allocation: Allocation
    public var access: Access
    /// How to make data durable: `nil` decides from `pmem_is_pmem` (the default, and the only
    /// safe choice on real media); a strategy forces it, so both paths can be compared in one
    /// process (`PMEM_IS_PMEM_FORCE` is read once per process).
    public var persistence: PersistenceStrategy?

    public init(
        disposition: Disposition = .openExisting, size: Int? = nil, resize: Bool = false,
        allocation: Allocation = .full, access: Access = .readWrite, persistence: PersistenceStrategy? = nil
    ) {
        self.disposition = disposition
        self.size = size
        self.resize = resize
        self.allocation = allocation
        self.access = access
        self.persistence = persistence
    }

    /// Open an existing file or device-dax device at whatever size it has.
    public static let existing = MapOptions()

    /// Open an existing file or device-dax device read-only.
    public static let readOnly = MapOptions(access: .readOnly)

    /// Create a new file of `size` bytes (mode 0600); fails if the path exists.
    public static func create(size: Int, allocation: Allocation = .full) -> MapOptions {
        MapOptions(disposition: .createNew, size: size, allocation: allocation)
    }

    /// Open the path if it exists (its size must be `size`), otherwise create it at `size`.
    public static func openOrCreate(size: Int, allocation: Allocation = .full) -> MapOptions {
        MapOptions(disposition: .openOrCreate, size: size, allocation: allocation)
    }
}
