import Testing

@testable import Bench

/// The interleaved measurement (`Measure`): order of samples, the pairs' ratios, and when a
/// row's spread is too wide to judge. Deterministic: the samples are numbers the test chooses.
@Suite("Interleaved measurement")
struct MeasureTests {
    @Test("row and baseline alternate A B B A … after one warm-up each")
    func order() {
        var calls: [String] = []
        _ = Measure(budget: 1, pairs: 4).interleave(
            samples: { calls.append("A"); return 1 }, { calls.append("B"); return 1 })
        #expect(calls == ["A", "B", "A", "B", "B", "A", "A", "B", "B", "A"])
    }

    @Test("a machine whose speed drifts between pairs: every pair's ratio is the true one")
    func driftCancels() {
        // The machine slows down 1x, 3x, 1.5x, 7x …: both sides of a pair see the same speed.
        let drift: [Double] = [1, 1, 3, 1.5, 7, 2, 1, 9, 1.2, 4, 1, 2.5]
        var row = 0
        var baseline = 0
        let paired = Measure(budget: 1, pairs: 11).interleave(
            samples: { defer { row += 1 }; return 2 * drift[row] }, { defer { baseline += 1 }; return drift[baseline] })
        #expect(paired.ratios.count == 11)
        #expect(paired.ratio == 2)
        #expect(paired.lowerQuartile == 2 && paired.upperQuartile == 2)
        #expect(!paired.isWide(bound: 0.5))
        // Medians taken apart would not be comparable pair by pair; the ratio is not their quotient here.
        #expect(paired.value == 2 * Measure.median(Array(drift[1...11])))
    }

    @Test("the median of the pairs' ratios, its quartiles, and the transform applied to samples first")
    func quartiles() {
        var index = 0
        let rows: [Double] = [0, 10, 20, 30, 40, 50]  // the first is the warm-up
        let paired = Measure(budget: 1, pairs: 5).interleave(
            samples: { defer { index += 1 }; return rows[index] }, { 10 }, transform: { $0 * 2 })
        #expect(paired.ratios == [1, 2, 3, 4, 5])
        #expect(paired.ratio == 3)
        #expect(paired.lowerQuartile == 2 && paired.upperQuartile == 4)
        #expect(paired.baseline == 20 && paired.value == 60)
    }

    @Test("too wide to judge: an interquartile range that straddles the target's bound, or without a target one over a quarter of the median")
    func wide() {
        let tight = Measure.Paired(value: 1, baseline: 1, ratios: [0.95, 0.98, 1, 1.02, 1.05])
        #expect(!tight.isWide(bound: 2))
        #expect(!tight.isWide(bound: nil))
        #expect(tight.isWide(bound: 1.01), "the bound lies inside q1-q3: the pairs disagree on the verdict")
        let loose = Measure.Paired(value: 1, baseline: 1, ratios: [0.5, 0.7, 1, 1.4, 2])
        #expect(loose.isWide(bound: nil))
        #expect(!loose.isWide(bound: 10), "far from the bound, a loose spread still gives one verdict")
        #expect(Measure.Paired(value: 0, baseline: 1, ratios: [0, 0, 0]).isWide(bound: nil), "nothing measured")
    }

    @Test("quantiles interpolate between neighbours")
    func quantile() {
        #expect(Measure.quantile([1, 2, 3, 4], 0.5) == 2.5)
        #expect(Measure.quantile([7], 0.25) == 7)
        #expect(Measure.quantile([], 0.5) == 0)
        #expect(Measure.median([3, 1, 2]) == 2)
    }

    @Test("counted bodies are calibrated: a sample does at least one unit and reports ns per unit")
    func calibrated() {
        var units = 0
        let paired = Measure(budget: 0.05, pairs: 3).interleave({ count in units += count }, { _ in })
        #expect(units > 0)
        #expect(paired.value >= 0 && paired.ratios.count == 3)
        #expect(Bench.bound(1.0 / 15) == "1/15" && Bench.bound(2) == "2" && Bench.bound(0.9) == "0.9")
    }
}
