// swift-tools-version: 6.1
// The ordo-one/benchmark suites of daxlab's hot paths: `make bench` (or `swift package benchmark`
// here). A separate package so the root builds and tests without it.
import PackageDescription

let package = Package(
    name: "daxlab-benchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "daxlab", path: "../"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "DaxlabBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "DAX", package: "daxlab"),
                .product(name: "DaxFS", package: "daxlab"),
            ],
            path: "Benchmarks/DaxlabBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
