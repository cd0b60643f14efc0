import Atomics
import Foundation

/// What the lock tests share: a thread with a flag for when it has returned, a bounded poll, and
/// an atomic load outside `#expect`.

/// A thread running `body`, with a flag for when it has returned.
final class Worker: @unchecked Sendable {
    let done = ManagedAtomic<Bool>(false)
    init(_ body: @escaping @Sendable () -> Void) {
        Thread {
            body()
            self.done.store(true, ordering: .releasing)
        }.start()
    }
    var isDone: Bool { self.done.load(ordering: .acquiring) }
}

/// Polls `condition` for up to 30 seconds. - Returns: whether it came true.
func eventually(_ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(30)
    while Date() < deadline {
        if condition() { return true }
        usleep(200)
    }
    return condition()
}

/// (A load outside `#expect`, whose expansion does not take swift-atomics' orderings.)
func value<Value: AtomicValue>(_ atomic: ManagedAtomic<Value>) -> Value where Value.AtomicRepresentation: AtomicStorage {
    atomic.load(ordering: .acquiring)
}
