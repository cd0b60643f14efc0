import Foundation

/// A unique path under a directory (tmpfs `/dev/shm` by default), removed, with anything created
/// under it, when `body` returns or throws.
public func withTemporaryPath<Result>(
    _ name: String = "daxlab-test", in directory: String = "/dev/shm",
    _ body: (String) throws -> Result
) throws -> Result {
    let path = "\(directory)/\(name)-\(getpid())-\(UUID().uuidString.prefix(8))"
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

/// Random bytes from a seeded generator, so a failure can be replayed.
public func randomBytes(count: Int, seed: UInt64) -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    var bytes = [UInt8](repeating: 0, count: count)
    var index = 0
    while index < count {
        var word = generator.next()
        for _ in 0..<8 where index < count {
            bytes[index] = UInt8(truncatingIfNeeded: word)
            word >>= 8
            index += 1
        }
    }
    return bytes
}

/// A small seeded generator (SplitMix64) for reproducible test data.
public struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    public init(seed: UInt64) { self.state = seed }
    public mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
