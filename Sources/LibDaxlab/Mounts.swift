import CDaxlab
import CShims
import DAX
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
#endif

/// A mount as the C interface holds it: the file system, the DAX layer once attached, the pins
/// its handles name, and the thread that runs its lease-break callbacks.
final class CMount: @unchecked Sendable {
    let fs: FileSystem
    /// Set once, by `daxlab_attach`.
    let dax = Locked<DAXFileSystem?>(nil, rank: .cMount)
    /// The handles of its pins held now (changed under the handle table's lock).
    var pins: Set<UInt64> = []
    let notifier = LeaseNotifier()
    /// Mixed into its file handles (`fileHandle`).
    let key = UInt32.random(in: 1...UInt32.max)
    /// Calls in progress on the mount, and whether an unmount has begun.
    private let activity = ConditionLock((calls: 0, closing: false), rank: .cMountCalls)

    init(fs: FileSystem) { self.fs = fs }

    /// Counts a call in progress, or -EBADF once an unmount has begun.
    func enter(_ handle: UInt64) throws(CFailure) {
        try self.activity.withLock { (state: inout (calls: Int, closing: Bool)) throws(CFailure) in
            guard !state.closing else { throw CFailure(EBADF, "mount handle \(handle) is being unmounted") }
            state.calls += 1
        }
    }

    func leave() { self.activity.withLockThenBroadcast { $0.calls -= 1 } }

    /// Refuses new calls and waits until those in progress have returned (or, with `reopen`,
    /// takes them again: the unmount failed).
    func close(reopen: Bool = false) {
        if reopen {
            self.activity.withLock { $0.closing = false }
            return
        }
        self.activity.withLock { $0.closing = true }
        _ = self.activity.wait(until: { $0.calls == 0 }) { _ in () }
    }

    /// The DAX layer, or -EINVAL when `daxlab_attach` was not called.
    func attached() throws(CFailure) -> DAXFileSystem {
        guard let dax = self.dax.withLock({ $0 }) else {
            throw CFailure(EINVAL, "\(self.fs.path): the DAX layer is not attached (call daxlab_attach first)")
        }
        return dax
    }
}

@_cdecl("daxlab_format")
public func daxlabFormat(_ path: UnsafePointer<CChar>?, _ size: UInt64, _ flags: Int32) -> Int32 {
    cCall { () throws(CFailure) in
        let path = try string(path, "path")
        try checkFlags(flags, allowed: Int32(DAXLAB_FORCE.rawValue), "daxlab_format")
        guard size <= UInt64(Int.max) else { throw CFailure(EINVAL, "size \(size) is out of range") }
        _ = try fsCall { () throws(FSError) in
            try FileSystem.format(path: path, size: size == 0 ? nil : Int(size), force: flags & Int32(DAXLAB_FORCE.rawValue) != 0)
        }
    }
}

@_cdecl("daxlab_mount")
public func daxlabMount(_ path: UnsafePointer<CChar>?, _ flags: Int32, _ mount: UnsafeMutablePointer<UInt64>?) -> Int32 {
    cCall { () throws(CFailure) in
        let path = try string(path, "path")
        let out = try output(mount, "mount")
        try checkFlags(flags, allowed: Int32(DAXLAB_READ_ONLY.rawValue), "daxlab_mount")
        let readOnly = flags & Int32(DAXLAB_READ_ONLY.rawValue) != 0
        let fs = try fsCall { () throws(FSError) in try FileSystem.mount(path: path, readOnly: readOnly) }
        out.pointee = Handles.add(CMount(fs: fs))
    }
}

@_cdecl("daxlab_unmount")
public func daxlabUnmount(_ handle: UInt64) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.removeMount(handle) { (mount: CMount) throws(CFailure) in
            guard mount.pins.isEmpty else {
                throw CFailure(EBUSY, "\(mount.fs.path): \(mount.pins.count) pin(s) still held: unpin them first")
            }
        }
        mount.close()
        do throws(FSError) { try mount.fs.unmount() } catch {
            // Still mounted: the same handle names it again, for another try.
            mount.close(reopen: true)
            Handles.restore(handle, mount)
            throw CFailure(error)
        }
        // (No pin is left, so no lease can break now: the callbacks queued have all been posted.)
        mount.notifier.stop()
    }
}

@_cdecl("daxlab_create")
public func daxlabCreate(_ handle: UInt64, _ name: UnsafePointer<CChar>?, _ file: UnsafeMutablePointer<UInt64>?) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        let name = try fileName(name, "name")
        let out = try output(file, "file")
        let id = try fsCall { () throws(FSError) in try mount.fs.create(name) }
        out.pointee = mount.fileHandle(id)
    }
}

@_cdecl("daxlab_open")
public func daxlabOpen(_ handle: UInt64, _ name: UnsafePointer<CChar>?, _ file: UnsafeMutablePointer<UInt64>?) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        let name = try fileName(name, "name")
        let out = try output(file, "file")
        let id = try fsCall { () throws(FSError) in try mount.fs.lookup(name) }
        out.pointee = mount.fileHandle(id)
    }
}

@_cdecl("daxlab_unlink")
public func daxlabUnlink(_ handle: UInt64, _ name: UnsafePointer<CChar>?, _ policyValue: Int32) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        let name = try fileName(name, "name")
        let chosen = try policy(policyValue)
        try fsCall { () throws(FSError) in try mount.fs.unlink(name, policy: chosen) }
    }
}

@_cdecl("daxlab_rename")
public func daxlabRename(_ handle: UInt64, _ from: UnsafePointer<CChar>?, _ to: UnsafePointer<CChar>?) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        let source = try fileName(from, "from")
        let target = try fileName(to, "to")
        try fsCall { () throws(FSError) in try mount.fs.rename(source, to: target) }
    }
}

/// Copies `count` bytes from `source` to `destination` as the kernel copies to and from a
/// caller's buffer (`copy_to_user`, `copy_from_user`): a side that cannot be read or written
/// (not mapped, or a mapping's page past its file's end) gives -EFAULT, not a signal
/// (`process_vm_readv` within this process; the CPU copies where it is refused).
/// - Parameter what: names the caller's side in the error ("the buffer at", "the source at").
func copyChecked(
    to destination: UnsafeMutableRawPointer, from source: UnsafeRawPointer, count: Int, _ what: String
) throws(CFailure) {
    var copied = 0
    while copied < count {
        let result = CShims_process_vm_readv_self(destination + copied, source + copied, count - copied)
        if result > 0 {
            copied += result
            continue
        }
        let error = Int32(-result)
        if error == EINTR { continue }
        if error == ENOSYS || error == EPERM {
            (destination + copied).copyMemory(from: source + copied, byteCount: count - copied)
            return
        }
        throw CFailure(EFAULT, "\(what) cannot be read or written (bad address)")
    }
}

/// An offset and count in range of `Int`.
private func range(_ offset: UInt64, _ count: Int) throws(CFailure) -> Int {
    guard offset <= UInt64(Int.max) - UInt64(count) else { throw CFailure(EINVAL, "offset \(offset) is out of range") }
    return Int(offset)
}

@_cdecl("daxlab_read")
public func daxlabRead(
    _ handle: UInt64, _ file: UInt64, _ buffer: UnsafeMutableRawPointer?, _ count: Int, _ offset: UInt64
) -> Int64 {
    cCall { () throws(CFailure) -> Int64 in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        guard count >= 0, count <= 1 << 30 else { throw CFailure(EINVAL, "count \(count) is out of range (at most 1 GiB)") }
        guard let buffer else { throw CFailure(EINVAL, "buffer is NULL") }
        let start = try range(offset, count)
        let bytes = try fsCall { () throws(FSError) in try mount.fs.read(mount.fileID(file), offset: start, count: count) }
        let copied: CFailure? = bytes.withUnsafeBytes { source in
            guard let start = source.baseAddress else { return nil }  // (nothing read)
            do throws(CFailure) {
                try copyChecked(to: buffer, from: start, count: source.count, "read: the buffer at \(buffer)")
            } catch { return error }
            return nil
        }
        if let copied { throw copied }
        return Int64(bytes.count)
    }
}

@_cdecl("daxlab_write")
public func daxlabWrite(
    _ handle: UInt64, _ file: UInt64, _ buffer: UnsafeRawPointer?, _ count: Int, _ offset: UInt64
) -> Int64 {
    cCall { () throws(CFailure) -> Int64 in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        guard count >= 0 else { throw CFailure(EINVAL, "count \(count) is out of range") }
        guard let buffer else { throw CFailure(EINVAL, "buffer is NULL") }
        let start = try range(offset, count)
        try fsCall { () throws(FSError) in
            try mount.fs.write(mount.fileID(file), offset: start, bytes: UnsafeRawBufferPointer(start: buffer, count: count))
        }
        return Int64(count)
    }
}

@_cdecl("daxlab_truncate")
public func daxlabTruncate(_ handle: UInt64, _ file: UInt64, _ size: UInt64, _ policyValue: Int32) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        let chosen = try policy(policyValue)
        let bytes = try range(size, 0)
        try fsCall { () throws(FSError) in try mount.fs.truncate(mount.fileID(file), size: bytes, policy: chosen) }
    }
}

@_cdecl("daxlab_fallocate")
public func daxlabFallocate(
    _ handle: UInt64, _ file: UInt64, _ mode: Int32, _ offset: UInt64, _ length: UInt64, _ policyValue: Int32
) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        let chosen = try policy(policyValue)
        guard length > 0, length <= UInt64(Int.max) else { throw CFailure(EINVAL, "length \(length) is out of range") }
        let start = try range(offset, Int(length))
        let count = Int(length)
        let id = mount.fileID(file)
        let fs = mount.fs
        try fsCall { () throws(FSError) in
            switch UInt32(bitPattern: mode) {
            case DAXLAB_FALLOC_ALLOCATE.rawValue: _ = try fs.fallocate(id, offset: start, length: count)
            case DAXLAB_FALLOC_KEEP_SIZE.rawValue: _ = try fs.fallocate(id, offset: start, length: count, keepSize: true)
            case DAXLAB_FALLOC_PUNCH_HOLE.rawValue: try fs.punchHole(id, offset: start, length: count, policy: chosen)
            case DAXLAB_FALLOC_ZERO_RANGE.rawValue: try fs.zeroRange(id, offset: start, length: count, policy: chosen)
            case DAXLAB_FALLOC_COLLAPSE_RANGE.rawValue: try fs.collapseRange(id, offset: start, length: count, policy: chosen)
            case DAXLAB_FALLOC_INSERT_RANGE.rawValue: try fs.insertRange(id, offset: start, length: count, policy: chosen)
            default: throw FSError(.invalidArgument, "mode \(mode) is not a daxlab_fallocate_mode (0 to 5)")
            }
        }
    }
}

@_cdecl("daxlab_stat")
public func daxlabStat(_ handle: UInt64, _ file: UInt64, _ stat: UnsafeMutablePointer<daxlab_stat>?) -> Int32 {
    cCall { () throws(CFailure) in
        let mount = try Handles.enter(handle)
        defer { mount.leave() }
        let out = try output(stat, "stat")
        let found = try fsCall { () throws(FSError) in try mount.fs.stat(mount.fileID(file)) }
        out.pointee = daxlab_stat(
            size: UInt64(found.size), blocks: UInt64(found.blocks), modified_ns: found.modifiedNanoseconds)
    }
}
