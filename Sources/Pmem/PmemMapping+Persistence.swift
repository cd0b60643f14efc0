#if canImport(Glibc)
import Glibc
#endif
import CShims

/// How a mapping makes stores durable; chosen once per mapping from `pmem_is_pmem`.
public enum PersistenceStrategy: String, Sendable, Codable {
    /// CPU cache flushes (`pmem_persist`: CLWB/CLFLUSHOPT + SFENCE); no system call.
    case pmem
    /// `pmem_msync` (msync(MS_SYNC) on the page-aligned range): the page cache is written back.
    case msync
}

extension PmemMapping {
    /// Whether the platform flushes CPU caches on power loss (eADR: the persistence domain
    /// includes the caches), so a store is durable once it is globally visible
    /// (`pmem_has_auto_flush`).
    public static var platformHasAutoFlush: Bool { pmem_has_auto_flush() == 1 }
}

/// Flags for `copy` and `fill`: libpmem's `PMEM_F_MEM_*`, which are hints except `noDrain`.
public struct CopyFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Do not wait for the stores to drain; call `drain()` (or `persist`) before relying on them.
    public static let noDrain = CopyFlags(rawValue: UInt32(PMEM_F_MEM_NODRAIN))
    /// Use non-temporal stores (bypass the cache): DMA-like, what large copies want.
    public static let nonTemporal = CopyFlags(rawValue: UInt32(PMEM_F_MEM_NONTEMPORAL))
    /// Use temporal (cached) stores, then flush.
    public static let temporal = CopyFlags(rawValue: UInt32(PMEM_F_MEM_TEMPORAL))
    /// Write-combining hint.
    public static let writeCombining = CopyFlags(rawValue: UInt32(PMEM_F_MEM_WC))
    /// Write-back hint.
    public static let writeBack = CopyFlags(rawValue: UInt32(PMEM_F_MEM_WB))
    /// Neither flush nor drain: the caller persists the range itself.
    public static let noFlush = CopyFlags(rawValue: UInt32(PMEM_F_MEM_NOFLUSH))
}

extension PmemMapping {
    /// Makes `offset..<offset+length` durable: on pmem the cache lines are flushed and drained
    /// (`pmem_persist`), otherwise the pages are written back (`pmem_msync`).
    /// - Throws: `.ioFailed` when msync fails (a write-back error of a page-cache file).
    @inlinable
    public func persist(offset: Int, length: Int) throws(PmemError) {
        precondition(self.contains(offset: offset, length: length), "persist range outside the mapping")
        switch self.persistence {
        case .pmem: pmem_persist(self.base + offset, length)
        case .msync: try self.msync(offset: offset, length: length)
        }
    }

    /// Starts making a range durable without waiting: a batch of `flush` calls followed by one
    /// `drain()` is as durable as `persist` on each range. On msync media there is no separate
    /// flush, so the range is written back at once.
    @inlinable
    public func flush(offset: Int, length: Int) throws(PmemError) {
        precondition(self.contains(offset: offset, length: length), "flush range outside the mapping")
        switch self.persistence {
        case .pmem: pmem_flush(self.base + offset, length)
        case .msync: try self.msync(offset: offset, length: length)
        }
    }

    /// Waits for earlier `flush`es and no-drain copies to reach the persistence domain (SFENCE).
    @inlinable
    public func drain() {
        if self.persistence == .pmem { pmem_drain() }
    }

    /// Copies `count` bytes from `source` to `offset` and makes them durable as `flags` allow:
    /// without flags the copy has persisted when this returns. On msync media the range is
    /// written back unless `.noFlush` is given.
    @inlinable
    public func copy(
        to offset: Int, from source: UnsafeRawPointer, count: Int, flags: CopyFlags = []
    ) throws(PmemError) {
        precondition(self.contains(offset: offset, length: count), "copy range outside the mapping")
        switch self.persistence {
        case .pmem:
            pmem_memcpy(self.base + offset, source, count, flags.rawValue)
        case .msync:
            pmem_memcpy(self.base + offset, source, count, UInt32(PMEM_F_MEM_NOFLUSH))
            if !flags.contains(.noFlush) { try self.msync(offset: offset, length: count) }
        }
    }

    /// Sets `count` bytes at `offset` to `byte`, durable as for `copy`.
    @inlinable
    public func fill(offset: Int, byte: UInt8, count: Int, flags: CopyFlags = []) throws(PmemError) {
        precondition(self.contains(offset: offset, length: count), "fill range outside the mapping")
        switch self.persistence {
        case .pmem:
            pmem_memset(self.base + offset, Int32(byte), count, flags.rawValue)
        case .msync:
            pmem_memset(self.base + offset, Int32(byte), count, UInt32(PMEM_F_MEM_NOFLUSH))
            if !flags.contains(.noFlush) { try self.msync(offset: offset, length: count) }
        }
    }

    /// Makes a range durable all the way to the media, flushing the memory controller's write
    /// queues too where the platform allows (`pmem_deep_persist`; used before a clean unmount).
    public func deepPersist(offset: Int, length: Int) throws(PmemError) {
        precondition(self.contains(offset: offset, length: length), "deep persist range outside the mapping")
        errno = 0
        if pmem_deep_persist(self.base + offset, length) != 0 {
            throw PmemError.libpmem(.ioFailed, "deep persist", errno: errno, path: self.path)
        }
    }

    /// Writes back the pages covering a range (`pmem_msync` aligns it down to a page).
    @usableFromInline
    func msync(offset: Int, length: Int) throws(PmemError) {
        #if DAXLAB_TEST_HOOKS
        if self.msyncFailsForTests.load(ordering: .relaxed) {
            throw PmemError.libpmem(.ioFailed, "msync", errno: EIO, path: self.path)
        }
        #endif
        errno = 0
        if pmem_msync(self.base + offset, length) != 0 {
            throw PmemError.libpmem(.ioFailed, "msync", errno: errno, path: self.path)
        }
    }
}
