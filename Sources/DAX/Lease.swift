import DaxFS

/// Whoever holds pins under a lease: told when the file system wants the range back (the SIGIO
/// that breaks an FL_ALLOCATED / F_LONGTERM lease).
public protocol LeaseHolder: AnyObject, Sendable {
    /// Called once per lease, from the truncating thread, without any file-system lock held.
    /// A cooperative holder unpins soon; one that does not is revoked when the lease-break time
    /// runs out.
    func leaseBroken(_ lease: LeaseInfo)
}

/// A lease as the lease table lists it.
public struct LeaseInfo: Sendable, Equatable, CustomStringConvertible {
    /// Unique among live leases: its pin batch's number in bits 40-63 and that batch's lease
    /// count in bits 0-39 (no shared counter on the pin path). Written `batch.lease`: `3.17` is
    /// batch 3's 17th lease.
    public var id: UInt64
    public var file: FileID
    public var pages: Range<Int>
    /// The holder was told to give the range back.
    public var breaking: Bool
    /// The pins were revoked: writes through the handle are refused.
    public var revoked: Bool

    public var description: String {
        "lease \(self.id >> 40).\(self.id & (1 << 40 - 1)) on \(self.file) pages \(self.pages.lowerBound)..<\(self.pages.upperBound)"
            + (self.revoked ? " (revoked)" : self.breaking ? " (breaking)" : "")
    }
}
