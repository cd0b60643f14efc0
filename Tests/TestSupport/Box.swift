import Foundation

/// A value threads share, behind a lock: for results of background work in tests.
public final class Box<Value>: @unchecked Sendable {
    // `stored` is touched only with `lock` held.
    private let lock = NSLock()
    private var stored: Value
    public init(_ value: Value) { self.stored = value }
    public var value: Value {
        get { self.lock.withLock { self.stored } }
        set { self.lock.withLock { self.stored = newValue } }
    }
}
