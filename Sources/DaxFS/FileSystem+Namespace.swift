/// The flat root directory: create, lookup, unlink, rename, stat, list.
///
/// Names live in their inodes (one name per file, no hard links), so creating, renaming or
/// removing a file is one transaction on one or two inode records. The volatile `names` table is
/// rebuilt from the inode table at mount.
extension FileSystem {
    /// Checks a file name: 1 to 255 bytes of UTF-8, no `/`, no NUL, not `.` or `..`.
    public static func validate(name: String) throws(FSError) {
        let length = name.utf8.count
        guard length >= 1, length <= InodeRecord.maximumNameLength, !name.utf8.contains(0),
            !name.contains("/"), name != ".", name != ".."
        else {
            throw FSError(.invalidName, "invalid file name \"\(name)\" (1-255 bytes, no '/' or NUL)")
        }
    }

    /// Creates an empty file.
    /// - Throws: `.invalidName`, `.exists`, `.noInodes`.
    @discardableResult
    public func create(_ name: String) throws(FSError) -> FileID {
        try Self.validate(name: name)
        return try self.namespace.withLock { (namespace) throws(FSError) -> FileID in
            guard namespace.names[name] == nil, !namespace.unlinking.contains(name) else {
                throw FSError(.exists, "\(name): file exists")
            }
            guard let number = namespace.freeInodes.popLast() else {
                throw FSError(.noInodes, "no free inodes (\(self.geometry.inodeCount) in this image)")
            }
            do throws(FSError) {
                let id = try self.locks[number].withWriteLock { () throws(FSError) -> FileID in
                    let (generation, _) = try self.log.transaction { (tx) throws(FSError) -> UInt32 in
                        let record = tx.inode(number)
                        record.initialize(kind: .regular, name: name, now: FileSystem.now())
                        return record.generation
                    }
                    return FileID(inode: number, generation: generation)
                }
                namespace.names[name] = number
                return id
            } catch {
                namespace.freeInodes.append(number)
                throw error
            }
        }
    }

    /// The file called `name`.
    /// - Throws: `.notFound`.
    public func lookup(_ name: String) throws(FSError) -> FileID {
        let number = self.namespace.withLock { $0.names[name] }
        guard let number else { throw FSError(.notFound, "\(name): no such file") }
        return FileID(inode: number, generation: self.locks[number].withReadLock { self.record(number).generation })
    }

    /// Opens `name`, creating it when absent.
    public func openOrCreate(_ name: String) throws(FSError) -> FileID {
        do { return try self.lookup(name) } catch where error.code == .notFound {
            do { return try self.create(name) } catch where error.code == .exists { return try self.lookup(name) }
        }
    }

    /// Removes `name` and frees its blocks.
    /// - Parameter policy: what to do with blocks pinned for DMA (nil: the DAX layer's default).
    /// - Throws: `.notFound`; `.busy` or `.timedOut` from the policy (the file stays then).
    public func unlink(_ name: String, policy: TruncatePolicy? = nil) throws(FSError) {
        let number = try self.namespace.withLock { (namespace) throws(FSError) -> Int in
            guard let number = namespace.names.removeValue(forKey: name) else {
                throw FSError(.notFound, "\(name): no such file")
            }
            namespace.unlinking.insert(name)
            return number
        }
        do throws(FSError) {
            try self.locks[number].withWriteLock { () throws(FSError) in try self.release(inode: number, policy: policy) }
        } catch {
            self.namespace.withLock { namespace in
                namespace.unlinking.remove(name)
                namespace.names[name] = number
            }
            throw error
        }
        self.namespace.withLock { namespace in
            namespace.unlinking.remove(name)
            namespace.freeInodes.append(number)
        }
    }

    /// Frees every block of inode `number` and marks it free; the caller holds its lock.
    private func release(inode number: Int, policy: TruncatePolicy?) throws(FSError) {
        try self.removePages(number, policy: policy, newSize: { 0 }) { () -> Range<Int> in
            let size = self.record(number).size
            return 0..<Int((size + UInt64(Geometry.blockSize) - 1) / UInt64(Geometry.blockSize))
        }
        _ = try self.log.transaction { (tx) throws(FSError) in tx.inode(number).release() }
    }

    /// Renames `source` to `target`, replacing `target` if it exists (as rename(2) does).
    /// - Throws: `.notFound`, `.invalidName`.
    public func rename(_ source: String, to target: String) throws(FSError) {
        try Self.validate(name: target)
        guard source != target else {
            _ = try self.lookup(source)
            return
        }
        try self.namespace.withLock { (namespace) throws(FSError) in
            guard let number = namespace.names[source] else { throw FSError(.notFound, "\(source): no such file") }
            guard !namespace.unlinking.contains(target) else { throw FSError(.exists, "\(target): being removed") }
            let replaced = namespace.names[target]
            if let replaced {
                try self.locks[replaced].withWriteLock { () throws(FSError) in
                    try self.release(inode: replaced, policy: nil)
                }
                namespace.names.removeValue(forKey: target)
                namespace.freeInodes.append(replaced)
            }
            try self.locks[number].withWriteLock { () throws(FSError) in
                _ = try self.log.transaction { (tx) throws(FSError) in
                    let record = tx.inode(number)
                    record.setName(target)
                    record.modifiedNanoseconds = FileSystem.now()
                }
            }
            namespace.names.removeValue(forKey: source)
            namespace.names[target] = number
        }
    }

    /// Size, blocks and name of a file.
    public func stat(_ id: FileID) throws(FSError) -> FileStat {
        try self.locks[id.inode].withReadLock { () throws(FSError) -> FileStat in
            let record = try self.checkedRecord(id)
            return FileStat(
                id: id, name: record.name, size: Int(record.size), blocks: Int(record.blocks),
                modifiedNanoseconds: record.modifiedNanoseconds)
        }
    }

    /// Every file, sorted by name.
    public func list() -> [FileStat] {
        let names = self.namespace.withLock { $0.names }
        return names.sorted { $0.key < $1.key }.compactMap { name, number in
            self.locks[number].withReadLock {
                let record = self.record(number)
                guard record.inUse else { return nil }
                return FileStat(
                    id: FileID(inode: number, generation: record.generation), name: name, size: Int(record.size),
                    blocks: Int(record.blocks), modifiedNanoseconds: record.modifiedNanoseconds)
            }
        }
    }

    /// The record of `id` if it still names a live regular file; the caller holds its lock.
    func checkedRecord(_ id: FileID) throws(FSError) -> InodeRecord {
        guard id.inode >= FileSystem.firstUserInode, id.inode < self.geometry.inodeCount else {
            throw FSError(.notFound, "\(id): no such file")
        }
        let record = self.record(id.inode)
        guard record.inUse, record.generation == id.generation else {
            throw FSError(.notFound, "\(id): no such file (removed)")
        }
        return record
    }
}
