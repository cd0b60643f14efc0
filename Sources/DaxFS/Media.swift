import Pmem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The mapping as the file system persists to it: every barrier (a drain after flushes) is a
/// numbered *persist point*. With `DAXLAB_CRASH_AT=N` in the environment the process kills itself
/// with SIGKILL at the N-th point, which is how the crash campaign stops a workload between any two
/// durable steps.
public final class Media: Sendable {
    public let mapping: PmemMapping
    /// The persist point to die at (from `DAXLAB_CRASH_AT`), or nil.
    let crashAt: Int?
    private let points = Atomic<Int>(0)

    init(mapping: PmemMapping, crashAt: Int? = Media.crashPointFromEnvironment()) {
        self.mapping = mapping
        self.crashAt = crashAt
    }

    /// The value of `DAXLAB_CRASH_AT`, when it is a positive integer.
    static func crashPointFromEnvironment() -> Int? {
        guard let text = getenv("DAXLAB_CRASH_AT") else { return nil }
        return Int(String(cString: text)).flatMap { $0 > 0 ? $0 : nil }
    }

    /// How many persist points this media has passed.
    public var persistPoints: Int { self.points.load(ordering: .relaxed) }

    @inlinable
    var base: UnsafeMutableRawPointer { self.mapping.base }

    /// Starts writing back a range; durable after the next `barrier()`.
    func flush(_ offset: Int, _ length: Int) throws(FSError) {
        do { try self.mapping.flush(offset: offset, length: length) } catch { throw FSError(error) }
    }

    /// Waits for earlier flushes: a persist point.
    func barrier() {
        self.mapping.drain()
        let point = self.points.add(1, ordering: .relaxed).newValue
        if let crashAt = self.crashAt, point == crashAt {
            kill(getpid(), SIGKILL)
        }
    }

    /// Flush and barrier: `offset..<offset+length` is durable when this returns.
    func persist(_ offset: Int, _ length: Int) throws(FSError) {
        try self.flush(offset, length)
        self.barrier()
    }

    /// Copies bytes in and persists them (data blocks: non-temporal, like a device).
    func write(_ offset: Int, from source: UnsafeRawPointer, count: Int) throws(FSError) {
        do {
            try self.mapping.copy(to: offset, from: source, count: count, flags: [.nonTemporal, .noDrain])
        } catch { throw FSError(error) }
    }

    /// Zeroes a range without draining; call `barrier()`.
    func zero(_ offset: Int, _ length: Int) throws(FSError) {
        do { try self.mapping.fill(offset: offset, byte: 0, count: length, flags: [.noDrain]) } catch {
            throw FSError(error)
        }
    }
}
