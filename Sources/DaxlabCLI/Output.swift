import CShims
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Standard output and input as daxlab uses them: every write checked, every failure a clear
/// one-line error instead of a trap.
///
/// - SIGPIPE is ignored, so a reader that went away (`daxlab read ... | head -c1`) is an EPIPE,
///   after which daxlab stops quietly, as coreutils do.
/// - At start, a closed descriptor 0, 1 or 2 is taken by /dev/null and remembered as closed: no
///   image daxlab opens can land on descriptor 1 and receive the output meant for stdout, and
///   reading a closed stdin or writing a closed stdout is reported as such.
/// - Text goes through stdio (`print`), bulk data straight to descriptor 1; `finish()` flushes
///   and reports any error stdio met, so `ls > /dev/full` does not exit 0 having printed nothing.
enum Output {
    /// Why output stopped: the reader went away (quiet), or writing failed (one line).
    struct Failure: Error {
        var brokenPipe: Bool
        var message: String
    }

    nonisolated(unsafe) private(set) static var standardOutputClosed = false
    nonisolated(unsafe) private(set) static var standardInputClosed = false
    /// Text was meant for a stdout that is closed.
    nonisolated(unsafe) private static var textLost = false

    /// `print`, to a standard output that may be closed (then the text is lost, and `finish`
    /// says so). The commands print only through this.
    /// Prints `text` as one line whatever it holds (a path or a name with a newline or a
    /// terminal escape in it): its control characters written as escapes.
    static func printLine(_ text: String) {
        Self.print(Terminal.oneLine(text))
    }

    static func print(_ text: String = "", terminator: String = "\n") {
        if Self.standardOutputClosed {
            Self.textLost = true
            return
        }
        Swift.print(text, terminator: terminator)
    }

    /// Call first thing in `main`.
    static func prepare() {
        signal(SIGPIPE, SIG_IGN)
        for descriptor in [STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO] where fcntl(descriptor, F_GETFD) < 0 {
            let null = open("/dev/null", descriptor == STDIN_FILENO ? O_RDONLY : O_WRONLY)
            if null >= 0, null != descriptor {
                dup2(null, descriptor)
                close(null)
            }
            if descriptor == STDOUT_FILENO { Self.standardOutputClosed = true }
            if descriptor == STDIN_FILENO { Self.standardInputClosed = true }
        }
    }

    /// Writes `bytes` to standard output (after flushing what stdio holds), all of them.
    /// - Throws: `Failure` (EPIPE: `brokenPipe`).
    static func write(_ bytes: UnsafeRawBufferPointer) throws(Failure) {
        try Self.checkOpen()
        let flushed = CShims_flush_stdout()
        if flushed != 0 { throw Self.failure(flushed) }
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(STDOUT_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                throw Self.failure(errno)
            }
            offset += written
        }
    }

    /// Flushes stdio's standard output and reports whether anything written to it failed.
    static func finish() throws(Failure) {
        if Self.standardOutputClosed {
            if Self.textLost { throw Self.closedFailure }
            return
        }
        let flushed = CShims_flush_stdout()
        if flushed != 0 { throw Self.failure(flushed) }
    }

    /// Before writing: a stdout that was closed when daxlab started is an error, not /dev/null.
    static func checkOpen() throws(Failure) {
        if Self.standardOutputClosed { throw Self.closedFailure }
    }

    private static var closedFailure: Failure {
        Failure(brokenPipe: false, message: "standard output: it is closed (nothing was written)")
    }

    private static func failure(_ error: Int32) -> Failure {
        Failure(brokenPipe: error == EPIPE, message: "standard output: \(String(cString: strerror(error)))")
    }
}

/// Where `daxlab write` reads its data: stdin or a file, in bounded chunks.
struct InputStream {
    let descriptor: Int32
    let name: String
    private let owned: Bool

    /// Standard input, or `path` opened read-only.
    /// - Throws: `CommandFailure` naming the input and why it cannot be read.
    init(path: String?) throws {
        guard let path else {
            if Output.standardInputClosed {
                throw CommandFailure("standard input is closed: give the data with --input FILE")
            }
            self.descriptor = STDIN_FILENO
            self.name = "standard input"
            self.owned = false
            return
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CommandFailure("\(path): cannot read: \(String(cString: strerror(errno)))") }
        var status = stat()
        if fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFDIR {
            _ = Glibc.close(fd)
            throw CommandFailure("\(path): cannot read: it is a directory")
        }
        self.descriptor = fd
        self.name = path
        self.owned = true
    }

    /// Fills `buffer` as far as the input goes.
    /// - Returns: the bytes read; fewer than the buffer holds only at the end of the input.
    /// - Throws: `CommandFailure` naming the input and the errno.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var filled = 0
        while filled < buffer.count {
            let count = Glibc.read(self.descriptor, buffer.baseAddress! + filled, buffer.count - filled)
            if count < 0 {
                if errno == EINTR { continue }
                throw CommandFailure("\(self.name): cannot read: \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            filled += count
        }
        return filled
    }

    func close() {
        if self.owned { _ = Glibc.close(self.descriptor) }
    }
}
