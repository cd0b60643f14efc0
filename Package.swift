// swift-tools-version: 6.1
//
// daxlab: a userspace laboratory for the Linux DAX "DMA versus truncate" problem.
// Layers, bottom to top (each imports only the ones below it; see README.md):
//   CShims -> Pmem -> (DaxFS -> DAX -> DMA -> Race/Bench, later issues) -> DaxlabCLI -> daxlab
import PackageDescription

let package = Package(
    name: "daxlab",
    products: [
        .executable(name: "daxlab", targets: ["daxlab"]),
        .library(name: "Pmem", targets: ["Pmem"]),
        .library(name: "DaxFS", targets: ["DaxFS"]),
        .library(name: "DAX", targets: ["DAX", "DMA"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
    ],
    targets: [
        // Thin, prefixed C wrappers over libpmem, libndctl, libdaxctl and the Linux bits Swift
        // cannot import (macros, flags). No logic lives here.
        .target(
            name: "CShims",
            path: "CShims",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [
                .linkedLibrary("pmem"),
                .linkedLibrary("ndctl"),
                .linkedLibrary("daxctl"),
                .linkedLibrary("pmemobj"),
                .linkedLibrary("uring"),
            ]
        ),
        // Mappings of persistent memory, persistence, and device discovery.
        .target(name: "Pmem", dependencies: ["CShims"]),
        // DaxFS: the file system whose blocks live in the mapping (format, log, allocator, fsck).
        .target(
            name: "DaxFS",
            dependencies: ["Pmem", "CShims", .product(name: "Atomics", package: "swift-atomics")]
        ),
        // The DAX layer: address spaces (faults), pins, leases, and the truncate policies.
        .target(
            name: "DAX",
            dependencies: ["CShims", "DaxFS", "Pmem", .product(name: "Atomics", package: "swift-atomics")]
        ),
        // Simulated devices that pin file blocks and write into them.
        .target(name: "DMA", dependencies: ["DAX", "DaxFS", .product(name: "Atomics", package: "swift-atomics")]),
        // The comparison benchmarks of `daxlab bench`: every row against a baseline in the same run.
        .target(
            name: "Bench",
            dependencies: ["DMA", "DAX", "DaxFS", "Pmem", "CShims", .product(name: "Atomics", package: "swift-atomics")]
        ),
        // The race harness and its oracle: devices, truncaters and writers on shared files.
        .target(
            name: "Race",
            dependencies: [
                "DMA", "DAX", "DaxFS", "Pmem", .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // The command-line interface, as a library so tests can reach its pieces.
        .target(
            name: "DaxlabCLI",
            dependencies: [
                "Pmem",
                "DaxFS",
                "DAX",
                "Race",
                "Bench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "daxlab", dependencies: ["DaxlabCLI"]),
        // Temporary paths and a runner for the built `daxlab` binary, shared by the test targets.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "PmemTests", dependencies: ["Pmem", "TestSupport"]),
        .testTarget(name: "DaxFSTests", dependencies: ["DaxFS", "Pmem", "TestSupport"]),
        .testTarget(name: "DAXTests", dependencies: ["DAX", "DMA", "DaxFS", "TestSupport"]),
        .testTarget(name: "RaceTests", dependencies: ["Race", "DAX", "DaxFS", "TestSupport"]),
        .testTarget(name: "CLITests", dependencies: ["daxlab", "DaxlabCLI", "Pmem", "DaxFS", "TestSupport"]),
    ]
)
