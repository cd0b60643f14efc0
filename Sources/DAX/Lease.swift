import DaxFS

/// Whoever holds pins under a lease: told when the file system wants the range back (the SIGIO
/// that breaks an FL_ALLOCATED / F_LONGTERM lease).
public protocol LeaseHolder: AnyObject, Sendable {
    /// Called once per lease, from the truncating thread, without any file-system lock held.
    /// A cooperative holder unpins soon; one that does not is revoked when the lease-break time
    /// runs out.
    func leaseBroken(_ lease: LeaseInfo)
}

/// The layout of a lease ID (and of an on-demand-paging device's mapping ID, which the oracle's
/// tags carry in the same place): a number in bits 40-63 (a pin batch's, or a device's) and a
/// count in bits 0-39 (that batch's leases, or that device's mappings), written `number.count`.
/// Made without a shared counter, so the pin path writes no line other pinners write.
public enum LeaseStamp {
    static let countMask: UInt64 = 1 << 40 - 1

    /// `number` (its low 24 bits) and `count` (its low 40 bits) in one stamp.
    @inline(__always)
    public static func make(number: UInt64, count: UInt64) -> UInt64 {
        (number & 0xFF_FFFF) << 40 | (count & Self.countMask)
    }

    /// The same number with the count one further (wrapping within its 40 bits).
    @inline(__always)
    static func next(_ stamp: UInt64) -> UInt64 {
        (stamp & ~Self.countMask) | ((stamp &+ 1) & Self.countMask)
    }

    /// `number.count`: `3.17` is batch 3's 17th lease.
    public static func describe(_ stamp: UInt64) -> String { "\(stamp >> 40).\(stamp & Self.countMask)" }
}

/// A lease as the lease table lists it.
public struct LeaseInfo: Sendable, Equatable, CustomStringConvertible {
    /// Unique among live leases: its pin batch's number and that batch's lease count
    /// (`LeaseStamp`).
    public var id: UInt64
    public var file: FileID
    public var pages: Range<Int>
    /// The holder was told to give the range back.
    public var breaking: Bool
    /// The pins were revoked: writes through the handle are refused.
    public var revoked: Bool

    public var description: String {
        "lease \(LeaseStamp.describe(self.id)) on \(self.file) pages \(self.pages.lowerBound)..<\(self.pages.upperBound)"
            + (self.revoked ? " (revoked)" : self.breaking ? " (breaking)" : "")
    }
}
