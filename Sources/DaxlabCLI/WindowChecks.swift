import DAX
import DaxFS
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// One check of `daxlab mmap-check`, as it is printed.
struct WindowCheck: Encodable {
    enum Outcome: String, Encodable {
        case pass, fail, skip
    }

    var name: String
    var outcome: Outcome
    var detail: String

    /// How many of `checks` had `outcome`.
    static func count(_ checks: [WindowCheck], _ outcome: Outcome) -> Int { checks.filter { $0.outcome == outcome }.count }

    /// One line per check (PASS, FAIL or SKIP, its name and detail), then the counts: what the
    /// check commands print without --json.
    static func printLines(_ checks: [WindowCheck]) {
        for check in checks { Output.print("\(check.outcome.rawValue.uppercased()) \(check.name): \(check.detail)") }
        Output.print(
            "\(checks.count) checks: \(Self.count(checks, .pass)) passed, \(Self.count(checks, .fail)) failed, "
                + "\(Self.count(checks, .skip)) skipped")
    }
}

/// The checks of `daxlab mmap-check`: windows (`AddressSpace.mapWindow`) of files on a mounted
/// image, touched by the kernel (`WindowChecks+Kernel.swift`) and by the CPU
/// (`WindowChecks+Layout.swift`), each check on a file of its own, each an assertion on bytes,
/// block counts, fault counts or an errno. A check that cannot run here says why (SKIP); one
/// whose assertion fails says which (FAIL); the others run on.
final class WindowChecks {
    typealias Verdict = (outcome: WindowCheck.Outcome, detail: String)

    /// The checks, in the order they run (punch-split splits the mapping huge-fault made).
    static let names = ["kernel-read", "kernel-direct", "huge-fault", "punch-split", "past-eof", "hole-then-write"]

    /// How the windows fault here: `.signals` where userfaultfd is refused.
    let mechanism: WindowFaultMechanism
    /// Whether windows map the image with MAP_SYNC (fs-dax and device-dax).
    let mapSync: Bool
    /// Whether windows map only whole 2 MiB aligned runs (a device-dax device aligned to 2 MiB):
    /// the checks then use files of whole 2 MiB ranges, and expect a refusal (EFAULT) where a
    /// 4 KiB window would map a single page.
    let coarse: Bool
    let fs: FileSystem
    let dax: DAXFileSystem
    /// Where the buffered source of kernel-read and past-eof goes.
    let bufferedDirectory: String
    /// Where the O_DIRECT source of kernel-direct goes.
    let directDirectory: String
    /// The file huge-fault mapped with two huge faults, and its window, for punch-split.
    var hugeMapping: (file: FileID, window: UnsafeMutableRawPointer)?

    /// Pages of a 2 MiB range: what one huge fault maps.
    static let hugePages = Geometry.runBlocks

    /// Maps a first window, to learn whether windows work on this medium and how they fault.
    /// - Throws: `CommandFailure` (exit 2) where windows are refused (a device-dax device aligned
    ///   to neither 4 KiB nor 2 MiB); what the file system throws otherwise.
    init(fs: FileSystem, dax: DAXFileSystem, bufferedDirectory: String, directDirectory: String) throws {
        self.fs = fs
        self.dax = dax
        self.bufferedDirectory = bufferedDirectory
        self.directDirectory = directDirectory
        let probe = try dax.open(try fs.create("window-probe"))
        do throws(FSError) { try probe.mapWindow() } catch {
            if error.code == .notSupported { throw CommandFailure("windows are refused here: \(error.message)") }
            throw error
        }
        self.mechanism = probe.windowFaults ?? .signals
        self.mapSync = probe.windowIsSynchronous
        self.coarse = (probe.windowGranularity ?? pageSize) > pageSize
    }

    /// Runs every check, in order.
    func run() -> [WindowCheck] {
        let checks: [(String, () throws -> Verdict)] = [
            ("kernel-read", self.kernelRead), ("kernel-direct", self.kernelDirect),
            ("huge-fault", self.hugeFault), ("punch-split", self.punchSplit),
            ("past-eof", self.pastEndOfFile), ("hole-then-write", self.holeThenWrite),
        ]
        return checks.map { name, body in
            do {
                let verdict = try body()
                return WindowCheck(name: name, outcome: verdict.outcome, detail: verdict.detail)
            } catch {
                return WindowCheck(name: name, outcome: .fail, detail: "\(error)")
            }
        }
    }

    /// Why the kernel cannot fault windows here (the signals fallback serves only the CPU's
    /// faults), or nil.
    var kernelFaultsRefusal: String? {
        guard self.mechanism == .signals else { return nil }
        return AddressSpace.userfaultfdRefusal
            ?? "windows fault through signals here, which serve only the CPU's own faults"
    }

    // MARK: - Helpers

    /// Whether the page at `address` holds `bytes` (a load of every byte: it faults the page in).
    static func same(_ address: UnsafeRawPointer, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { memcmp(address, $0.baseAddress!, pageSize) == 0 }
    }

    /// A `pread`'s result in words.
    static func describe(_ result: Int) -> String {
        result < 0 ? "errno \(-result) (\(String(cString: strerror(Int32(-result)))))" : "\(result) bytes"
    }

    /// A check's assertion: throws `failure` (the check's FAIL line) unless `condition` holds.
    static func require(_ condition: Bool, _ failure: @autoclosure () -> String) throws {
        if !condition { throw CheckFailure(description: failure()) }
    }
}

/// A check's assertion that failed.
private struct CheckFailure: Error, CustomStringConvertible {
    var description: String
}
