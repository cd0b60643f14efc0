import Pmem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The mapping as the file system persists to it: every barrier (a drain after flushes) is a
/// numbered *persist point*.
///
/// Crash injection: with `DAXLAB_CRASH_AT=N` the process kills itself with SIGKILL at the N-th
/// point. With `DAXLAB_CRASH_SHADOW=PATH` as well (a copy of the image taken before mount), the
/// media also models what power loss would leave: each barrier copies the ranges flushed since
/// the last one into the shadow, and the crashing barrier copies only a seeded random half of
/// their cache lines: stores flushed but not yet drained may or may not have reached the media.
/// Stores never flushed never reach the shadow. The shadow is then the crashed image.
public final class Media: Sendable {
    public let mapping: PmemMapping
    /// The persist point to die at, or nil.
    let crashAt: Int?
    /// The durable image of the crash model, or nil.
    private let shadow: PmemMapping?
    /// Cache-line-aligned ranges flushed since the last barrier (crash model only).
    private let pending = Locked<[Range<Int>]>([])
    private let points = Atomic<Int>(0)
    static let cacheLine = 64

    init(mapping: PmemMapping, crashAt: Int? = Media.environmentInteger("DAXLAB_CRASH_AT")) {
        self.mapping = mapping
        self.crashAt = crashAt
        if crashAt != nil, let path = getenv("DAXLAB_CRASH_SHADOW").map({ String(cString: $0) }),
            let shadow = try? PmemMapping(path: path, options: MapOptions(size: mapping.length))
        {
            self.shadow = shadow
        } else {
            self.shadow = nil
        }
    }

    static func environmentInteger(_ name: String) -> Int? {
        guard let text = getenv(name) else { return nil }
        return Int(String(cString: text)).flatMap { $0 > 0 ? $0 : nil }
    }

    /// How many persist points this media has passed.
    public var persistPoints: Int { self.points.load(ordering: .relaxed) }

    var base: UnsafeMutableRawPointer { self.mapping.base }

    /// Starts writing back a range; durable after the next `barrier()`.
    func flush(_ offset: Int, _ length: Int) throws(FSError) {
        do { try self.mapping.flush(offset: offset, length: length) } catch { throw FSError(error) }
        if self.shadow != nil {
            let start = offset & ~(Self.cacheLine - 1)
            let end = (offset + length + Self.cacheLine - 1) & ~(Self.cacheLine - 1)
            self.pending.withLock { $0.append(start..<min(end, self.mapping.length)) }
        }
    }

    /// Waits for earlier flushes: a persist point.
    func barrier() {
        self.mapping.drain()
        let point = self.points.add(1, ordering: .relaxed).newValue
        let crashing = point == self.crashAt
        if let shadow = self.shadow { self.mirror(into: shadow, tornAt: crashing ? point : nil) }
        if crashing { kill(getpid(), SIGKILL) }
    }

    /// Copies what the last flushes made durable into the shadow; when `tornAt` is set, only a
    /// random half of the lines (seeded by the point, so a run can be replayed).
    private func mirror(into shadow: PmemMapping, tornAt point: Int?) {
        let ranges = self.pending.withLock { ranges in
            defer { ranges.removeAll(keepingCapacity: true) }
            return ranges
        }
        var state = UInt64(point ?? 0) &* 0x9E37_79B9_7F4A_7C15 | 1
        for range in ranges {
            for line in stride(from: range.lowerBound, to: range.upperBound, by: Self.cacheLine) {
                if point != nil {
                    state ^= state << 13
                    state ^= state >> 7
                    state ^= state << 17
                    if state & 1 == 0 { continue }
                }
                (shadow.base + line).copyMemory(from: self.mapping.base + line, byteCount: Self.cacheLine)
            }
        }
    }

    /// Flush and barrier: `offset..<offset+length` is durable when this returns.
    func persist(_ offset: Int, _ length: Int) throws(FSError) {
        try self.flush(offset, length)
        self.barrier()
    }

    /// Zeroes a range without draining; the caller flushes it and calls `barrier()`.
    func zero(_ offset: Int, _ length: Int) throws(FSError) {
        do { try self.mapping.fill(offset: offset, byte: 0, count: length, flags: [.noDrain]) } catch {
            throw FSError(error)
        }
    }
}
