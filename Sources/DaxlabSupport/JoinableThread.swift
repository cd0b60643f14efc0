import CShims

#if canImport(Glibc)
import Glibc
#endif

/// A named, joinable thread (pthread): every thread daxlab starts has a name such as
/// `daxlab-dma-3`, so `top -H`, a debugger and a watchdog report show who is stuck.
///
/// The kernel keeps 15 bytes of a thread's name; `name` keeps all of it.
package struct JoinableThread: Sendable {
    package let name: String
    private let handle: pthread_t

    /// Starts `body` on a new thread called `name`.
    /// - Throws: `SystemCallError` when the thread cannot be created (EAGAIN: out of threads).
    package static func spawn(
        name: String, _ body: @escaping @Sendable () -> Void
    ) throws(SystemCallError) -> JoinableThread {
        final class Start {
            let name: String
            let body: @Sendable () -> Void
            init(name: String, body: @escaping @Sendable () -> Void) {
                self.name = name
                self.body = body
            }
        }
        var handle = pthread_t()
        let context = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        let status = pthread_create(&handle, nil, { context in
            let start = Unmanaged<Start>.fromOpaque(context!).takeRetainedValue()
            _ = start.name.withCString { CShims_set_thread_name($0) }
            start.body()
            return nil
        }, context)
        guard status == 0 else {
            Unmanaged<Start>.fromOpaque(context).release()
            throw SystemCallError("start thread \(name)", errno: status)
        }
        return JoinableThread(name: name, handle: handle)
    }

    private init(name: String, handle: pthread_t) {
        self.name = name
        self.handle = handle
    }

    /// Waits for the thread to return. Call once. Called on the thread itself (its last owner
    /// let go of it there), it detaches instead: a thread cannot wait for itself.
    package func join() {
        if pthread_equal(self.handle, pthread_self()) != 0 {
            pthread_detach(self.handle)
            return
        }
        pthread_join(self.handle, nil)
    }
}
