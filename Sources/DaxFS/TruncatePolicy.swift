/// What truncate, hole punch and unlink do when a block in their range is pinned for DMA: the
/// remedies proposed on linux-fsdevel, 2015-2019, and what mainline settled on (README.md, "The
/// policies").
///
/// The policy is an argument of `FileSystem.truncate`, `punchHole` and `unlink`, passed down
/// to the DAX layer's layout breaker with the call (`LayoutBreakCall`); a call that names none
/// gets the attached DAX layer's default. Without a DAX layer nothing can be pinned and the
/// policy does not matter.
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
    /// What mainline does since v6.15 (Alistair Popple's series): a long-term pin of a DAX file is
    /// refused (EOPNOTSUPP, `check_vma_flags`); truncate unmaps, sleeps without the invalidate
    /// lock until the busy page is idle, rescans (`dax_break_layout`), with no timeout; unmount
    /// waits until every page is idle (`dax_break_layout_final`).
    case mainline
    /// On-demand paging (RDMA ODP, HMM): devices keep translations, not pins
    /// (`DeviceMirror`). Truncate invalidates the devices' subscriptions over the range (under
    /// every policy it does) and goes on: it waits only for a device write in progress, never for
    /// a pin. A pin someone else holds is waited for as under `wait`.
    case odp

    public var description: String { self.rawValue }

    /// Whether the policy keeps a pinned block from being reused (all but `none`).
    public var isProtective: Bool { self != .none }
}
