import Pmem
import DaxlabSupport
#if canImport(Glibc)
import Glibc
#endif
/// The flat root directory: create, lookup, unlink, rename, publish, stat, list.
///
/// Names live in their inodes (one name per file, no hard links) and are compared as bytes.
/// Removing a file is first one transaction that takes its name away and marks it an orphan; its
/// blocks are freed after that, and a crash part-way is finished by the next mount. So an unlink
/// or a rename over an existing name happens whole or not at all. The volatile `names` table is
/// rebuilt from the inode table at mount.
extension FileSystem {
    /// Checks that the format can hold `name`.
    /// - Throws: `.invalidName`, saying why.
    public static func validate(name: FileName) throws(FSError) {
        if let problem = name.problem { throw FSError(.invalidName, "invalid file name \"\(name)\": \(problem)") }
    }

    /// Creates an empty file.
    /// - Throws: `.invalidName`, `.exists`, `.noInodes`; `.busy` while an unlink, rename or
    ///   publish of `name` is in progress (it may end with the name taken or free).
    @discardableResult
    public func create(_ name: FileName) throws(FSError) -> FileID {
        try self.checkWritable()
        try Self.validate(name: name)
        return try self.namespace.withLock { (namespace) throws(FSError) -> FileID in
            guard namespace.names[name] == nil else { throw FSError(.exists, "\(name): file exists") }
            guard !namespace.busy.contains(name) else { throw Self.busy(name) }
            let id = try self.newInode(named: name, in: &namespace)
            namespace.names[name] = id.inode
            return id
        }
    }

    /// Creates a file with no name (an orphan, like `O_TMPFILE`): it is freed by the next mount
    /// unless `publish` gives it a name first.
    public func createUnnamed() throws(FSError) -> FileID {
        try self.checkWritable()
        return try self.namespace.withLock { (namespace) throws(FSError) -> FileID in
            try self.newInode(named: FileName(bytes: []), in: &namespace)
        }
    }

    /// Takes a free inode and initializes it; the caller holds the namespace lock.
    private func newInode(named name: FileName, in namespace: inout Namespace) throws(FSError) -> FileID {
        guard let number = namespace.freeInodes.popLast() else {
            throw FSError(.noInodes, "no free inodes (\(self.geometry.inodeCount) in this image)")
        }
        do throws(FSError) {
            return try self.locks[number].withWriteLock { () throws(FSError) -> FileID in
                let (generation, _) = try self.log.transaction { (tx) throws(FSError) -> UInt32 in
                    let record = tx.inode(number)
                    record.initialize(kind: .regular, name: name, now: FileSystem.now())
                    return record.generation
                }
                return FileID(inode: number, generation: generation)
            }
        } catch {
            namespace.freeInodes.append(number)
            throw error
        }
    }

    /// The file called `name`.
    /// - Throws: `.notFound`.
    public func lookup(_ name: FileName) throws(FSError) -> FileID {
        while true {
            let (number, busy) = self.namespace.withLock { ($0.names[name], $0.busy.contains(name)) }
            guard let number else { throw FSError(.notFound, "\(name): no such file") }
            let (generation, inUse) = self.locks[number].withReadLock {
                (self.record(number).generation, self.record(number).inUse)
            }
            if inUse { return FileID(inode: number, generation: generation) }
            // A rename or publish over `name` freed the file it replaced and is about to give
            // the name its new file: the name is never absent, so wait for that.
            guard busy else { throw FSError(.notFound, "\(name): no such file") }
            sched_yield()
        }
    }

    /// Opens `name`, creating it when absent.
    /// - Throws: as `create`: `.busy` while an unlink, rename or publish of `name` is in progress.
    public func openOrCreate(_ name: FileName) throws(FSError) -> FileID {
        do { return try self.lookup(name) } catch where error.code == .notFound {
            do { return try self.create(name) } catch where error.code == .exists { return try self.lookup(name) }
        }
    }

    /// Removes `name` and frees its blocks: whole or not at all, across a crash.
    /// - Parameter policy: what to do with blocks pinned for DMA (nil: the DAX layer's default).
    /// - Throws: `.notFound`; `.busy` or `.timedOut` from the policy (the file stays then).
    public func unlink(_ name: FileName, policy: TruncatePolicy? = nil) throws(FSError) {
        try self.checkWritable()
        let number = try self.namespace.withLock { (namespace) throws(FSError) -> Int in
            guard !namespace.busy.contains(name) else { throw Self.busy(name) }
            guard let number = namespace.names.removeValue(forKey: name) else {
                throw FSError(.notFound, "\(name): no such file")
            }
            namespace.busy.insert(name)
            return number
        }
        do throws(FSError) {
            try self.locks[number].withWriteLock { () throws(FSError) in
                try self.release(inode: number, policy: policy) { () throws(FSError) in
                    _ = try self.log.transaction { (tx) throws(FSError) in Self.stageOrphan(tx, number) }
                }
            }
        } catch {
            self.namespace.withLock { namespace in
                namespace.busy.remove(name)
                // Still named unless the orphaning transaction committed before the failure.
                if self.record(number).intent != .orphan { namespace.names[name] = number }
            }
            throw error
        }
        self.namespace.withLock { namespace in
            namespace.busy.remove(name)
            namespace.freeInodes.append(number)
        }
    }

    /// Frees every block of inode `number` and marks it free; the caller holds its lock (and
    /// `held`, when it holds another file's too: see `name`). Once the policy lets the blocks go,
    /// `orphan` commits the transaction that takes the file's name away (the point of no return:
    /// from it on, mount finishes the release).
    private func release(
        inode number: Int, policy: TruncatePolicy?, held: FileLocks? = nil, orphan: () throws(FSError) -> Void
    ) throws(FSError) {
        try self.removePages(number, policy: policy, newSize: { 0 }, held: held, beforeRemoval: orphan) { () -> Range<Int> in
            let size = self.record(number).size
            return 0..<Int((size + UInt64(pageSize) - 1) / UInt64(pageSize))
        }
        // Its reserved blocks go with it (the map is empty now, so none is mapped), and so does
        // the run it had claimed, if any.
        let (_, freed) = try self.log.transaction { (tx) throws(FSError) in
            Self.stageReleaseReservation(tx, inode: number)
            tx.inode(number).release()
        }
        self.forgetReservation(number)
        self.allocator.dissolveClaims(owner: number)
        self.allocator.release(freed)
    }

    /// Stages turning inode `number` into an orphan: no name, to be freed.
    static func stageOrphan(_ tx: Transaction, _ number: Int) {
        let record = tx.inode(number)
        record.setName(FileName(bytes: []))
        record.intent = .orphan
        record.modifiedNanoseconds = FileSystem.now()
    }

    /// Renames `source` to `target`, replacing `target` if it exists (as rename(2) does): one
    /// transaction gives `source` the name and makes the replaced file an orphan, so a crash
    /// leaves either the old two files or the new one.
    /// - Throws: `.notFound`, `.invalidName`; `.busy` or `.timedOut` when the replaced file's
    ///   blocks are pinned and the DAX layer's default policy refuses (nothing changed then).
    public func rename(_ source: FileName, to target: FileName) throws(FSError) {
        try self.checkWritable()
        try Self.validate(name: target)
        guard source != target else {
            _ = try self.lookup(source)
            return
        }
        // Both names stay busy while the rename runs: the namespace lock is not held while the
        // replaced file's pins are waited for, so one pinned file stalls only operations on
        // these two names.
        let (number, replaced) = try self.namespace.withLock { (namespace) throws(FSError) -> (Int, Int?) in
            guard !namespace.busy.contains(source) else { throw Self.busy(source) }
            guard let number = namespace.names[source] else { throw FSError(.notFound, "\(source): no such file") }
            guard !namespace.busy.contains(target) else { throw Self.busy(target) }
            namespace.busy.formUnion([source, target])
            return (number, namespace.names[target])
        }
        do throws(FSError) {
            try self.name(number, as: target, replacing: replaced) { (tx) throws(FSError) in
                let record = tx.inode(number)
                record.setName(target)
                record.modifiedNanoseconds = FileSystem.now()
            }
        } catch {
            // Renamed on the media unless the failure came before the naming transaction
            // (freeing the replaced file's blocks can fail after it: mount finishes that).
            let renamed = self.locks[number].withReadLock { self.record(number).name == target }
            self.namespace.withLock { namespace in
                namespace.busy.subtract([source, target])
                guard renamed else { return }
                if let replaced { namespace.freeInodes.append(replaced) }
                namespace.names.removeValue(forKey: source)
                namespace.names[target] = number
            }
            throw error
        }
        self.namespace.withLock { namespace in
            namespace.busy.subtract([source, target])
            if let replaced { namespace.freeInodes.append(replaced) }
            namespace.names.removeValue(forKey: source)
            namespace.names[target] = number
        }
    }

    /// The error for an operation on a name another unlink, rename or publish is working on.
    private static func busy(_ name: FileName) -> FSError {
        FSError(.busy, "\(name): another unlink, rename or publish of it is in progress")
    }

    /// Gives the unnamed file `id` (from `createUnnamed`) the name `name`, replacing a file of
    /// that name atomically: a write of a whole file that either happened or did not.
    /// - Throws: `.invalidName`, `.notFound` (not an unnamed file), `.busy`/`.timedOut` as `rename`.
    public func publish(_ id: FileID, as name: FileName) throws(FSError) {
        try self.checkWritable()
        try Self.validate(name: name)
        func unnamed(_ record: InodeRecord) throws(FSError) {
            guard record.inUse, record.generation == id.generation, record.intent == .orphan else {
                throw FSError(.notFound, "\(id): not an unnamed file")
            }
        }
        try self.lock(id).withReadLock { () throws(FSError) in try unnamed(try self.checkedRecord(id)) }
        // The name stays busy while the publish runs (see `rename`).
        let replaced = try self.namespace.withLock { (namespace) throws(FSError) -> Int? in
            guard !namespace.busy.contains(name) else { throw Self.busy(name) }
            namespace.busy.insert(name)
            return namespace.names[name]
        }
        do throws(FSError) {
            try self.name(id.inode, as: name, replacing: replaced) { (tx) throws(FSError) in
                // Checked again under the file's lock: another publish of it may have won.
                let record = tx.inode(id.inode)
                try unnamed(record)
                record.setName(name)
                record.intent = InodeRecord.Intent.none
                record.modifiedNanoseconds = FileSystem.now()
            }
        } catch {
            // Published on the media unless the failure came before the naming transaction.
            let published = self.locks[id.inode].withReadLock {
                self.record(id.inode).name == name && self.record(id.inode).intent != .orphan
            }
            self.namespace.withLock { namespace in
                namespace.busy.remove(name)
                guard published else { return }
                if let replaced { namespace.freeInodes.append(replaced) }
                namespace.names[name] = id.inode
            }
            throw error
        }
        self.namespace.withLock { namespace in
            namespace.busy.remove(name)
            if let replaced { namespace.freeInodes.append(replaced) }
            namespace.names[name] = id.inode
        }
    }

    /// Removes an unnamed file (a temporary whose write failed).
    public func discardUnnamed(_ id: FileID) throws(FSError) {
        try self.checkWritable()
        try self.lock(id).withWriteLock { () throws(FSError) in
            let record = try self.checkedRecord(id)
            guard record.intent == .orphan else { throw FSError(.notFound, "\(id): not an unnamed file") }
            try self.release(inode: id.inode, policy: nil) {}
        }
        self.namespace.withLock { $0.freeInodes.append(id.inode) }
    }

    /// Stages naming inode `number` (`stage`) and, when `replaced` is set, makes the replaced file
    /// an orphan in the same transaction, once the policy lets its blocks go; then frees them.
    /// The caller holds the names involved busy (not the namespace lock).
    ///
    /// Both files' locks are held for it, taken in ascending inode number (the lock order:
    /// whichever of the two files is older). The layout breaker drops both while it waits for the
    /// replaced file's pins, so the renamed file stays usable meanwhile (a device pinning it is
    /// not stalled by a wait for another device); a publish's `stage` checks its file again then.
    private func name(
        _ number: Int, as target: FileName, replacing replaced: Int?, stage: (Transaction) throws(FSError) -> Void
    ) throws(FSError) {
        guard let replaced else {
            try self.locks[number].withWriteLock { () throws(FSError) in
                _ = try self.log.transaction { (tx) throws(FSError) in try stage(tx) }
            }
            return
        }
        let held = FileLocks(self.locks, number, replaced)
        held.lockExclusive()
        defer { held.unlock() }
        try self.release(inode: replaced, policy: nil, held: held) { () throws(FSError) in
            _ = try self.log.transaction { (tx) throws(FSError) in
                try stage(tx)
                Self.stageOrphan(tx, replaced)
            }
        }
    }

    /// Size, blocks and name of a file.
    public func stat(_ id: FileID) throws(FSError) -> FileStat {
        try self.lock(id).withReadLock { () throws(FSError) -> FileStat in
            let record = try self.checkedRecord(id)
            return FileStat(
                id: id, name: record.name, size: Int(record.size), blocks: Int(record.blocks),
                modifiedNanoseconds: record.modifiedNanoseconds)
        }
    }

    /// Every named file, sorted by name (bytes). A name that a rename or publish is giving a new
    /// file is listed with that file, never left out.
    public func list() -> [FileStat] {
        let names = self.namespace.withLock { $0.names }
        return names.sorted { $0.key < $1.key }.compactMap { name, number in
            if let stat = self.stat(inode: number, name: name) { return stat }
            // The file the name had was freed by a rename or publish over it, which is about to
            // give the name its new file: `lookup` waits for that (and says notFound if the name
            // was unlinked meanwhile).
            guard let id = try? self.lookup(name) else { return nil }
            return self.stat(inode: id.inode, name: name)
        }
    }

    /// The stat of inode `number` under `name`, if it is a live file.
    private func stat(inode number: Int, name: FileName) -> FileStat? {
        self.locks[number].withReadLock {
            let record = self.record(number)
            guard record.inUse else { return nil }
            return FileStat(
                id: FileID(inode: number, generation: record.generation), name: name, size: Int(record.size),
                blocks: Int(record.blocks), modifiedNanoseconds: record.modifiedNanoseconds)
        }
    }

    /// The record of `id` if it still names a live regular file; the caller holds its lock.
    /// The lock of `id`'s inode, once its number is known to name a file: a caller's FileID
    /// (its initializer is public) may hold any number, and the lock table traps outside its range.
    func lock(_ id: FileID) throws(FSError) -> ReadWriteLock {
        guard id.inode >= FileSystem.firstUserInode, id.inode < self.geometry.inodeCount else {
            throw FSError(.notFound, "\(id): no such file")
        }
        return self.locks[id.inode]
    }

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
