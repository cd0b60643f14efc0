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

    /// How a file daxlab creates (or resizes) gets its blocks.
    public enum Allocation: Sendable, Equatable {
        /// `ftruncate`: blocks are allocated on first write (a hole-filled file).
        case sparse
        /// `posix_fallocate`: every block allocated now, so later writes cannot hit ENOSPC.
        case full
    }

    public var disposition: Disposition
    /// The size in bytes: required to create; when given for an existing file or device it must
    /// match (unless `resize`). A positive multiple of 4096.
    public var size: Int?
    /// Let an existing regular file of another size be resized to `size` (shrinking loses data).
    public var resize: Bool
    public var allocation: Allocation
    /// How to make data durable: `nil` decides from `pmem_is_pmem` (the default, and the only
    /// safe choice on real media); a strategy forces it, so both paths can be compared in one
    /// process (`PMEM_IS_PMEM_FORCE` is read once per process).
    public var persistence: PersistenceStrategy?

    public init(
        disposition: Disposition = .openExisting, size: Int? = nil, resize: Bool = false,
        allocation: Allocation = .sparse, persistence: PersistenceStrategy? = nil
    ) {
        self.disposition = disposition
        self.size = size
        self.resize = resize
        self.allocation = allocation
        self.persistence = persistence
    }

    /// Open an existing file or device-dax device at whatever size it has.
    public static let existing = MapOptions()

    /// Create a new file of `size` bytes (mode 0600); fails if the path exists.
    public static func create(size: Int, allocation: Allocation = .sparse) -> MapOptions {
        MapOptions(disposition: .createNew, size: size, allocation: allocation)
    }

    /// Open the path if it exists (its size must be `size`), otherwise create it at `size`.
    public static func openOrCreate(size: Int, allocation: Allocation = .sparse) -> MapOptions {
        MapOptions(disposition: .openOrCreate, size: size, allocation: allocation)
    }
}

/// The granule every daxlab size is a multiple of: the x86 base page and the file system block.
public let pmemPageSize = 4096
