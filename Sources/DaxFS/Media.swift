import Pmem

/// Sees every persist step of a mounted image: the crash campaign's hook (module CrashCampaign),
/// which models what power loss would leave and dies at a chosen point. Production mounts have
/// none, and pay one nil check per flush and per barrier.
package protocol PersistObserver: AnyObject, Sendable {
    /// `offset..<offset+length` of the mapping was flushed: durable after the next barrier.
    func didFlush(offset: Int, length: Int)
    /// A barrier (a drain after flushes) returned: a persist point. May not return (a crash).
    func didBarrier()
}

/// The mapping as the file system persists to it: flushes, and barriers that make them durable.
/// Every barrier is a *persist point* a `PersistObserver` sees.
public final class Media: Sendable {
    public let mapping: PmemMapping
    private let observer: (any PersistObserver)?

    init(mapping: PmemMapping, observer: (any PersistObserver)? = nil) {
        self.mapping = mapping
        self.observer = observer
    }

    var base: UnsafeMutableRawPointer { self.mapping.base }

    /// Starts writing back a range; durable after the next `barrier()`.
    func flush(_ offset: Int, _ length: Int) throws(FSError) {
        do { try self.mapping.flush(offset: offset, length: length) } catch { throw FSError(error) }
        self.observer?.didFlush(offset: offset, length: length)
    }

    /// Waits for earlier flushes: a persist point.
    func barrier() {
        self.mapping.drain()
        self.observer?.didBarrier()
    }

    /// Flush and barrier: `offset..<offset+length` is durable when this returns.
    func persist(_ offset: Int, _ length: Int) throws(FSError) {
        try self.flush(offset, length)
        self.barrier()
    }

    /// Zeroes a range and starts writing it back (non-temporal stores on pmem, msync otherwise),
    /// without draining: durable after the next `barrier()`, like a `flush`.
    func zero(_ offset: Int, _ length: Int) throws(FSError) {
        do { try self.mapping.fill(offset: offset, byte: 0, count: length, flags: [.noDrain]) } catch {
            throw FSError(error)
        }
        self.observer?.didFlush(offset: offset, length: length)
    }
}
