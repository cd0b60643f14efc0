@testable import DaxFS
import DaxlabSupport
import Foundation
import Synchronization
import Testing

/// The registry of memory whose faults this process serves, which every write consults. The
/// tests use registries of their own (the process's holds the windows of whatever else runs),
/// over addresses nothing maps: the registry never touches the memory it describes.
@Suite("Fault-served memory", .serialized, .timeLimit(.minutes(1)))
struct FaultServedMemoryTests {
    static func buffer(_ address: UInt, _ count: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: count)
    }

    static let base: UInt = 0x7100_0000_0000

    @Test("a buffer overlaps a range from its first byte to its last, not a byte before or after; nothing once unregistered")
    func edges() {
        let registry = FaultServedMemory.Registry(capacity: 4)
        let base = Self.base
        let token = registry.register(base: UnsafeRawPointer(bitPattern: base)!, length: 0x3000, kernelFaults: false)
        #expect(!registry.overlaps(Self.buffer(base - 0x100, 0x100)), "ends where the range begins")
        #expect(registry.overlaps(Self.buffer(base - 0x100, 0x101)), "its last byte is the range's first")
        #expect(registry.overlaps(Self.buffer(base + 0x2FFF, 0x100)), "its first byte is the range's last")
        #expect(!registry.overlaps(Self.buffer(base + 0x3000, 0x100)), "begins where the range ends")
        #expect(registry.overlaps(Self.buffer(base - 1, 0x3002)), "covers the range")
        #expect(registry.overlaps(Self.buffer(base + 0x1000, 1)), "one byte inside")
        #expect(!registry.overlaps(Self.buffer(base + 0x1000, 0)), "an empty buffer")
        registry.unregister(token)
        #expect(!registry.overlaps(Self.buffer(base + 0x1000, 1)))
        #expect(!registry.overlaps(Self.buffer(base - 1, 0x3002)))
        #expect(registry.registered.load(ordering: .relaxed) == 0)
        #expect(registry.slotsInUse.load(ordering: .relaxed) == 0, "no slot is read by later checks")
    }

    @Test("with nothing registered the check reads the count alone: a slot's words without it are not looked at")
    func oneLoadWhenEmpty() {
        let registry = FaultServedMemory.Registry(capacity: 4)
        // A slot as a registration leaves it, but without the count that a registration publishes.
        registry.word(0, 1).store(Self.base + 0x1000, ordering: .relaxed)
        registry.word(0, 0).store(Self.base, ordering: .relaxed)
        registry.slotsInUse.store(1, ordering: .relaxed)
        #expect(!registry.overlaps(Self.buffer(Self.base, 16)), "the check went past the count of registrations")
        registry.registered.store(1, ordering: .relaxed)
        #expect(registry.overlaps(Self.buffer(Self.base, 16)), "with the count, the same slot is found")
    }

    @Test("the kernel faults a buffer in only where every range it overlaps says so")
    func kernelFaults() {
        let registry = FaultServedMemory.Registry(capacity: 4)
        let base = Self.base
        let kernel = registry.register(base: UnsafeRawPointer(bitPattern: base)!, length: 0x2000, kernelFaults: true)
        let cpu = registry.register(base: UnsafeRawPointer(bitPattern: base + 0x2000)!, length: 0x2000, kernelFaults: false)
        #expect(registry.kernelFaultsThroughout(Self.buffer(base + 0x100, 0x100)))
        #expect(registry.kernelFaultsThroughout(Self.buffer(base - 0x100, 0x200)), "ordinary memory beside it too")
        #expect(!registry.kernelFaultsThroughout(Self.buffer(base + 0x1F00, 0x200)), "it reaches the CPU-served range")
        #expect(!registry.kernelFaultsThroughout(Self.buffer(base + 0x3000, 0x100)))
        registry.unregister(cpu)
        #expect(registry.kernelFaultsThroughout(Self.buffer(base + 0x1F00, 0x200)))
        registry.unregister(kernel)
    }

    @Test("registrations past the slots make every check say true until they go; freed slots are taken again")
    func overflow() {
        let registry = FaultServedMemory.Registry(capacity: 2)
        let base = Self.base
        let first = registry.register(base: UnsafeRawPointer(bitPattern: base)!, length: 0x1000, kernelFaults: true)
        let second = registry.register(base: UnsafeRawPointer(bitPattern: base + 0x1000)!, length: 0x1000, kernelFaults: true)
        let elsewhere = Self.buffer(base + 0x10_0000, 0x100)
        #expect(!registry.overlaps(elsewhere))
        let third = registry.register(base: UnsafeRawPointer(bitPattern: base + 0x2000)!, length: 0x1000, kernelFaults: true)
        #expect(third == .overflow)
        #expect(registry.overlaps(elsewhere), "a range without a slot could be anywhere")
        #expect(!registry.kernelFaultsThroughout(elsewhere), "nor is it known who serves it")
        registry.unregister(third)
        #expect(!registry.overlaps(elsewhere))
        registry.unregister(first)
        let again = registry.register(base: UnsafeRawPointer(bitPattern: base + 0x2000)!, length: 0x1000, kernelFaults: true)
        #expect(again == first, "the freed slot")
        #expect(registry.overlaps(Self.buffer(base + 0x2000, 1)))
        #expect(!registry.overlaps(Self.buffer(base, 1)))
        registry.unregister(again)
        registry.unregister(second)
        #expect(registry.registered.load(ordering: .relaxed) == 0)
    }

    @Test("the process's registry: a registered reservation overlaps until it is unregistered")
    func processRegistry() throws {
        let length = 1 << 20
        let reserved = try #require(mmap(nil, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0))
        try #require(reserved != MAP_FAILED)
        defer { munmap(reserved, length) }
        let buffer = UnsafeRawBufferPointer(start: reserved + 4096, count: 4096)
        let token = FaultServedMemory.register(base: reserved, length: length, kernelFaults: false)
        #expect(FaultServedMemory.overlaps(buffer))
        #expect(!FaultServedMemory.kernelFaultsThroughout(buffer))
        FaultServedMemory.unregister(token)
        #expect(!FaultServedMemory.overlaps(buffer))
        let ordinary = [UInt8](repeating: 1, count: 64)
        ordinary.withUnsafeBytes { #expect(!FaultServedMemory.overlaps($0), "ordinary memory") }
    }

    @Test("the process's check loads the count of registrations first: a slot filled behind its back is not looked at while it is 0")
    func processCheckLoadsTheCountFirst() throws {
        let length = 1 << 20
        let reserved = try #require(mmap(nil, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0))
        try #require(reserved != MAP_FAILED)
        defer { munmap(reserved, length) }
        let buffer = UnsafeRawBufferPointer(start: reserved + 4096, count: 4096)
        // A slot of the process's table, without the count that `FaultServedMemory.register` raises.
        let token = FaultServedMemory.process.register(base: reserved, length: length, kernelFaults: false)
        defer { FaultServedMemory.process.unregister(token) }
        // (Windows another suite left registered would make the count nonzero: then the slots
        // are scanned, and this one is found.)
        let others = FaultServedMemory.registrations.load(ordering: .acquiring)
        #expect(FaultServedMemory.overlaps(buffer) == (others != 0), "\(others) other registrations")
        FaultServedMemory.registrations.add(1, ordering: .releasing)
        #expect(FaultServedMemory.overlaps(buffer), "with the count raised, the same slot is found")
        FaultServedMemory.registrations.subtract(1, ordering: .releasing)
    }

    @Test("a range registered throughout is always seen, and memory beside the churn never, while threads register and unregister")
    func concurrentChurn() throws {
        let registry = FaultServedMemory.Registry(capacity: 16)
        let base = Self.base
        // Churning ranges lie in base..<base+1 MiB; the gap above them and the stable range are
        // never inside a range, nor inside one read half-changed (its two ends are both churn's).
        let stable = registry.register(base: UnsafeRawPointer(bitPattern: base + 0x400_0000)!, length: 0x1000, kernelFaults: false)
        let stableBuffer = Self.buffer(base + 0x400_0800, 16)
        let gap = Self.buffer(base + 0x200_0000, 0x1000)
        let stop = Atomic<Bool>(false)
        let rounds = Atomic<Int>(0)
        let churners = try (0..<3).map { index in
            try JoinableThread.spawn(name: "churn-\(index)") {
                var round: UInt = 0
                while !stop.load(ordering: .relaxed) {
                    let offset = (UInt(index) * 0x4_0000 + round % 64 * 0x1000)
                    let token = registry.register(
                        base: UnsafeRawPointer(bitPattern: base + offset)!, length: 0x1000 + Int(round % 3) * 0x1000,
                        kernelFaults: round % 2 == 0)
                    registry.unregister(token)
                    round += 1
                    rounds.add(1, ordering: .relaxed)
                }
            }
        }
        var missed = 0
        var spurious = 0
        var checks = 0
        // Checks until the churners have made 3000 registrations since the first check, and at
        // least 100,000 times: the checks overlap the churn however the threads are scheduled.
        let first = rounds.load(ordering: .relaxed)
        while checks < 100_000 || rounds.load(ordering: .relaxed) - first < 3000 {
            if !registry.overlaps(stableBuffer) { missed += 1 }
            if registry.overlaps(gap) { spurious += 1 }
            checks += 1
        }
        stop.store(true, ordering: .relaxed)
        for churner in churners { churner.join() }
        #expect(missed == 0, "the stable range was missed \(missed) times")
        #expect(spurious == 0, "memory no range covers was reported \(spurious) times")
        #expect(registry.overlaps(stableBuffer))
        registry.unregister(stable)
        #expect(registry.registered.load(ordering: .relaxed) == 0)
        #expect(!registry.overlaps(stableBuffer))
    }
}
