/// A lock's place in daxlab's one lock order: a name for reports and a number. A thread takes
/// locks in ascending rank; taking a lock whose rank is lower than, or the same as, that of a
/// lock it holds is an inversion, which the checker (`LockOrder`, debug builds) traps on, naming
/// both locks. The one exception is a rank whose locks form a table and nest in ascending index
/// order (`nestsByIndex`): two files' locks, the lower inode number first.
///
/// Every rank is a constant below, in one table that docs/architecture.md ("The lock order")
/// shows and explains: which lock each is, and which locks are taken while it is held. A lock made
/// without a rank is a `leaf`: nothing may be taken while it is held (it is still checked).
public struct LockRank: Sendable, Equatable, CustomStringConvertible {
    /// What reports call the lock (a static string: the checker keeps its address).
    public let name: StaticString
    /// Its place: locks are taken in ascending rank. Below 256 (the checker counts per rank).
    public let rank: Int
    /// Whether two locks of this rank may be held at once, taken in ascending index order.
    public let nestsByIndex: Bool

    public init(_ name: StaticString, _ rank: Int, nestsByIndex: Bool = false) {
        precondition(name.hasPointerRepresentation, "a lock rank's name must be a string literal")
        precondition(rank >= 0 && rank < LockRank.limit, "lock rank \(rank) out of 0..<\(LockRank.limit)")
        self.name = name
        self.rank = rank
        self.nestsByIndex = nestsByIndex
    }

    /// Ranks are below this.
    public static let limit = 256

    public var description: String { "\"\(self.name)\" (rank \(self.rank))" }

    public static func == (left: LockRank, right: LockRank) -> Bool {
        left.rank == right.rank && left.name.utf8Start == right.name.utf8Start && left.nestsByIndex == right.nestsByIndex
    }
}

// The order, outermost first. Each comment says what the lock guards and what is taken while it
// is held; docs/architecture.md has the same table. Locks that nothing is taken under (the
// leaves, from 200) are numbered only so that the order is total.
extension LockRank {
    /// A race writer's file and what it last wrote (`Writer.lock`, Race): held across the
    /// writer's file-system calls (write, read, truncate, punch), so over everything below.
    /// A libdaxlab pin (`CPin`, LibDaxlab): held around a C program's write through the pin and
    /// its unpin, which take the DAX layer's locks.
    public static let cPin = LockRank("cPin", 4)
    /// A libdaxlab mount's DAX layer, attached once (`CMount`, LibDaxlab): the attach runs under it.
    public static let cMount = LockRank("cMount", 6)
    public static let raceWriter = LockRank("raceWriter", 10)
    /// Attach and detach of the file system's layout breaker (`BreakerSlot`, DaxFS): detach
    /// takes and drops every inode lock under it, in ascending order.
    public static let breakerSlot = LockRank("breakerSlot", 20)
    /// The names table (`FileSystem.namespace`, DaxFS): `create` takes the new file's inode lock
    /// and a log slot under it. Nothing that may sleep for pins runs under it: unlink, rename
    /// and publish mark their names busy under it and drop it first.
    public static let namespace = LockRank("namespace", 30)
    /// A file's lock (`FileSystem.locks[n]`, a `ReadWriteLock`; the DAX layer's invalidate lock):
    /// two at once only in ascending inode number (rename and publish over a name). Faults take it
    /// shared, removals exclusively; the layout breaker drops it while it sleeps for pins.
    public static let inode = LockRank("inode", 40, nestsByIndex: true)
    /// lost+found's inode lock (`FileSystem.locks[1]`): taken after a file's lock by a removal
    /// that sequesters pinned blocks, and alone by the reclaimer's release.
    public static let lostFound = LockRank("lostFound", 50)
    /// The DAX layer's table of address spaces (`DAXFileSystem.spaces`): `open` takes it under
    /// the file's lock (shared).
    public static let spaceTable = LockRank("spaceTable", 60)
    /// A file's on-demand-paging subscriptions (`AddressSpace.subscriptions`, DAX): under the
    /// file's lock (shared to subscribe, exclusive in the breaker's invalidation).
    public static let subscriptions = LockRank("subscriptions", 62)
    /// A device mirror's translations (`DeviceMirror`, DAX): the breaker's invalidation takes it
    /// under the file's lock (exclusive), a device write alone.
    public static let deviceMirror = LockRank("deviceMirror", 64)
    /// A fault stripe (`FileSystem.allocationLocks[n]`, a `LockedArray`): under a file's lock; a
    /// write fault takes a log slot and an allocator shard under it. One at a time.
    public static let faultStripe = LockRank("faultStripe", 70)
    /// A log slot (`MetadataLog`): under file locks and a fault stripe; a transaction takes
    /// lost+found's page table and allocator shards under it. One at a time.
    public static let logSlot = LockRank("logSlot", 80)
    /// Which lost+found page holds each sequestered block (`FileSystem.lostFound`): inside a
    /// transaction, and alone.
    public static let lostFoundPages = LockRank("lostFoundPages", 90)
    /// An allocator shard's free list (`BlockAllocator`, DaxFS): inside transactions and under
    /// fault stripes; the allocation observer hears of a free under it. One at a time.
    public static let allocatorShard = LockRank("allocatorShard", 100)

    /// A kernel pin's view's mappings (`MappedWindow.viewChanges`, DAX): each change (a map, an
    /// unmap, a fence) is several system calls, made by threads that share no other lock (the
    /// fault service under the file's lock shared, a truncate under it exclusive, a revoker
    /// with none); a window's page sets are taken under it.
    public static let viewMappings = LockRank("viewMappings", 110)

    // The leaves: nothing is taken under them.

    /// A kernel registry's free slots (`KernelRing`, DAX; `RDMAPort`, DMA).
    public static let kernelRegistrySlots = LockRank("kernelRegistrySlots", 200)
    /// A file's leases past the lock-free slots (`LeaseTable.overflow`, DAX).
    public static let leaseOverflow = LockRank("leaseOverflow", 202)
    /// A wait-queue bucket (`WaitQueues`, DAX): a removal sleeps on it, a last unpin wakes it.
    public static let waitQueue = LockRank("waitQueue", 204)
    /// The reclaimer's queue (`Reclaimer`, DAX): a last unpin or a commit queues a block.
    public static let reclaimer = LockRank("reclaimer", 206)
    /// The fault service's table of windows (`FaultService.windows`, DAX): a lookup per fault,
    /// a window's registration and retirement.
    public static let faultServiceWindows = LockRank("faultServiceWindows", 207)
    /// A window's fenced and zero pages (`MappedWindow.state`, DAX): under the file's lock.
    public static let windowPages = LockRank("windowPages", 208)
    /// The oracle's set of blocks moved within their file (`Oracle.moved`, Race): inside a
    /// transaction (a collapse or insert tells the observer).
    public static let oracleMoved = LockRank("oracleMoved", 210)
    /// The oracle's corruptions found (`Oracle.corruptions`, Race).
    public static let oracleCorruptions = LockRank("oracleCorruptions", 212)
    /// The truncate latencies of a race (`RaceHarness.latencies`).
    public static let raceLatencies = LockRank("raceLatencies", 214)
    /// A race's end: whether the stopper joined every thread (`RaceHarness`).
    public static let raceJoined = LockRank("raceJoined", 216)
    /// A DMA engine's device threads (`DMAEngine.threads`).
    public static let dmaThreads = LockRank("dmaThreads", 220)
    /// The crash injector's ranges flushed since the last barrier (`CrashInjector.pending`): a
    /// persist observer, so under every lock that persists (log slots, fault stripes).
    public static let crashPending = LockRank("crashPending", 230)
    /// The crash injector's persist-point count (`CrashInjector.points`), likewise.
    public static let crashPoints = LockRank("crashPoints", 232)
    /// The crash campaign's running child (`daxlab crash-test`).
    public static let crashChild = LockRank("crashChild", 240)
    /// The naive pin table `daxlab bench` measures against (a mutex and a dictionary).
    public static let benchPinCounts = LockRank("benchPinCounts", 250)
    /// The sleeper and waker of `daxlab bench`'s wake-up row.
    public static let benchWake = LockRank("benchWake", 252)
    /// A libdaxlab mount's calls in progress (`CMount.activity`, LibDaxlab): an unmount waits for them.
    public static let cMountCalls = LockRank("cMountCalls", 249)
    /// libdaxlab's queue of lease-break callbacks to run (`LeaseNotifier`, LibDaxlab).
    public static let cLeaseQueue = LockRank("cLeaseQueue", 251)
    /// libdaxlab's table of live handles (`Handles`, LibDaxlab).
    public static let cHandles = LockRank("cHandles", 253)
    /// The registrations of memory whose faults this process's file systems serve
    /// (`FaultServedMemory`, DaxFS): a window's registration and its removal. The check every
    /// write makes reads the registrations without it.
    public static let faultServedMemory = LockRank("faultServedMemory", 254)
    /// A lock made without a rank (tests): nothing may be taken while it is held.
    public static let leaf = LockRank("leaf", 255)

    /// Every rank above, in order (tests check it is ascending; docs/architecture.md lists it).
    public static let all: [LockRank] = [
        .cPin, .cMount, .raceWriter, .breakerSlot, .namespace, .inode, .lostFound, .spaceTable, .subscriptions, .deviceMirror,
        .faultStripe, .logSlot, .lostFoundPages, .allocatorShard, .viewMappings, .kernelRegistrySlots, .leaseOverflow, .waitQueue,
        .reclaimer, .faultServiceWindows, .windowPages, .oracleMoved, .oracleCorruptions, .raceLatencies, .raceJoined,
        .dmaThreads, .crashPending, .crashPoints, .crashChild, .cMountCalls, .benchPinCounts, .cLeaseQueue, .benchWake, .cHandles, .faultServedMemory, .leaf,
    ]
}
