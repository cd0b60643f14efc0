import Atomics
import DaxlabSupport
import Synchronization

/// Memory whose page faults this process's own file systems serve: the DAX layer's windows,
/// whose pages are mapped on first touch by daxlab's fault path under the file's invalidate
/// lock, taken shared.
///
/// A write whose source lies in such memory must not read it while it holds a file's lock
/// exclusively: the read's fault would wait for a lock the writer holds (the file's own, for a
/// source in that file's window) or take a second file's lock out of order. So
/// `FileSystem.write` asks `overlaps` on every call, and copies a source that overlaps into a
/// bounce buffer before it takes the lock, as the kernel faults a write's source in first
/// (`fault_in_iov_iter_readable`).
///
/// `overlaps` is one atomic load while nothing is registered (a write from ordinary memory pays
/// no more); with registrations it reads the slots up to the highest in use, without a lock. A
/// range registered before the check began (a window is handed out once it is registered) and
/// not removed during it is always seen. A slot registered or unregistered during the check may
/// be read half-changed: that can make the check say true for memory no registration covers
/// (the write then takes the bounce buffer: correct, slower), never false for such a range.
/// Registering and unregistering take one lock (rank `faultServedMemory`, a leaf).
package enum FaultServedMemory {
    /// A registration, to give back to `unregister`. `none` is no registration.
    package struct Token: RawRepresentable, AtomicValue, Sendable, Equatable {
        package let rawValue: Int
        package init(rawValue: Int) { self.rawValue = rawValue }
        /// No registration: `unregister(.none)` does nothing.
        package static let none = Token(rawValue: -1)
        /// A registration past the slots: while one exists, every check says true.
        static let overflow = Token(rawValue: -2)
    }

    /// This process's registrations.
    static let process = Registry(capacity: 4096)  // (as many as the DAX layer's window table holds)
    /// How many there are: the word a check loads first. A global with a constant initializer,
    /// so the compiler initializes it statically and the load needs no lazy-initialization check
    /// (`process`, a class reference, does). Raised before `register` returns and lowered after
    /// the slot is freed, so it is never 0 while a registration a check must see exists.
    static let registrations = Atomic<Int>(0)

    /// Registers `length` bytes from `base` as memory whose faults this process serves.
    /// - Parameters:
    ///   - base: the first byte (a window's base).
    ///   - length: its length in bytes, above 0.
    ///   - kernelFaults: whether the kernel's own accesses to the range (`process_vm_readv`,
    ///     GUP) fault its pages in, as they do for a range served through userfaultfd; false
    ///     where only a CPU access is served (a SIGSEGV handler), which the kernel's accesses
    ///     fail with EFAULT instead.
    /// - Returns: the token to unregister it with.
    package static func register(base: UnsafeRawPointer, length: Int, kernelFaults: Bool) -> Token {
        let token = Self.process.register(base: base, length: length, kernelFaults: kernelFaults)
        Self.registrations.add(1, ordering: .releasing)
        return token
    }

    /// Removes a registration (before its memory is unmapped). `.none` does nothing.
    package static func unregister(_ token: Token) {
        guard token != .none else { return }
        Self.process.unregister(token)
        Self.registrations.subtract(1, ordering: .releasing)
    }

    /// Whether any byte of `buffer` lies in registered memory (an empty buffer: false). One
    /// atomic load while nothing is registered.
    @inline(__always)
    package static func overlaps(_ buffer: UnsafeRawBufferPointer) -> Bool {
        guard _slowPath(Self.registrations.load(ordering: .acquiring) != 0) else { return false }
        return Self.process.overlapsRegistered(buffer)
    }

    /// Whether the kernel's own accesses fault in every registered range `buffer` overlaps
    /// (false when any was registered without `kernelFaults`, or could not be told apart).
    package static func kernelFaultsThroughout(_ buffer: UnsafeRawBufferPointer) -> Bool {
        Self.process.kernelFaultsThroughout(buffer)
    }

    /// A table of registrations: the process has one (`process`, whose count `registrations`
    /// mirrors for the first load of a check); tests make their own.
    final class Registry: @unchecked Sendable {
        // The slots are written only under `registrar`, and read by anyone (see `table`); the
        // counters are atomics, written under `registrar` too.
        /// Ranges held in slots; registrations past these are counted in `overflowed`.
        let capacity: Int
        /// The registrations (slots and overflowed): the one word a check loads when it is 0.
        let registered = Atomic<Int>(0)
        /// One past the highest slot in use: a check reads no slot from here on.
        let slotsInUse = Atomic<Int>(0)
        /// The registrations that found no free slot.
        let overflowed = Atomic<Int>(0)
        /// Three words per slot: the first byte's address (0: free), the address past the last
        /// byte, and 1 where the kernel's own accesses fault the range in. The address is stored
        /// last, with release, when a slot is taken, and first, as 0, when it is freed, so a
        /// reader that sees an address sees the slot's other words as registered with it, or as
        /// changed later.
        let table: UnsafeMutablePointer<UnsafeAtomic<UInt>.Storage>
        /// Serializes registration and removal; its value is the count `registered` publishes.
        let registrar = Locked(0, rank: .faultServedMemory)

        init(capacity: Int) {
            self.capacity = capacity
            self.table = UnsafeMutablePointer<UnsafeAtomic<UInt>.Storage>.allocate(capacity: 3 * capacity)
            self.table.initialize(repeating: UnsafeAtomic<UInt>.Storage(0), count: 3 * capacity)
        }

        deinit { self.table.deallocate() }

        func word(_ slot: Int, _ field: Int) -> UnsafeAtomic<UInt> {
            UnsafeAtomic(at: self.table + 3 * slot + field)
        }

        func register(base: UnsafeRawPointer, length: Int, kernelFaults: Bool) -> Token {
            precondition(length > 0, "a fault-served range needs a byte")
            let start = UInt(bitPattern: base)
            return self.registrar.withLock { count in
                count += 1
                defer { self.registered.store(count, ordering: .releasing) }
                var slot = 0
                while slot < self.capacity, self.word(slot, 0).load(ordering: .relaxed) != 0 { slot += 1 }
                guard slot < self.capacity else {
                    self.overflowed.add(1, ordering: .releasing)
                    return .overflow
                }
                self.word(slot, 1).store(start + UInt(length), ordering: .relaxed)
                self.word(slot, 2).store(kernelFaults ? 1 : 0, ordering: .relaxed)
                self.word(slot, 0).store(start, ordering: .releasing)
                if slot >= self.slotsInUse.load(ordering: .relaxed) { self.slotsInUse.store(slot + 1, ordering: .releasing) }
                return Token(rawValue: slot)
            }
        }

        func unregister(_ token: Token) {
            guard token != .none else { return }
            self.registrar.withLock { count in
                if token == .overflow {
                    self.overflowed.subtract(1, ordering: .releasing)
                } else {
                    self.word(token.rawValue, 0).store(0, ordering: .releasing)
                    self.word(token.rawValue, 1).store(0, ordering: .relaxed)
                    self.word(token.rawValue, 2).store(0, ordering: .relaxed)
                    var inUse = self.slotsInUse.load(ordering: .relaxed)
                    while inUse > 0, self.word(inUse - 1, 0).load(ordering: .relaxed) == 0 { inUse -= 1 }
                    self.slotsInUse.store(inUse, ordering: .releasing)
                }
                count -= 1
                self.registered.store(count, ordering: .releasing)
            }
        }

        @inline(__always)
        func overlaps(_ buffer: UnsafeRawBufferPointer) -> Bool {
            guard _slowPath(self.registered.load(ordering: .acquiring) != 0) else { return false }
            return self.overlapsRegistered(buffer)
        }

        @inline(never)
        func overlapsRegistered(_ buffer: UnsafeRawBufferPointer) -> Bool {
            guard let first = buffer.baseAddress, buffer.count > 0 else { return false }
            if self.overflowed.load(ordering: .acquiring) != 0 { return true }
            let start = UInt(bitPattern: first)
            let end = start + UInt(buffer.count)
            var found = false
            self.forEachRegistered { base, rangeEnd, _ in
                if start < rangeEnd && base < end { found = true }
            }
            return found
        }

        func kernelFaultsThroughout(_ buffer: UnsafeRawBufferPointer) -> Bool {
            guard let first = buffer.baseAddress, buffer.count > 0 else { return true }
            if self.overflowed.load(ordering: .acquiring) != 0 { return false }
            let start = UInt(bitPattern: first)
            let end = start + UInt(buffer.count)
            var throughout = true
            self.forEachRegistered { base, rangeEnd, kernelFaults in
                if start < rangeEnd && base < end && !kernelFaults { throughout = false }
            }
            return throughout
        }

        private func forEachRegistered(_ body: (UInt, UInt, Bool) -> Void) {
            let inUse = self.slotsInUse.load(ordering: .acquiring)
            for slot in 0..<min(inUse, self.capacity) {
                let base = self.word(slot, 0).load(ordering: .acquiring)
                guard base != 0 else { continue }
                body(base, self.word(slot, 1).load(ordering: .relaxed), self.word(slot, 2).load(ordering: .relaxed) != 0)
            }
        }
    }
}
