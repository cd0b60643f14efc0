import Atomics
import DaxFS
import DaxlabSupport

#if canImport(Glibc)
import Glibc
import Pmem
#endif

/// On-demand paging (RDMA ODP, HMM): a device that keeps *translations* of a file range instead
/// of pins. It subscribes to the range (an `mmu_interval_notifier`); a truncate or punch over it
/// invalidates the subscription instead of waiting for pins, and the device's next write through
/// a zapped translation faults and mirrors the range again (or finds it gone and stops).
///
/// The protocol (mm/mmu_notifier.c, Documentation/mm/hmm.rst):
///
/// - **invalidation** (the layout breaker, file lock held exclusively, after the unmap): the
///   subscription's sequence is made odd; the mirror's lock is taken, the translations over the
///   range are zapped, the lock dropped; the sequence is made even again. Device writes run
///   under that lock, so when the invalidation returns no write can still be using a zapped
///   translation: the truncate waits for that, never for a pin duration.
/// - **mapping** (`map`): `readBegin` (a sequence, waiting out an invalidation in progress),
///   fault every page in (the file's fault path), take the lock, and if `readRetry` says an
///   invalidation ran since `readBegin`, drop it and start again with a fresh sequence; else
///   program the translations.
///
/// One thread drives a mirror at a time (its device); the layout breaker invalidates it from any
/// thread.
public final class DeviceMirror: @unchecked Sendable {
    public let space: AddressSpace
    public let pages: Range<Int>
    /// Odd while an invalidation of the range runs; moves on with every invalidation.
    private let sequence = ManagedAtomic<UInt64>(0)
    /// The device's translation table under the device's lock: the block behind each page (0:
    /// none, or zapped). Translations are programmed, zapped and used under that lock.
    private let translations: Locked<[UInt32]>
    /// Invalidations that zapped this mirror, and mappings that had to start again.
    public let invalidations = ManagedAtomic<Int>(0)
    public let retries = ManagedAtomic<Int>(0)
    private let subscribed = ManagedAtomic<Bool>(true)

    #if DAXLAB_TEST_HOOKS
    /// Tests only (builds with DAXLAB_TEST_HOOKS=1): runs in `map` between faulting the range in and taking the
    /// lock, where an invalidation must be caught by `readRetry`.
    nonisolated(unsafe) var mappingHook: (() -> Void)?
    #endif

    /// Subscribes to `pages` of `space`'s file. Nothing is mapped until `map()`.
    public init(space: AddressSpace, pages: Range<Int>) {
        self.space = space
        self.pages = pages
        self.translations = Locked(Array(repeating: 0, count: pages.count), rank: .deviceMirror)
        space.subscribe(self)
    }

    /// Ends the subscription: later invalidations pass it by.
    public func unsubscribe() {
        guard self.subscribed.exchange(false, ordering: .acquiringAndReleasing) else { return }
        self.space.unsubscribe(self)
    }

    deinit { self.unsubscribe() }

    // MARK: The device's side

    /// Mirrors the range: faults every page in for writing and programs the translations, again
    /// and again until no invalidation ran in between.
    /// - Returns: the blocks now behind the pages.
    /// - Throws: what a write fault throws (`.invalidArgument` when the range is past the end of
    ///   file now: the device stops using it), with nothing programmed.
    @discardableResult
    public func map() throws(FSError) -> [UInt32] {
        while true {
            let sequence = self.readBegin()
            var blocks: [UInt32] = []
            blocks.reserveCapacity(self.pages.count)
            for page in self.pages {
                let address = try self.space.fault(page, write: true)
                blocks.append(UInt32((UnsafeMutableRawPointer(mutating: address) - self.space.base) / pageSize))
            }
            #if DAXLAB_TEST_HOOKS
            self.mappingHook?()
            #endif
            let programmed = self.translations.withLock { translations -> Bool in
                guard !self.readRetry(sequence) else { return false }
                translations = blocks
                return true
            }
            if programmed { return blocks }
            self.retries.wrappingIncrement(ordering: .relaxed)
        }
    }

    /// A device write of 4096 bytes from `source` through the translation of the `index`-th
    /// page (a non-temporal copy, drained), under the device's lock, so an invalidation waits for
    /// it. `whileLocked` runs after it landed, still under the lock, with the block (the
    /// oracle's check).
    /// - Returns: false when the translation was zapped (nothing written): map again.
    public func write(at index: Int, from source: UnsafeRawPointer, whileLocked: (UInt32) -> Void) -> Bool {
        self.translations.withLock { translations in
            let block = translations[index]
            guard block != 0 else { return false }
            let mapping = self.space.mapping
            try? mapping.copy(to: Int(block) * pageSize, from: source, count: pageSize, flags: [.nonTemporal, .noDrain])
            mapping.drain()
            whileLocked(block)
            return true
        }
    }

    /// Whether an invalidation (or another device thread) sleeps waiting for the device's lock.
    var lockHasWaiters: Bool { self.translations.hasWaiters }

    /// The block the `index`-th translation holds now (0: zapped or never mapped).
    public func translation(at index: Int) -> UInt32 { self.translations.withLock { $0[index] } }

    /// `mmu_interval_read_begin`: the sequence now, once no invalidation is running.
    private func readBegin() -> UInt64 {
        while true {
            let sequence = self.sequence.load(ordering: .acquiring)
            if sequence & 1 == 0 { return sequence }
            sched_yield()  // an invalidation holds the lock only to zap a table
        }
    }

    /// `mmu_interval_read_retry`, under the lock: whether an invalidation ran since `sequence`.
    private func readRetry(_ sequence: UInt64) -> Bool { self.sequence.load(ordering: .acquiring) != sequence }

    // MARK: The invalidation

    /// Zaps the translations over `pages` (the breaker, file lock held exclusively): the
    /// sequence goes odd, the table is cleared under the device's lock (waiting for a write in
    /// progress), the sequence goes even.
    func invalidate(_ pages: Range<Int>) {
        let overlap = pages.clamped(to: self.pages)
        guard !overlap.isEmpty else { return }
        self.sequence.wrappingIncrement(ordering: .acquiringAndReleasing)
        self.translations.withLock { translations in
            for page in overlap { translations[page - self.pages.lowerBound] = 0 }
        }
        self.sequence.wrappingIncrement(ordering: .acquiringAndReleasing)
        self.invalidations.wrappingIncrement(ordering: .relaxed)
    }
}

/// An address space's interval subscriptions (held weakly: a mirror dropped without
/// `unsubscribe` stops being invalidated, as a freed notifier would).
struct Subscriptions {
    private struct Entry {
        weak var mirror: DeviceMirror?
    }

    private var entries: [ObjectIdentifier: Entry] = [:]

    mutating func add(_ mirror: DeviceMirror) { self.entries[ObjectIdentifier(mirror)] = Entry(mirror: mirror) }

    mutating func remove(_ mirror: DeviceMirror) { self.entries[ObjectIdentifier(mirror)] = nil }

    /// The live mirrors whose range overlaps `pages`.
    func overlapping(_ pages: Range<Int>) -> [DeviceMirror] {
        guard !self.entries.isEmpty else { return [] }  // (every truncate asks: most have none)
        return self.entries.values.compactMap(\.mirror).filter { $0.pages.overlaps(pages) }
    }
}

extension AddressSpace {
    /// Under the file's invalidate lock (shared), as the breaker invalidates with it held
    /// exclusively: a breaker either runs wholly before the subscription (and the device's
    /// mapping, which comes after, sees its unmap) or wholly after it (and sees the flag set).
    func subscribe(_ mirror: DeviceMirror) {
        self.lock.withReadLock {
            self.subscriptions.withLock { $0.add(mirror) }
            self.everSubscribed.store(true, ordering: .releasing)
        }
    }

    func unsubscribe(_ mirror: DeviceMirror) { self.subscriptions.withLock { $0.remove(mirror) } }

    /// Invalidates every subscription over `pages` (the file's lock held exclusively, the range
    /// unmapped): each returns once its device no longer uses a translation into the range.
    /// - Returns: how many were invalidated.
    @discardableResult
    func invalidateSubscriptions(_ pages: Range<Int>) -> Int {
        // (A file no device ever subscribed to: one load, not the subscriptions' mutex.)
        guard self.everSubscribed.load(ordering: .acquiring) else { return 0 }
        let mirrors = self.subscriptions.withLock { $0.overlapping(pages) }
        for mirror in mirrors { mirror.invalidate(pages) }
        return mirrors.count
    }
}
