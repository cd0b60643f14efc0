import DaxFS
import DaxlabSupport
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// The crash campaign's persist observer: it numbers the persist points of a mounted image,
/// kills the process with SIGKILL at a chosen one, and keeps a *shadow* of what power loss
/// would leave.
///
/// The shadow starts as a copy of the image taken before the mount. Each barrier copies the
/// cache lines flushed since the last one into it; the crashing barrier copies only a seeded
/// random half of their 8-byte words (stores flushed but not yet drained may or may not have
/// reached the media, and power failure keeps only 8-byte stores whole, not a cache line).
/// Stores never flushed never reach it. After the kill, the shadow is the crashed image.
package final class CrashInjector: PersistObserver, Sendable {
    static let cacheLine = 64
    /// What power failure keeps whole.
    static let atomicWrite = 8

    /// The persist point to die at, or nil (count only: the dry run).
    let crashAt: Int?
    /// The image, mapped a second time (the same pages as the file system's mapping).
    private let image: PmemMapping?
    private let shadow: PmemMapping?
    /// Cache-line-aligned ranges flushed since the last barrier.
    private let pending = Locked<[Range<Int>]>([], rank: .crashPending)
    private let points = Locked(0, rank: .crashPoints)

    /// - Parameters:
    ///   - image: the image the file system will mount; nil with no shadow.
    ///   - shadow: a copy of `image` taken before the mount, to mirror durable lines into.
    ///   - crashAt: the persist point (1-based) to die at.
    package init(image: String?, shadow: String?, crashAt: Int?) throws(PmemError) {
        self.crashAt = crashAt
        if let image, let shadow {
            let source = try PmemMapping(path: image)
            self.image = source
            self.shadow = try PmemMapping(path: shadow, options: MapOptions(size: source.length))
        } else {
            self.image = nil
            self.shadow = nil
        }
    }

    /// Persist points passed so far.
    package var persistPoints: Int { self.points.withLock { $0 } }

    package func didFlush(offset: Int, length: Int) {
        guard let image = self.image, self.shadow != nil else { return }
        let start = offset & ~(Self.cacheLine - 1)
        let end = min((offset + length + Self.cacheLine - 1) & ~(Self.cacheLine - 1), image.length)
        self.pending.withLock { $0.append(start..<end) }
    }

    package func didBarrier() {
        let point = self.points.withLock { points in
            points += 1
            return points
        }
        let crashing = point == self.crashAt
        self.mirror(tornAt: crashing ? point : nil)
        if crashing { kill(getpid(), SIGKILL) }
    }

    /// Copies what the last flushes made durable into the shadow; when `tornAt` is set, only a
    /// random half of the lines' 8-byte words (seeded by the point, so a run can be replayed).
    private func mirror(tornAt point: Int?) {
        guard let image = self.image, let shadow = self.shadow else { return }
        let ranges = self.pending.withLock { ranges in
            defer { ranges.removeAll(keepingCapacity: true) }
            return ranges
        }
        var coin = SplitMix64(seed: UInt64(point ?? 0))
        for range in ranges {
            for line in stride(from: range.lowerBound, to: range.upperBound, by: Self.cacheLine) {
                guard point != nil else {
                    (shadow.base + line).copyMemory(from: image.base + line, byteCount: Self.cacheLine)
                    continue
                }
                let kept = coin.next()
                for word in 0..<(Self.cacheLine / Self.atomicWrite) where kept >> UInt64(word) & 1 != 0 {
                    let at = line + word * Self.atomicWrite
                    (shadow.base + at).copyMemory(from: image.base + at, byteCount: Self.atomicWrite)
                }
            }
        }
    }
}
