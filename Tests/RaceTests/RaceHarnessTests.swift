import DAX
import DaxFS
import DaxlabSupport
import Foundation
import Race
import Testing
import TestSupport

/// Every run starts with the collision made on purpose (`RaceHarness.collide`), so what each
/// policy does with a pinned block shows in every report, whatever the scheduler does; the
/// statistical phase after it stays a race, judged by the oracle.
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
            return try harness.run()
        }
    }

    @Test("none reproduces the corruption: stale DMA writes and a corrupted page, every run")
    func noneCorrupts() throws {
        let report = try self.race(.none)
        #expect(report.staleDmaWrites > 0, "\(report)")
        #expect(report.corruptedBlocks > 0, "\(report)")
        #expect(!report.held)
        #expect(!report.deadlock)
    }

    @Test("every protective policy holds, and shows what it does with a pinned block",
          arguments: TruncatePolicy.allCases.filter(\.isProtective))
    func protectivePoliciesHold(policy: TruncatePolicy) throws {
        // mainline refuses long-term pins: its devices race with short-term ones. The run goes on
        // past its 2 seconds until enough has raced (a loaded machine or a sanitizer build runs
        // longer rather than racing less).
        let report = try self.race(policy) {
            if policy == .mainline { $0.profile = .shortTerm }
            $0.minimumDmaWrites = 101
            $0.minimumTruncates = 11
        }
        #expect(report.held, "\(report)")
        #expect(report.dmaWrites > 100, "enough racing to mean something: \(report)")
        #expect(report.truncates > 10)
        #expect(report.stuckThreads.isEmpty)
        switch policy {
        case .fail: #expect(report.truncatesBusy > 0, "the collision's truncate meets EBUSY")
        case .wait, .mainline: #expect(report.truncatesWaited > 0, "the collision's truncate waits for the pin")
        case .odp:
            #expect(report.odpInvalidations > 0, "the collision's truncate invalidates the device's translations")
            #expect(report.truncatesWaited == 0, "and never waits: the devices hold no pins")
            #expect(report.pins > 0 && report.dmaWrites > 100)
        case .sequester: #expect(report.sequesteredBlocksPeak > 0)
        case .deferred: #expect(report.deferredBlocksPeak > 0)
        case .leaseBreak:
            #expect(report.revocations > 0, "the collision's device outlives the lease-break time")
            #expect(report.revokedDmaWrites > 0, "its writes after the revocation are refused")
        case .none: break
        }
    }

    /// Mainline refuses every long-term pin of a DAX file. A run whose devices are granted one
    /// raced where nothing should have, and a truncate may wait on that pin without bound: the
    /// verdict counts each as a violation, whatever the oracle saw of the writes.
    @Test("mainline with long-term devices: every pin refused, none granted, and the run holds")
    func mainlineGrantsNoLongTermPin() throws {
        let report = try self.race(.mainline, seconds: 0.5)
        #expect(report.profile == "long-term")
        #expect(report.longTermPins == 0, "mainline granted long-term pins: \(report)")
        #expect(report.longTermRefused > 0 && report.pinsRefused, "\(report)")
        #expect(report.violations.isEmpty, "\(report.violations)")
        #expect(report.held, "\(report)")
    }

    @Test("a long-term pin granted under mainline fails the verdict, which names it; under other policies it is no violation")
    func longTermPinUnderMainlineIsAViolation() throws {
        var report = try self.race(.mainline, seconds: 0.5)
        try #require(report.held, "\(report)")
        report.longTermPins = 3
        #expect(!report.held, "a long-term pin granted under mainline passed the verdict")
        #expect(report.violations == ["mainline granted 3 long-term pin(s) it must refuse (EOPNOTSUPP)"])
        report.policy = TruncatePolicy.wait.rawValue
        #expect(report.held, "long-term pins are what every other policy serves")
    }

    @Test("a run with minimums goes on past its time until they are reached, and no further than ten times its time")
    func minimumsExtendTheRun() throws {
        let reached = try self.race(.fail, seconds: 0.3) { $0.minimumTruncates = 1 }
        #expect(reached.truncates >= 1 && reached.seconds < 3, "\(reached)")
        // A minimum no run can reach: the run lasts until its ceiling, 10 x 0.3 s.
        let ceiling = try self.race(.fail, seconds: 0.3) { $0.minimumTruncates = .max }
        #expect(ceiling.seconds >= 2.9 && ceiling.seconds < 10, "\(ceiling)")
        #expect(ceiling.held)
    }

    /// xfstests' dax collision scenario (generic/503): one round of one operation against a
    /// device's pin, made to happen on purpose (the device keeps its pin until the operation has
    /// reached its policy's decision), judged by the oracle.
    @Test("the collision scenario: punch, zero-range, truncate and collapse each corrupt under none and are stopped by every protective policy",
          arguments: CollisionOperation.allCases, TruncatePolicy.allCases)
    func collisionScenario(operation: CollisionOperation, policy: TruncatePolicy) throws {
        let report = try self.race(policy, seconds: 0.01) {
            $0.scenario = .collision
            $0.collisionOperations = [operation]
            if policy == .mainline { $0.profile = .shortTerm }
        }
        #expect(report.scenario == "collision")
        #expect(!report.deadlock && report.stuckThreads.isEmpty)
        #expect(report.truncates >= 1, "\(operation) ran")
        if policy == .none {
            #expect(report.staleDmaWrites > 0, "\(operation) under none: the device writes into a block that changed hands: \(report)")
            #expect(!report.held)
        } else {
            #expect(report.held, "\(operation) under \(policy): \(report)")
            #expect(report.dmaWrites > 0)
        }
    }

    #if DEBUG
    @Test("a race's own locks reach the lock-order checker: the writers', the oracle's, the latencies', the end's and the devices'",
          .timeLimit(.minutes(1)))
    func raceLocksChecked() throws {
        let ranks: [LockRank] = [.raceWriter, .oracleMoved, .oracleCorruptions, .raceLatencies, .raceJoined, .dmaThreads]
        let before = ranks.map(LockOrder.acquisitions(of:))
        // A short race (devices, truncaters, writers, the stopper), and a collision whose
        // collapse tells the oracle of the blocks it moves.
        #expect(try self.race(.sequester, seconds: 0.2).held)
        let collision = try self.race(.sequester, seconds: 0.01) {
            $0.scenario = .collision
            $0.collisionOperations = [.collapse]
        }
        #expect(collision.held)
        for (rank, count) in zip(ranks, before) {
            #expect(LockOrder.acquisitions(of: rank) > count, "no acquisition of \(rank) reached the checker")
        }
    }
    #endif
}
