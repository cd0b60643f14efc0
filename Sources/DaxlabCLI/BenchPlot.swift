import Bench
import Foundation

/// The benchmark plot as a self-contained SVG: pin.batch512 throughput against threads (ours and
/// the naive pin table), and the truncate-latency percentiles of each protective policy.
enum BenchPlot {
    static func svg(_ report: BenchReport) -> String {
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="980" height="400" font-family="sans-serif" font-size="12">
            <rect width="980" height="400" fill="white"/>

            """
        svg += self.throughputPanel(report, x: 60, y: 40, width: 380, height: 300)
        svg += self.latencyPanel(report, x: 540, y: 40, width: 400, height: 300)
        svg += "</svg>\n"
        return svg
    }

    private static func throughputPanel(_ report: BenchReport, x: Double, y: Double, width: Double, height: Double) -> String {
        var ours: [(Double, Double)] = []
        var naive: [(Double, Double)] = []
        for result in report.results where result.name == "pin.batch512" && result.unit == "pages/s" {
            if result.baseline == "pin.batch512" {
                ours.append((1, result.baselineValue))
                ours.append((Double(result.threads), result.value))
            } else if result.baseline == "naive.mutex_dict" {
                naive.append((Double(result.baselineThreads), result.baselineValue))
            }
        }
        ours = Array(Set(ours.map { "\($0.0),\($0.1)" })).compactMap { pair in
            let parts = pair.split(separator: ",").compactMap { Double($0) }
            return parts.count == 2 ? (parts[0], parts[1]) : nil
        }.sorted { $0.0 < $1.0 }
        let maxThreads = max(2, (ours + naive).map(\.0).max() ?? 2)
        let maxRate = max(1, (ours + naive).map(\.1).max() ?? 1) * 1.1
        func px(_ threads: Double) -> Double { x + (threads - 1) / max(1, maxThreads - 1) * width }
        func py(_ rate: Double) -> Double { y + height - rate / maxRate * height }
        var out = self.axes(x: x, y: y, width: width, height: height, title: "pin.batch512 throughput (pages/s)",
                            xLabel: "threads", yLabel: String(format: "%.3g pages/s", maxRate))
        out += self.polyline(ours.map { (px($0.0), py($0.1)) }, color: "#1f77b4")
        out += self.polyline(naive.sorted { $0.0 < $1.0 }.map { (px($0.0), py($0.1)) }, color: "#d62728")
        out += "<text x=\"\(x + 10)\" y=\"\(y + 16)\" fill=\"#1f77b4\">daxlab pin table</text>\n"
        out += "<text x=\"\(x + 10)\" y=\"\(y + 32)\" fill=\"#d62728\">one mutex + dictionary</text>\n"
        return out
    }

    private static func latencyPanel(_ report: BenchReport, x: Double, y: Double, width: Double, height: Double) -> String {
        let curves = report.truncateLatencies ?? [:]
        let colors = ["fail": "#2ca02c", "wait": "#d62728", "sequester": "#1f77b4", "deferred": "#9467bd",
                      "lease-break": "#ff7f0e"]
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
