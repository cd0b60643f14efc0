import CShims
import DaxlabSupport
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// Writes whose source is memory this process's file systems serve the faults of (see
/// `FaultServedMemory`): the source is faulted in by copying it, with no file lock held, and
/// written from the copy. The analogue of `iomap_write_iter`'s `fault_in_iov_iter_readable`
/// before it takes the locks, with the copy made once instead of retried.
extension FileSystem {
    /// The bytes of such a write copied, then written under the file's lock, at a time.
    package static let bounceChunk = 1 << 20

    /// Writes `bytes` (fault-served) at `offset`, `bounceChunk` bytes at a time: each chunk is
    /// copied into a bounce buffer outside the file's lock (its faults may take any file's lock
    /// shared, this one's too), then written from there under the lock.
    func writeThroughBounceBuffer(_ id: FileID, offset: Int, bytes: UnsafeRawBufferPointer) throws(FSError) {
        let bounce = UnsafeMutableRawPointer.allocate(byteCount: min(bytes.count, Self.bounceChunk), alignment: pageSize)
        defer { bounce.deallocate() }
        let source = bytes.baseAddress!
        var done = 0
        while done < bytes.count {
            let length = min(Self.bounceChunk, bytes.count - done)
            try Self.faultIn(UnsafeRawBufferPointer(start: source + done, count: length), copyingTo: bounce)
            try self.writeLocked(id, offset: offset + done, bytes: UnsafeRawBufferPointer(start: bounce, count: length))
            done += length
        }
    }

    /// Copies `source` to `destination`, faulting `source` in: with `process_vm_readv` where the
    /// kernel's accesses fault every fault-served part of it in (a page it cannot fault in
    /// then fails the write with EFAULT, where a CPU load would raise SIGBUS), else with the CPU
    /// (`memcpy`), whose faults the SIGSEGV handler serves. Holds no lock.
    /// - Throws: `.badAddress` when the kernel's copy stops at a page it cannot fault in; `.io`
    ///   for any other refusal but the system call's own absence (then the CPU copies).
    static func faultIn(_ source: UnsafeRawBufferPointer, copyingTo destination: UnsafeMutableRawPointer) throws(FSError) {
        let start = source.baseAddress!
        if FaultServedMemory.kernelFaultsThroughout(source) {
            var copied = 0
            while copied < source.count {
                let result = CShims_process_vm_readv_self(destination + copied, start + copied, source.count - copied)
                if result > 0 {
                    copied += result
                    continue
                }
                let error = Int32(-result)
                if result == 0 || error == EFAULT {
                    throw FSError(
                        .badAddress,
                        "write: the source at \(start + copied) could not be read (bad address: past its file's end?)")
                }
                if error == EINTR { continue }
                guard error == ENOSYS || error == EPERM else {
                    throw FSError(.io, SystemCallError("write: process_vm_readv of the source", errno: error).description)
                }
                // Refused here (seccomp): the CPU copies the rest, its faults served all the same.
                (destination + copied).copyMemory(from: start + copied, byteCount: source.count - copied)
                return
            }
        } else {
            destination.copyMemory(from: start, byteCount: source.count)
        }
    }
}
