import DaxFS

/// What a race run found: the JSON object `daxlab race --json` prints, with exactly these keys.
public struct RaceReport: Sendable, Codable, Equatable {
    public struct Latency: Sendable, Codable, Equatable {
        public var p50: Double
        public var p99: Double
        public var max: Double
    }

    public var policy: String
    /// Who did the devices' writes: `simulated`, `kernel-longterm`, `kernel-direct` or `rdma`.
    public var devices: String
    /// The devices' pins: `short-term` or `long-term`; `odp` for on-demand-paging devices (no pins).
    public var profile: String
    /// `mixed` or `collision` (`RaceScenario`).
    public var scenario: String
    public var seconds: Double
    public var isPmem: Bool
    public var dmaWrites: Int
    public var pins: Int
    /// Pins the kernel took too, writes the kernel landed, and kernel writes that failed
    /// otherwise than by a refusal (0 for simulated devices).
    public var kernelPins: Int
    public var kernelWrites: Int
    public var kernelErrors: Int
    /// Faults the kernel took in the devices' views and the fault service served (userfaultfd):
    /// its GUP for a pin's I/O or registration reached a page not mapped yet, or unmapped by a
    /// truncate or a revocation since (0 where userfaultfd is refused: the pinner maps then).
    public var kernelFaults: Int
    /// RDMA devices: RDMA WRITEs that completed (each a kernel write too), and those that did
    /// not complete successfully: a remote access error is a write to a region deregistered by a
    /// revocation, refused and landed nowhere; any other (an error completion, a timeout, a
    /// failed post) is counted in `kernelErrors` too (0 for other devices).
    public var rdmaWrites: Int
    public var rdmaErrors: Int
    /// The kernel refused the devices' long-term pins (EOPNOTSUPP: fs-dax pages): nothing raced,
    /// and that is the outcome observed, not a failure.
    public var kernelPinRefused: Bool
    /// Long-term pins refused (EOPNOTSUPP), by the kernel or by policy `mainline`.
    public var longTermRefused: Int
    /// Long-term pins granted (of `pins`). Under `mainline` each one is a violation: it refuses
    /// every long-term pin of a DAX file, so a device holding one is a device the truncates
    /// would wait for without bound.
    public var longTermPins: Int
    public var truncates: Int
    public var truncatesBusy: Int
    public var truncatesWaited: Int
    public var truncateLatencyUs: Latency
    public var staleDmaWrites: Int
    public var corruptedBlocks: Int
    public var leakedBlocks: Int
    public var revokedDmaWrites: Int
    /// Device writes that landed but could not be made durable (the mapping's persist failed):
    /// a device would have reported them done, so each is a violation.
    public var persistErrors: Int
    /// Leases revoked by `lease-break` (each fences every later write of its device).
    public var revocations: Int
    /// `odp`: device subscriptions invalidated by truncates and punches, and device writes that
    /// met a zapped translation and faulted their range in again.
    public var odpInvalidations: Int
    public var deviceRefaults: Int
    public var sequesteredBlocksPeak: Int
    public var deferredBlocksPeak: Int
    public var fsckClean: Bool
    public var deadlock: Bool
    /// With a deadlock: the threads that made no progress in the watchdog's last window.
    public var stuckThreads: [String]

    enum CodingKeys: String, CodingKey {
        case policy, devices, profile, scenario, seconds
        case isPmem = "is_pmem"
        case dmaWrites = "dma_writes"
        case pins
        case kernelPins = "kernel_pins"
        case kernelWrites = "kernel_writes"
        case kernelErrors = "kernel_errors"
        case kernelFaults = "kernel_faults"
        case rdmaWrites = "rdma_writes"
        case rdmaErrors = "rdma_errors"
        case kernelPinRefused = "kernel_pin_refused"
        case longTermRefused = "longterm_refused"
        case longTermPins = "longterm_pins"
        case truncates
        case truncatesBusy = "truncates_busy"
        case truncatesWaited = "truncates_waited"
        case truncateLatencyUs = "truncate_latency_us"
        case staleDmaWrites = "stale_dma_writes"
        case corruptedBlocks = "corrupted_blocks"
        case leakedBlocks = "leaked_blocks"
        case revokedDmaWrites = "revoked_dma_writes"
        case persistErrors = "persist_errors"
        case revocations
        case odpInvalidations = "odp_invalidations"
        case deviceRefaults = "device_refaults"
        case sequesteredBlocksPeak = "sequestered_blocks_peak"
        case deferredBlocksPeak = "deferred_blocks_peak"
        case fsckClean = "fsck_clean"
        case deadlock
        case stuckThreads = "stuck_threads"
    }

    /// The run's verdict: no violation (`violations`).
    public var held: Bool { self.violations.isEmpty }

    /// What went wrong, one line each, empty when the run held: a stale write, a corrupted or
    /// leaked block, a device write whose persist failed, an fsck problem, a deadlock, or a pin the policy should have refused (a
    /// long-term pin granted under `mainline`).
    public var violations: [String] {
        var found: [String] = []
        if self.staleDmaWrites > 0 { found.append("\(self.staleDmaWrites) stale DMA write(s)") }
        if self.corruptedBlocks > 0 { found.append("\(self.corruptedBlocks) corrupted block(s)") }
        if self.leakedBlocks > 0 { found.append("\(self.leakedBlocks) leaked block(s)") }
        if self.persistErrors > 0 { found.append("\(self.persistErrors) device write(s) not made durable") }
        if !self.fsckClean { found.append("fsck not clean") }
        if self.deadlock { found.append("deadlock (no progress from \(self.stuckThreads.joined(separator: ", ")))") }
        if self.policy == TruncatePolicy.mainline.rawValue, self.longTermPins > 0 {
            found.append("mainline granted \(self.longTermPins) long-term pin(s) it must refuse (EOPNOTSUPP)")
        }
        return found
    }

    /// Whether the devices' long-term pins were refused, so that nothing raced (an outcome:
    /// mainline's answer, by daxlab's `mainline` or by the kernel on fs-dax).
    public var pinsRefused: Bool { self.kernelPinRefused || (self.longTermRefused > 0 && self.pins == 0) }

    /// Whether the corruption showed (what `none` must show).
    public var corruptionSeen: Bool { self.staleDmaWrites > 0 || self.corruptedBlocks > 0 }
}

/// A live snapshot for the progress line.
public struct RaceProgress: Sendable {
    public var elapsed: Double
    public var seconds: Double
    public var dmaWrites: Int
    public var truncates: Int
    public var staleDmaWrites: Int
    public var corruptedBlocks: Int
    /// Blocks held in limbo now (sequestered or deferred).
    public var limboBlocks: Int
}
