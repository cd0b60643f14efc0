/// The package's one seeded random generator (SplitMix64, Steele, Lea and Flood 2014): every
/// choice a workload, a device, a race thread or a test makes comes from one of these, so a run
/// can be replayed from its seed. Not for anything that needs unpredictability.
package struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    package init(seed: UInt64) { self.state = seed }

    /// A generator for stream `stream` of `seed` (device 3 of a run, say): streams of one seed
    /// do not repeat one another.
    package init(seed: UInt64, stream: UInt64) {
        var mixer = SplitMix64(seed: seed ^ (stream &* 0xD6E8_FEB8_6659_FD93))
        self.state = mixer.next()
    }

    @inline(__always)
    package mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in `0..<bound` (0 when `bound` is not positive).
    @inline(__always)
    package mutating func next(below bound: Int) -> Int {
        guard bound > 1 else { return 0 }
        return Int(self.next() % UInt64(bound))
    }
}
