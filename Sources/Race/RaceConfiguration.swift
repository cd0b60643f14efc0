import DAX

/// What a race run does.
public struct RaceConfiguration: Sendable {
    public var policy: TruncatePolicy
    public var seconds: Double = 5
    public var dmaThreads = 4
    public var truncaters = 2
    public var writers = 2
    /// How long a device holds each pin batch.
    public var pinMilliseconds: Double = 2
    /// The lease-break time of policy `lease-break`.
    public var leaseBreakMilliseconds: Double = 50
    /// Pages of each shared file the devices pin and the truncaters cut.
    public var filePages = 64
    /// Pages of each writer's own file.
    public var writerPages = 48
    public var seed: UInt64 = 1
    /// With no thread making progress for this long, the run stops and reports a deadlock.
    public var watchdogSeconds: Double = 10

    public init(policy: TruncatePolicy) { self.policy = policy }
}
