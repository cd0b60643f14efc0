import Testing

@testable import Bench

/// A row's target as the report writes it, read back (a committed run's verdicts are recomputed
/// from its text: `BenchResult.floorMet`).
@Suite("Targets as text")
struct TargetTests {
    @Test("every target's text reads back as the same bound and direction")
    func roundTrip() throws {
        for target in [Bench.Target.atMost(0.5), .atMost(1.0 / 15), .atMost(1.0 / 40), .atMost(2), .atLeast(0.9), .atLeast(1.6)] {
            let read = try #require(Bench.Target(text: target.text), "\(target.text) did not parse")
            #expect(abs(read.bound - target.bound) < 1e-12, "\(target.text)")
            #expect(read.isMet(target.bound), "\(target.text): its own bound")
            #expect(read.isMet(target.bound * 0.9) == target.isMet(target.bound * 0.9))
            #expect(read.isMet(target.bound * 1.1) == target.isMet(target.bound * 1.1))
        }
        for junk in ["", "<=", "<= x", "== 2", "<= 1/0", "<= 1/2 more"] {
            #expect(Bench.Target(text: junk) == nil, "\(junk) parsed")
        }
    }

    @Test("beyond the floor: the target missed and the floor's ratio missing it too; a floor that meets it leaves a plain miss")
    func beyondFloor() {
        var row = BenchResult(
            name: "alloc.block", unit: "ns/op", threads: 1, value: 560, baseline: "pmemobj.alloc", baselineThreads: 1,
            baselineValue: 950, ratio: 0.59, ratioLow: 0.58, ratioHigh: 0.6, ratioMin: 0.57, ratioMax: 0.61, pairs: 11,
            wide: false, better: "lower", target: Bench.Target.atMost(0.5).text, met: false)
        #expect(row.floorMet == nil && !row.isBeyondFloor, "no floor recorded")
        row.floorRatio = 0.514
        #expect(row.floorMet == false && row.isBeyondFloor)
        row.floorRatio = 0.37
        #expect(row.floorMet == true && !row.isBeyondFloor, "the floor meets it: the code misses it")
        row.met = true
        row.ratio = 0.45
        row.floorRatio = 0.514
        #expect(!row.isBeyondFloor, "met is met, whatever the floor")
    }
}
