import Bench
import Foundation

/// The benchmark plot as a self-contained SVG: pin.batch512 throughput against threads (ours and
/// the naive pin table), fault.hot throughput against threads, each beside the linear scaling of
/// its one-thread rate (dashed), and the truncate-latency percentiles of each protective policy.
enum BenchPlot {
    static func svg(_ report: BenchReport) -> String {
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="1440" height="400" font-family="sans-serif" font-size="12">
            <rect width="1440" height="400" fill="white"/>

            """
        let pins = self.scaling(report, row: "pin.batch512", unit: "pages/s")
        let naive = report.results
            .filter { $0.name == "pin.batch512" && $0.unit == "pages/s" && $0.baseline == "naive.mutex_dict" }
            .map { (Double($0.baselineThreads), $0.baselineValue) }.sorted { $0.0 < $1.0 }
        svg += self.throughputPanel(
            title: "pin.batch512 throughput (pages/s)", unit: "pages/s",
            curves: [("daxlab pin table", "#1f77b4", pins), ("one mutex + dictionary", "#d62728", naive)],
            x: 60, y: 40, width: 380, height: 300)
        svg += self.throughputPanel(
            title: "fault.hot throughput, one shared file (faults/s)", unit: "faults/s",
            curves: [("daxlab hot fault", "#2ca02c", self.scaling(report, row: "fault.hot", unit: "faults/s"))],
            x: 540, y: 40, width: 380, height: 300)
        svg += self.latencyPanel(report, x: 1000, y: 40, width: 400, height: 300)
        svg += "</svg>\n"
        return svg
    }

    /// A scaling row's curve: its one-thread baseline (the median over the row's thread counts)
    /// and its value at each count.
    private static func scaling(_ report: BenchReport, row: String, unit: String) -> [(Double, Double)] {
        let results = report.results.filter { $0.name == row && $0.unit == unit && $0.baseline == row }
        guard !results.isEmpty else { return [] }
        let single = results.map(\.baselineValue).sorted()[results.count / 2]
        return [(1, single)] + results.map { (Double($0.threads), $0.value) }.sorted { $0.0 < $1.0 }
    }

    /// Throughput against threads on log-log axes: linear scaling is a line of slope one (dashed,
    /// from each curve's one-thread rate), and a table a hundred times slower still shows its shape.
    private static func throughputPanel(
        title: String, unit: String, curves: [(label: String, color: String, points: [(Double, Double)])],
        x: Double, y: Double, width: Double, height: Double
    ) -> String {
        let all = curves.flatMap(\.points).filter { $0.0 >= 1 && $0.1 > 0 }
        let maxThreads = max(2, all.map(\.0).max() ?? 2)
        let lowDecade = floor(log10(all.map(\.1).min() ?? 1))
        let highDecade = max(lowDecade + 1, ceil(log10(max(1, all.map(\.1).max() ?? 1) * 1.2)))
        func px(_ threads: Double) -> Double { x + log2(threads) / log2(maxThreads) * width }
        func py(_ rate: Double) -> Double { y + height - (log10(rate) - lowDecade) / (highDecade - lowDecade) * height }
        var out = self.axes(x: x, y: y, width: width, height: height, title: title, xLabel: "threads (log)",
                            yLabel: "\(unit) (log)")
        for threads in Set(all.map(\.0)).sorted() {
            out += String(format: "<text x=\"%.1f\" y=\"%.1f\" fill=\"#555\">%d</text>\n",
                          px(threads) - 4, y + height + 14, Int(threads))
        }
        for decade in stride(from: lowDecade, through: highDecade, by: 1) {
            out += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n",
                          x, py(pow(10, decade)), x + width, py(pow(10, decade)))
            out += String(format: "<text x=\"%.1f\" y=\"%.1f\" fill=\"#555\" text-anchor=\"end\">1e%d</text>\n",
                          x - 4, py(pow(10, decade)) + 4, Int(decade))
        }
        for (index, curve) in curves.enumerated() {
            let points = curve.points.filter { $0.0 >= 1 && $0.1 > 0 }
            if let single = points.first(where: { $0.0 == 1 }), points.count > 1 {
                out += String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%@\" stroke-dasharray=\"4 4\" opacity=\"0.6\"/>\n",
                              px(1), py(single.1), px(maxThreads), py(single.1 * maxThreads), curve.color)
            }
            out += self.polyline(points.map { (px($0.0), py($0.1)) }, color: curve.color)
            out += "<text x=\"\(x + 10)\" y=\"\(y + 16 + Double(index) * 16)\" fill=\"\(curve.color)\">\(curve.label)</text>\n"
        }
        out += "<text x=\"\(x + 10)\" y=\"\(y + 16 + Double(curves.count) * 16)\" fill=\"#555\">dashed: linear from 1 thread</text>\n"
        return out
    }

    private static func latencyPanel(_ report: BenchReport, x: Double, y: Double, width: Double, height: Double) -> String {
        // (A policy under which no truncate ran has no curve; older reports kept zeros for it.)
        let curves = (report.truncateLatencies ?? [:]).filter { $0.value.contains { $0 > 0 } }
        let colors = ["fail": "#2ca02c", "wait": "#d62728", "sequester": "#1f77b4", "deferred": "#9467bd",
                      "lease-break": "#ff7f0e", "mainline": "#8c564b", "odp": "#e377c2"]
        let percentiles = [1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9]
        let maxLatency = max(10, curves.values.flatMap { $0 }.max() ?? 10)
        func px(_ microseconds: Double) -> Double { x + log10(max(1, microseconds)) / log10(maxLatency * 1.2) * width }
        func py(_ percentile: Double) -> Double { y + height - percentile / 100 * height }
        var out = self.axes(x: x, y: y, width: width, height: height, title: "truncate latency under DMA, by policy",
                            xLabel: String(format: "µs (log, up to %.0f)", maxLatency), yLabel: "percentile")
        var row = 0.0
        for (policy, values) in curves.sorted(by: { $0.key < $1.key }) {
            let color = colors[policy] ?? "black"
            out += self.polyline(zip(values, percentiles).map { (px($0), py($1)) }, color: color)
            out += "<text x=\"\(x + width - 90)\" y=\"\(y + height - 60 + row * 14)\" fill=\"\(color)\">\(policy)</text>\n"
            row += 1
        }
        return out
    }

    private static func axes(x: Double, y: Double, width: Double, height: Double, title: String, xLabel: String,
                             yLabel: String) -> String {
        """
        <text x="\(x)" y="\(y - 12)" font-size="14" font-weight="bold">\(title)</text>
        <line x1="\(x)" y1="\(y + height)" x2="\(x + width)" y2="\(y + height)" stroke="black"/>
        <line x1="\(x)" y1="\(y)" x2="\(x)" y2="\(y + height)" stroke="black"/>
        <text x="\(x + width / 2 - 30)" y="\(y + height + 30)">\(xLabel)</text>
        <text x="\(x + 4)" y="\(y - 0)" fill="#555">\(yLabel)</text>

        """
    }

    private static func polyline(_ points: [(Double, Double)], color: String) -> String {
        guard !points.isEmpty else { return "" }
        let list = points.map { String(format: "%.1f,%.1f", $0.0, $0.1) }.joined(separator: " ")
        var out = "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(list)\"/>\n"
        for point in points {
            out += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%@\"/>\n", point.0, point.1, color)
        }
        return out
    }
}
