import CDaxlab
import DAX
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
#endif

/// libdaxlab's handles: numbers that name live objects in a table, never reused, so a handle
/// that was unmounted or unpinned (or never existed) is found missing (-EBADF) instead of being
/// dereferenced.
enum Handles {
    private struct Table {
        var next: UInt64 = 1
        var mounts: [UInt64: CMount] = [:]
        var pins: [UInt64: CPin] = [:]
    }

    // (A leaf: nothing is taken under it, and nothing but its dictionaries is touched there.)
    private static let table = Locked(Table(), rank: .cHandles)

    static func add(_ mount: CMount) -> UInt64 {
        Self.table.withLock { table in
            defer { table.next += 1 }
            table.mounts[table.next] = mount
            return table.next
        }
    }

    static func mount(_ handle: UInt64) throws(CFailure) -> CMount {
        guard let mount = Self.table.withLock({ $0.mounts[handle] }) else {
            throw CFailure(EBADF, "mount handle \(handle) is not a mounted image (unmounted, or never mounted)")
        }
        return mount
    }

    /// `handle`'s mount, counted as in use until `leave()`: an unmount waits for the calls in
    /// progress on its mount, and a call that comes after the unmount began gets -EBADF.
    static func enter(_ handle: UInt64) throws(CFailure) -> CMount {
        let mount = try Self.mount(handle)
        try mount.enter(handle)
        return mount
    }

    static func pin(_ handle: UInt64) throws(CFailure) -> CPin {
        guard let pin = Self.table.withLock({ $0.pins[handle] }) else {
            throw CFailure(EBADF, "pin handle \(handle) is not a pin held now (unpinned, or never pinned)")
        }
        return pin
    }

    /// Removes `handle`'s mount if `canGo` allows it (under the table's lock, so no pin of it is
    /// added meanwhile).
    static func removeMount(_ handle: UInt64, if canGo: (CMount) throws(CFailure) -> Void) throws(CFailure) -> CMount {
        try Self.table.withLock { (table: inout Table) throws(CFailure) -> CMount in
            guard let mount = table.mounts[handle] else {
                throw CFailure(EBADF, "mount handle \(handle) is not a mounted image (unmounted, or never mounted)")
            }
            try canGo(mount)
            table.mounts[handle] = nil
            return mount
        }
    }

    /// Puts back a mount whose unmount failed, under its handle.
    static func restore(_ handle: UInt64, _ mount: CMount) {
        Self.table.withLock { $0.mounts[handle] = mount }
    }

    /// Removes `handle`'s pin, unpinned, from the table and from its mount's pins at once.
    static func removePin(_ handle: UInt64, of mount: CMount) {
        Self.table.withLock { table in
            table.pins[handle] = nil
            mount.pins.remove(handle)
        }
    }

    /// Registers a pin of `mount` unless the mount is being unmounted.
    static func addPin(_ pin: CPin, of mount: CMount) throws(CFailure) -> UInt64 {
        try Self.table.withLock { (table: inout Table) throws(CFailure) -> UInt64 in
            guard table.mounts.values.contains(where: { $0 === mount }) else {
                throw CFailure(EBADF, "the image was unmounted while the pin was being taken")
            }
            defer { table.next += 1 }
            table.pins[table.next] = pin
            mount.pins.insert(table.next)
            return table.next
        }
    }

}

/// A failure as the C interface returns it: a negative errno value, and one line for
/// `daxlab_last_error`.
struct CFailure: Error {
    var errno: Int32
    var message: String
    init(_ errno: Int32, _ message: String) {
        self.errno = errno
        self.message = message
    }

    /// The errno value a C program expects for each of daxlab's error codes.
    init(_ error: FSError) {
        let number: Int32 = switch error.code {
        case .notFound: ENOENT
        case .exists: EEXIST
        case .invalidName: EINVAL
        case .invalidArgument: EINVAL
        case .noSpace, .noInodes: ENOSPC
        case .fileTooLarge: EFBIG
        case .busy, .inUse: EBUSY
        case .timedOut: ETIMEDOUT
        case .readOnly: EROFS
        case .notSupported: EOPNOTSUPP
        case .badAddress: EFAULT
        case .corrupt: EUCLEAN
        case .notAnImage: EMEDIUMTYPE
        case .notEmpty: ENOTEMPTY
        case .pmem: ENODEV
        default: EIO
        }
        self.init(number, error.message)
    }
}

/// Runs the body of a C entry point: its result, or the failure's negative errno value with the
/// thread's last error set.
func cCall(_ body: () throws(CFailure) -> Int64) -> Int64 {
    do {
        return try body()
    } catch {
        error.message.withCString { CDaxlab_set_last_error($0) }
        return -Int64(error.errno)
    }
}

func cCall(_ body: () throws(CFailure) -> Void) -> Int32 {
    Int32(cCall { () throws(CFailure) -> Int64 in
        try body()
        return 0
    })
}

/// `body` with FSError turned into a CFailure.
func fsCall<Result: ~Copyable>(_ body: () throws(FSError) -> Result) throws(CFailure) -> Result {
    do { return try body() } catch { throw CFailure(error) }
}

/// A C string argument naming a path: checked for NULL and for UTF-8 (a path is not rewritten).
func string(_ pointer: UnsafePointer<CChar>?, _ what: String) throws(CFailure) -> String {
    guard let pointer else { throw CFailure(EINVAL, "\(what) is NULL") }
    guard let text = String(validatingCString: pointer) else { throw CFailure(EINVAL, "\(what) is not UTF-8") }
    return text
}

/// A C string argument naming a file: its bytes as they are (daxlab's names are bytes).
func fileName(_ pointer: UnsafePointer<CChar>?, _ what: String) throws(CFailure) -> FileName {
    guard let pointer else { throw CFailure(EINVAL, "\(what) is NULL") }
    let bytes = UnsafeRawBufferPointer(start: pointer, count: strlen(pointer))
    return FileName(bytes: Array(bytes))
}

/// A C out-pointer argument, checked for NULL.
func output<T>(_ pointer: UnsafeMutablePointer<T>?, _ what: String) throws(CFailure) -> UnsafeMutablePointer<T> {
    guard let pointer else { throw CFailure(EINVAL, "\(what) is NULL") }
    return pointer
}

/// A policy argument: nil for DAXLAB_POLICY_DEFAULT.
func policy(_ value: Int32) throws(CFailure) -> TruncatePolicy? {
    let policies: [TruncatePolicy] = [.none, .fail, .wait, .sequester, .deferred, .leaseBreak, .mainline, .odp]
    if value == -1 { return nil }
    guard value >= 0, Int(value) < policies.count else {
        throw CFailure(EINVAL, "policy \(value) is not a daxlab_policy (-1 to 7)")
    }
    return policies[Int(value)]
}

extension CMount {
    /// A daxlab_file_t of this mount: the inode in the low 32 bits, the generation in the high
    /// ones, mixed with the mount's own key, so that a handle of another mount's file names no
    /// file here (-ENOENT) rather than this mount's file of the same inode.
    func fileID(_ file: UInt64) -> FileID {
        FileID(inode: Int(file & 0xFFFF_FFFF), generation: UInt32(truncatingIfNeeded: file >> 32) ^ self.key)
    }

    func fileHandle(_ id: FileID) -> UInt64 { UInt64(id.inode) | UInt64(id.generation ^ self.key) << 32 }
}

/// Flag bits a call takes; any other gives -EINVAL.
func checkFlags(_ flags: Int32, allowed: Int32, _ what: String) throws(CFailure) {
    guard flags & ~allowed == 0 else { throw CFailure(EINVAL, "\(what) flags 0x\(String(flags, radix: 16)): unknown bits") }
}
