import CShims
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
    /// Rows, in groups that share their setup.
    public enum Group: String, CaseIterable, Sendable {
        case fault, pin, kernel, scaling, wake, copy, alloc, rdma
    }

    public struct Options: Sendable {
        /// Seconds of measurement per row and per baseline.
        public var seconds: Double = 2
        /// Thread counts of the scaling rows.
        public var threads: [Int] = [1, 2]
        /// Pages of the file the hot-fault rows fault over (the block map's size).
        public var pages = 65536
        /// The groups of rows to run (nil: all of them).
        public var groups: Set<Group>?
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

    /// Formats `path` (a scratch image) large enough for the rows; `force` as
    /// `FileSystem.format` takes it (false: a target that holds anything is refused).
    public init(path: String, options: Options, force: Bool = true, progress: @escaping (String) -> Void) throws {
        self.path = path
        self.options = options
        // The hot-fault file twice over, a 512-page file per scaling thread and the shared
        // fault-scaling file, the 64 MiB of the huge cold writes, and room for the rest.
        let pages = options.pages * 2 + (options.threads.max() ?? 1) * 512 + Self.faultScalingPages + Self.hugeColdPages
        let size = (pages * pageSize + (64 << 20) + 0xFFFFF) & ~0xFFFFF
        // libpmem reads PMEM_IS_PMEM_FORCE once, at the first mapping it judges: set before any,
        // so that libpmemobj (alloc.block's baseline) persists to tmpfs with cache flushes, as
        // daxlab does there, and not with msync.
        if Self.isOnTmpfs(PathComponents.directory(of: path)) { setenv("PMEM_IS_PMEM_FORCE", "1", 1) }
        // (A device-dax device is formatted whole.)
        var status = stat()
        let device = stat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFCHR
        _ = try FileSystem.format(path: path, size: device ? nil : size, force: force)
        // tmpfs is daxlab's emulated pmem: persist with cache flushes as on real pmem, the way
        // libpmem and libpmemobj (the baselines) persist to the same mapping, not with msync.
        let medium = try PmemMapping(path: path).medium
        self.fs = try FileSystem.mount(path: path, persistence: medium == .tmpfs ? .pmem : nil)
        self.dax = try DAXFileSystem(fs: self.fs, policy: .wait)
        self.measure = Measure(budget: options.seconds)
        self.progress = progress
    }

    /// Whether `directory` is on tmpfs.
    static func isOnTmpfs(_ directory: String) -> Bool {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return CShims_fstatfs_type(fd) == CShims_TMPFS_MAGIC
    }

    /// Runs every row.
    public func run() throws -> BenchReport {
        let before = try Measure.availableCPUs()
        var machine = BenchMachine(
            cpus: Self.onlineCPUs, cpusAvailable: before,
            medium: self.fs.mapping.medium.rawValue, isPmem: self.fs.mapping.medium != .tmpfs && self.fs.mapping.isPmem, kernel: Self.kernelRelease(),
            cpuModel: Self.cpuModel(), guestHaltPollNanoseconds: Self.guestHaltPollNanoseconds())
        if before < 1.8 { self.progress(String(format: "warning: only %.2f CPUs available: ratios are less certain", before)) }
        let groups = self.options.groups ?? Set(Group.allCases)
        if groups.contains(.fault) { try self.faultRows() }
        if groups.contains(.pin) { try self.pinRows() }
        if groups.contains(.kernel) { try self.kernelRows() }
        if groups.contains(.scaling) { try self.scalingRows(cpusAvailable: before) }
        if groups.contains(.wake) { try self.wakeRow() }
        if groups.contains(.copy) { try self.copyRow() }
        if groups.contains(.alloc) { try self.allocationRow() }
        if groups.contains(.rdma) { try self.rdmaRows() }
        try self.fs.unmount()
        machine.cpusAvailable = min(before, try Measure.availableCPUs())
        return BenchReport(
            machine: machine, results: self.results, unavailable: self.unavailableBaselines,
            truncateLatencies: self.latencies)
    }

    /// A target from the issue: a bound on the row's median ratio.
    enum Target {
        case atMost(Double)
        case atLeast(Double)

        /// Parses `text`'s form back ("<= 1/2", ">= 0.9"); nil for anything else.
        init?(text: String) {
            let parts = text.split(separator: " ")
            guard parts.count == 2 else { return nil }
            let number = parts[1].split(separator: "/")
            let value: Double?
            if number.count == 2, let top = Double(number[0]), let bottom = Double(number[1]), bottom != 0 {
                value = top / bottom
            } else {
                value = Double(parts[1])
            }
            guard let value else { return nil }
            switch parts[0] {
            case "<=": self = .atMost(value)
            case ">=": self = .atLeast(value)
            default: return nil
            }
        }

        var bound: Double {
            switch self {
            case .atMost(let bound), .atLeast(let bound): bound
            }
        }
        var text: String {
            switch self {
            case .atMost(let bound): "<= \(Bench.bound(bound))"
            case .atLeast(let bound): ">= \(Bench.bound(bound))"
            }
        }
        func isMet(_ ratio: Double) -> Bool {
            switch self {
            case .atMost(let bound): ratio <= bound
            case .atLeast(let bound): ratio >= bound
            }
        }
    }

    /// Records a row from an interleaved comparison.
    func add(
        _ name: String, unit: String, threads: Int = 1, _ paired: Measure.Paired, baseline: String,
        baselineThreads: Int = 1, better: String, target: Target? = nil, threadCPUs: Double? = nil
    ) {
        let ratio = paired.ratio
        let wide = paired.isWide(bound: target?.bound)
        self.results.append(BenchResult(
            name: name, unit: unit, threads: threads, value: Self.round(paired.value), baseline: baseline,
            baselineThreads: baselineThreads, baselineValue: Self.round(paired.baseline), ratio: Self.round(ratio),
            ratioLow: Self.round(paired.lowerQuartile), ratioHigh: Self.round(paired.upperQuartile),
            ratioMin: Self.round(paired.ratios.first ?? 0), ratioMax: Self.round(paired.ratios.last ?? 0),
            pairs: paired.ratios.count, wide: wide, better: better, target: target?.text,
            met: target.map { $0.isMet(ratio) }, threadCPUs: threadCPUs.map(Self.round)))
        self.progress(String(
            format: "%@ %.3g %@ vs %@ %.3g: ratio %.3g [%.3g-%.3g over %d pairs]%@", name, paired.value, unit, baseline,
            paired.baseline, ratio, paired.lowerQuartile, paired.upperQuartile, paired.ratios.count,
            wide ? " (spread too wide to judge)" : "")
            + (threadCPUs.map { String(format: "; its %d threads ran on %.2f CPUs", threads, $0) } ?? ""))
    }

    /// Gives the last row named `name` against `baseline` its floor's ratio to that baseline.
    func setFloor(of name: String, baseline: String, _ floor: Measure.Paired) {
        self.setFloor(of: name, baseline: baseline, ratio: floor.ratio)
    }

    /// The same, where the floor was not paired with the baseline itself but each with the row:
    /// `row / baseline` over `row / floor` is `floor / baseline` (two medians of pairs, so an
    /// estimate; both pairings ran in this run).
    func setFloor(of name: String, baseline: String, rowOverBaseline: Measure.Paired, rowOverFloor: Measure.Paired) {
        guard rowOverFloor.ratio > 0 else { return }
        self.setFloor(of: name, baseline: baseline, ratio: rowOverBaseline.ratio / rowOverFloor.ratio)
    }

    /// Gives the last row named `name` against `baseline` a note (JSON `note`).
    func setNote(of name: String, baseline: String, _ note: String) {
        guard let index = self.results.lastIndex(where: { $0.name == name && $0.baseline == baseline }) else { return }
        self.results[index].note = note
    }

    private func setFloor(of name: String, baseline: String, ratio: Double) {
        guard let index = self.results.lastIndex(where: { $0.name == name && $0.baseline == baseline }) else { return }
        self.results[index].floorRatio = Self.round(ratio)
    }

    /// A bound as the issue writes it: 1/15 rather than 0.0667.
    static func bound(_ value: Double) -> String {
        if value < 1, value > 0, (1 / value).rounded() == 1 / value { return "1/\(Int(1 / value))" }
        return String(format: "%g", value)
    }

    /// Records that `baseline` cannot be measured here, and says so.
    func unavailable(_ baseline: String, because reason: String) {
        self.unavailableBaselines.append(UnavailableBaseline(baseline: baseline, reason: reason))
        self.progress("\(baseline) is unavailable here (\(reason)): its rows are left out")
    }

    static func round(_ value: Double) -> Double { (value * 1000).rounded() / 1000 }

    /// CPUs online on this machine.
    static var onlineCPUs: Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    /// The CPU's model name (/proc/cpuinfo's first `model name`); nil where it does not say.
    static func cpuModel() -> String? {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("model name") {
            guard let colon = line.firstIndex(of: ":") else { return nil }
            let name = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            return name.isEmpty ? nil : name
        }
        return nil
    }

    /// `guest_halt_poll_ns` of the haltpoll idle governor, where it is the one in use.
    static func guestHaltPollNanoseconds() -> Int? {
        func read(_ path: String) -> String? {
            (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard read("/sys/devices/system/cpu/cpuidle/current_governor") == "haltpoll" else { return nil }
        return read("/sys/module/haltpoll/parameters/guest_halt_poll_ns").flatMap { Int($0) }
    }

    static func kernelRelease() -> String {
        var name = utsname()
        uname(&name)
        let bytes = withUnsafeBytes(of: &name.release) { Array($0) }
        return String(decoding: bytes.prefix(while: { $0 != 0 }), as: UTF8.self)
    }

    /// A file of `pages` pages, every page faulted in (mapped) through `space`.
    func mappedFile(_ name: String, pages: Int) throws -> (FileID, AddressSpace) {
        let file = try self.fs.create(FileName(name))
        try self.fs.truncate(file, size: pages * pageSize)
        let space = try self.dax.open(file)
        for page in 0..<pages { _ = try space.fault(page, write: true) }
        return (file, space)
    }

    /// `count` pseudo-random indices below `bound`.
    static func randomIndices(_ count: Int, below bound: Int) -> [Int] {
        var random = SplitMix64(seed: 0x9E37_79B9_7F4A_7C15)
        return (0..<count).map { _ in random.next(below: bound) }
    }
}
