/// What truncate and hole punch do when a block in their range is pinned for DMA. The remedies
/// proposed on linux-fsdevel, 2015-2019 (docs in README.md, "The policies").
public enum TruncatePolicy: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// Free at once: today's bug, kept so the corruption can be reproduced.
    case none
    /// Refuse with EBUSY and change nothing (option 1 of Dan Williams' 2017 patch).
    case fail
    /// Unmap the range, sleep without the invalidate lock until the last pin drops, rescan, free
    /// (option 2; what mainline merged).
    case wait
    /// Move busy blocks to lost+found at once; each is freed on its last unpin (option 3, Dave Hansen).
    case sequester
    /// Take busy blocks out of the file at once but keep them from the allocator until their last
    /// unpin (Christoph Hellwig's extent busy list).
    case deferred
    /// Notify the lease holders, give them the lease-break time to unpin, then revoke their pins:
    /// later DMA writes are fenced and counted (Ira Weiny's F_LONGTERM leases).
    case leaseBreak = "lease-break"

    public var description: String { self.rawValue }

    /// Whether the policy keeps a pinned block from being reused (all but `none`).
    public var isProtective: Bool { self != .none }
}

/// Settings of the policies that wait.
public struct PolicyTimes: Sendable, Equatable {
    /// How long `wait` sleeps before giving up with `.timedOut` (nil: forever, as mainline).
    public var waitTimeout: Duration?
    /// How long `lease-break` gives holders to unpin before revoking (the kernel's
    /// `/proc/sys/fs/lease-break-time`, 45 s by default).
    public var leaseBreakTime: Duration

    public init(waitTimeout: Duration? = nil, leaseBreakTime: Duration = .seconds(45)) {
        self.waitTimeout = waitTimeout
        self.leaseBreakTime = leaseBreakTime
    }
}
