#if canImport(Glibc)
import Glibc
#endif

/// A system call that failed: what was attempted and the errno it returned.
package struct SystemCallError: Error, Sendable, Equatable, CustomStringConvertible {
    package var operation: String
    package var errno: Int32

    package init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    package var description: String { "\(self.operation): \(String(cString: strerror(self.errno)))" }
}

/// The one place a system call's `-1` becomes a typed error with its errno (swift-system's
/// `valueOrErrno`, NIO's `syscall(blocking:)`): runs `call`, retrying on EINTR.
/// - Returns: what `call` returned, when it was not -1.
/// - Throws: `SystemCallError` naming `operation` and the errno.
@discardableResult
package func valueOrErrno<Value: FixedWidthInteger & SignedInteger>(
    _ operation: @autoclosure () -> String, _ call: () -> Value
) throws(SystemCallError) -> Value {
    while true {
        let result = call()
        guard result == -1 else { return result }
        let error = errno
        if error != EINTR { throw SystemCallError(operation(), errno: error) }
    }
}

/// `mmap(2)`, with `MAP_FAILED` turned into a `SystemCallError`.
package func mapMemory(
    _ operation: @autoclosure () -> String, address: UnsafeMutableRawPointer? = nil, length: Int,
    protection: Int32, flags: Int32, descriptor: Int32 = -1, offset: Int = 0
) throws(SystemCallError) -> UnsafeMutableRawPointer {
    let result = mmap(address, length, protection, flags, descriptor, off_t(offset))
    guard let result, result != MAP_FAILED else { throw SystemCallError(operation(), errno: errno) }
    return result
}
