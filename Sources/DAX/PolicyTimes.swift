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
