import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What `runShell` saw: the exit status (128 + the signal when one killed it), stdout and
/// stderr, the process's peak resident memory (wait4), and the most anonymous memory it held
/// (RssAnon, sampled every 2 ms: its own buffers, not the pages of files it maps, which with
/// huge tmpfs pages can count 2 MiB for each page touched).
public struct MeasuredResult: Sendable {
    public var status: Int32
    public var standardOutput: [UInt8]
    public var standardError: String
    public var maxResidentKiB: Int
    public var maxAnonymousKiB: Int
}

/// Runs `script` with /bin/sh (so a test can close descriptors, pipe, redirect to /dev/full),
/// with `$DAXLAB` set to the built binary, and waits for it with wait4 to read its peak memory.
/// Only the shell's own child counts: scripts `exec` the command they measure.
public func runShell(_ script: String, timeout: TimeInterval = 120) throws -> MeasuredResult {
    let outputFile = "/dev/shm/daxlab-shell-out-\(getpid())-\(UUID().uuidString.prefix(8))"
    let errorFile = outputFile + ".err"
    defer {
        unlink(outputFile)
        unlink(errorFile)
    }
    var environment = ProcessInfo.processInfo.environment
    environment["DAXLAB"] = DaxlabBinary.path
    environment.removeValue(forKey: "PMEM_IS_PMEM_FORCE")
    let arguments = ["/bin/sh", "-c", "exec 3>\"\(outputFile)\" 4>\"\(errorFile)\"; \(script)"]
    var argv = arguments.map { strdup($0) } + [nil]
    var envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        for pointer in argv { free(pointer) }
        for pointer in envp { free(pointer) }
    }
    var pid = pid_t()
    let spawned = posix_spawn(&pid, "/bin/sh", nil, nil, &argv, &envp)
    guard spawned == 0 else { throw POSIXError(POSIXErrorCode(rawValue: spawned) ?? .EIO) }
    let deadline = Date().addingTimeInterval(timeout)
    var status: Int32 = 0
    var usage = rusage()
    var anonymous = 0
    while true {
        let waited = wait4(pid, &status, WNOHANG, &usage)
        if waited == pid { break }
        if Date() > deadline {
            kill(pid, SIGKILL)
            _ = wait4(pid, &status, 0, &usage)
            throw DaxlabBinary.TimedOut(command: script, seconds: timeout)
        }
        anonymous = max(anonymous, anonymousKiB(of: pid))
        usleep(2_000)
    }
    let signalled = status & 0x7F
    let code = signalled == 0 ? (status >> 8) & 0xFF : 128 + signalled
    let output = (try? Data(contentsOf: URL(fileURLWithPath: outputFile))).map { [UInt8]($0) } ?? []
    let error = (try? String(contentsOfFile: errorFile, encoding: .utf8)) ?? ""
    return MeasuredResult(
        status: code, standardOutput: output, standardError: error, maxResidentKiB: usage.ru_maxrss,
        maxAnonymousKiB: anonymous)
}

/// `RssAnon` of process `pid` now, in KiB (0 when it is gone).
private func anonymousKiB(of pid: pid_t) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("RssAnon:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }
    return 0
}
