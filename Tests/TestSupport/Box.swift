import Foundation

/// A value threads share, behind a lock: for results of background work in tests.
///
/// Every access holds the lock for its whole length, a read-modify-write too: `box.value += 1`
/// and `box.value.append(x)` from several threads lose nothing (a getter and a setter, each
/// locked alone, would let two threads read the same old value). An access must not touch the
/// same box inside itself (`box.value.append(box.value.count)` would wait for its own lock).
public final class Box<Value>: @unchecked Sendable {
    // `stored` is touched only with `lock` held.
    private let lock = NSLock()
    private var stored: Value
    public init(_ value: Value) { self.stored = value }
    public var value: Value {
        get { self.lock.withLock { self.stored } }
        _modify {
            self.lock.lock()
            defer { self.lock.unlock() }
            yield &self.stored
        }
    }
}
