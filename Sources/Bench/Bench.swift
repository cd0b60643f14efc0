import DAX
import DaxFS
import DaxlabSupport
import Foundation
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// `daxlab bench`: the hot paths of DaxFS + DAX, each row measured against a baseline in the
/// same run (an array load, an atomic, the kernel's own path, libpmem, libpmemobj, a naive lock),
/// reported as a ratio.
public final class Bench {
    public struct Options: Sendable {
        /// Seconds of measurement per row and per baseline.
        public var seconds: Double = 2
        /// Thread counts of the scaling rows.
        public var threads: [Int] = [1, 2]
        /// Pages of the file the hot-fault rows fault over (the block map's size).
        public var pages = 65536
        public init() {}
    }

    let path: String
    let options: Options
    let fs: FileSystem
    let dax: DAXFileSystem
    let measure: Measure
    let progress: (String) -> Void
    var results: [BenchResult] = []
    /// Baselines this machine cannot measure, with why (io_uring refused by a seccomp filter, say).
    var unavailableBaselines: [UnavailableBaseline] = []
    var latencies: [String: [Double]] = [:]

    /// Formats `path` (a scratch image) large enough for the rows.
    public init(path: String, options: Options, progress: @escaping (String) -> Void) throws {
        self.path = path
        self.options = options
        let size = (options.pages * 4096 * 2 + (64 << 20) + 0xFFFFF) & ~0xFFFFF
        _ = try FileSystem.format(path: path, size: size, force: true)
        // tmpfs is daxlab's emulated pmem: persist with cache flushes as on real pmem, the way
        // libpmem and libpmemobj (the baselines) persist to the same mapping, not with msync.
        let medium = try PmemMapping(path: path).medium
        self.fs = try FileSystem.mount(path: path, persistence: medium == .tmpfs ? .pmem : nil)
        self.dax = try DAXFileSystem(fs: self.fs, policy: .wait)
        self.measure = Measure(budget: options.seconds)
        self.progress = progress
    }

    /// Runs every row.
    public func run() throws -> BenchReport {
        let machine = BenchMachine(
            cpus: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), cpusAvailable: try Measure.availableCPUs(),
            medium: self.fs.mapping.medium.rawValue, isPmem: self.fs.mapping.isPmem, kernel: Self.kernelRelease())
        try self.faultRows()
        try self.pinRows()
        try self.kernelRows()
        try self.scalingRows(cpusAvailable: machine.cpusAvailable)
        try self.wakeRow()
        try self.copyRow()
        try self.allocationRow()
        try self.fs.unmount()
        return BenchReport(
            machine: machine, results: self.results, unavailable: self.unavailableBaselines,
            truncateLatencies: self.latencies)
    }

    func add(
        _ name: String, unit: String, threads: Int = 1, value: Double, baseline: String, baselineThreads: Int = 1,
        baselineValue: Double, better: String, target: (String, (Double) -> Bool)? = nil
    ) {
        let ratio = baselineValue > 0 ? value / baselineValue : 0
        self.results.append(BenchResult(
            name: name, unit: unit, threads: threads, value: Self.round(value), baseline: baseline,
            baselineThreads: baselineThreads, baselineValue: Self.round(baselineValue), ratio: Self.round(ratio),
            better: better, target: target?.0, met: target.map { $0.1(ratio) }))
        self.progress(String(format: "%@ %.3g %@ vs %@ %.3g: ratio %.3g", name, value, unit, baseline, baselineValue, ratio))
    }

    /// Records that `baseline` cannot be measured here, and says so.
    func unavailable(_ baseline: String, because reason: String) {
        self.unavailableBaselines.append(UnavailableBaseline(baseline: baseline, reason: reason))
        self.progress("\(baseline) is unavailable here (\(reason)): its rows are left out")
    }

    static func round(_ value: Double) -> Double { (value * 1000).rounded() / 1000 }

    static func kernelRelease() -> String {
        var name = utsname()
        uname(&name)
        let bytes = withUnsafeBytes(of: &name.release) { Array($0) }
        return String(decoding: bytes.prefix(while: { $0 != 0 }), as: UTF8.self)
    }

    /// A file of `pages` pages, every page faulted in (mapped) through `space`.
    func mappedFile(_ name: String, pages: Int) throws -> (FileID, AddressSpace) {
        let file = try self.fs.create(FileName(name))
        try self.fs.truncate(file, size: pages * 4096)
        let space = self.dax.open(file)
        for page in 0..<pages { _ = try space.fault(page, write: true) }
        return (file, space)
    }

    /// `count` pseudo-random indices below `bound`.
    static func randomIndices(_ count: Int, below bound: Int) -> [Int] {
        var random = SplitMix64(seed: 0x9E37_79B9_7F4A_7C15)
        return (0..<count).map { _ in random.next(below: bound) }
    }
}
