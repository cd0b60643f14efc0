import DAX
import DaxFS
import Foundation
import Race
import Testing
import TestSupport

@Suite("Race harness and oracle", .serialized, .timeLimit(.minutes(5)))
struct RaceHarnessTests {
    private func race(_ policy: TruncatePolicy, seconds: Double = 2, _ adjust: (inout RaceConfiguration) -> Void = { _ in })
        throws -> RaceReport
    {
        try withTemporaryPath("race") { path in
            var configuration = RaceConfiguration(policy: policy)
            configuration.seconds = seconds
            adjust(&configuration)
            let harness = try RaceHarness(path: path, size: 32 << 20, configuration: configuration, force: false)
            return harness.run()
        }
    }

    @Test("none reproduces the corruption: stale DMA writes and corrupted blocks")
    func noneCorrupts() throws {
        let report = try self.race(.none, seconds: 3)
        #expect(report.dmaWrites > 100, "enough racing to mean something (ThreadSanitizer builds manage a few hundred)")
        #expect(report.staleDmaWrites > 0, "\(report)")
        #expect(report.corruptedBlocks > 0, "\(report)")
        #expect(!report.held)
        #expect(!report.deadlock)
    }

    @Test("every protective policy holds: no stale write, no corruption, no leak, fsck clean, no deadlock",
          arguments: TruncatePolicy.allCases.filter(\.isProtective))
    func protectivePoliciesHold(policy: TruncatePolicy) throws {
        let report = try self.race(policy)
        #expect(report.held, "\(report)")
        #expect(report.dmaWrites > 100, "enough racing to mean something (ThreadSanitizer builds manage a few hundred)")
        #expect(report.truncates > 10)
        switch policy {
        case .fail: #expect(report.truncatesBusy > 0, "devices pin constantly: some truncates meet EBUSY")
        case .wait: #expect(report.truncatesWaited > 0)
        case .sequester: #expect(report.sequesteredBlocksPeak > 0)
        case .deferred: #expect(report.deferredBlocksPeak > 0)
        default: break
        }
    }

    @Test("lease-break with a break time shorter than the pins: writes are revoked, and the policy still holds")
    func leaseBreakRevokes() throws {
        let report = try self.race(.leaseBreak) { configuration in
            configuration.leaseBreakMilliseconds = 1
            configuration.pinMilliseconds = 20
        }
        #expect(report.revokedDmaWrites > 0, "\(report)")
        #expect(report.held, "\(report)")
    }
}
