import DAX
import DMA
import DaxFS

/// What a race run does.
public struct RaceConfiguration: Sendable {
    public var policy: TruncatePolicy
    public var seconds: Double = 5
    public var dmaThreads = 4
    /// Who does the devices' writes: daxlab's simulation or the kernel.
    public var devices: DeviceKind = .simulated
    /// Where `kernel-direct` devices keep their source files (a directory on a block device).
    public var sourceDirectory = DeviceKind.defaultSourceDirectory
    /// The RDMA device `rdma` devices use (nil: the first here).
    public var rdmaDevice: String?
    public var truncaters = 2
    public var writers = 2
    /// How long a device holds each pin batch.
    public var pinMilliseconds: Double = 2
    /// How long the long-pin devices hold each pin batch: longer than the lease-break time, so
    /// `lease-break` has leases to revoke and `wait` has long pins to wait for.
    public var longPinMilliseconds: Double = 100
    /// How many devices hold long pins (nil: a quarter of them, at least one).
    public var longPinDevices: Int?
    /// The lease-break time of policy `lease-break`.
    public var leaseBreakMilliseconds: Double = 50
    /// Pages of each shared file the devices pin and the truncaters cut.
    public var filePages = 64
    /// Pages of each writer's own file.
    public var writerPages = 48
    public var seed: UInt64 = 1
    /// With no thread making progress for this long, the run stops and reports a deadlock.
    public var watchdogSeconds: Double = 10
    /// The mixed race goes on past `seconds` until the devices have landed at least this many
    /// writes and the truncaters made this many truncates, up to `overtimeFactor` times `seconds`:
    /// a floor on how much raced that does not depend on the machine's speed (a test's; a slow
    /// or loaded machine, or a sanitizer build, then runs longer instead of racing less).
    public var minimumDmaWrites = 0
    public var minimumTruncates = 0
    /// How far past `seconds` a run may go to reach its minimums.
    public static let overtimeFactor = 10.0

    /// The devices' pins: short-term (O_DIRECT-like) or long-term (RDMA-like); nil takes what
    /// the device kind implies (`kernel-direct` short-term, the others long-term).
    public var profile: PinTerm?

    /// What runs: the mixed race (the collision once, then devices, truncaters and writers for
    /// `seconds`), or xfstests' collision scenario alone, over and over.
    public var scenario: RaceScenario = .mixed
    /// The operations the collision scenario makes collide, in order, each round.
    public var collisionOperations = CollisionOperation.allCases

    public init(policy: TruncatePolicy) { self.policy = policy }

    /// Whether the devices page on demand (policy `odp`): translations, never pins.
    public var onDemandPaging: Bool { self.policy == .odp }

    /// The term of the devices' pins.
    public var term: PinTerm { self.devices.impliedTerm ?? self.profile ?? .longTerm }

    /// The long-pin devices this run has.
    public var effectiveLongPinDevices: Int {
        min(self.dmaThreads, self.longPinDevices ?? max(1, (self.dmaThreads + 3) / 4))
    }
}

/// What a race run does.
public enum RaceScenario: String, Sendable, CaseIterable {
    /// The collision once, then devices, truncaters and writers racing for the run's time.
    case mixed
    /// xfstests' dax collision scenario (generic/503, `t_mmap_collision`): a device writing into
    /// its pinned range of a file while another thread punches, zero-ranges, truncates down or
    /// collapses that file; each of the four, made to happen on purpose, round after round for
    /// the run's time.
    case collision
}

/// What the collision's other thread does to the file under the device's pin.
public enum CollisionOperation: String, Sendable, CaseIterable {
    case punch
    case zeroRange = "zero-range"
    case truncate
    case collapse
}
