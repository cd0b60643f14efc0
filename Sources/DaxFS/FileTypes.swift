/// A file, named by its inode number and the generation it had when it was looked up: once the
/// file is unlinked and the number reused, the old ID no longer resolves.
public struct FileID: Hashable, Sendable, CustomStringConvertible {
    public let inode: Int
    public let generation: UInt32
    public init(inode: Int, generation: UInt32) {
        self.inode = inode
        self.generation = generation
    }
    public var description: String { "inode \(self.inode) gen \(self.generation)" }
}

/// What `stat` reports.
public struct FileStat: Sendable, Equatable {
    public var id: FileID
    public var name: FileName
    public var size: Int
    /// Data blocks mapped (not counting block-map blocks).
    public var blocks: Int
    public var modifiedNanoseconds: UInt64
}

/// Usage figures for `info` and `df`-like output.
public struct FileSystemUsage: Sendable, Equatable, Codable {
    public var blockSize: Int
    public var totalBlocks: Int
    public var dataBlocks: Int
    public var freeBlocks: Int
    /// Blocks files hold in reserve for their write faults and have not used: not free, but
    /// the next mount frees them.
    public var reservedBlocks: Int = 0
    public var inodes: Int
    public var freeInodes: Int
    public var files: Int
}
