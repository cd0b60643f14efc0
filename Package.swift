// swift-tools-version: 6.1
//
// daxlab: a userspace laboratory for the Linux DAX "DMA versus truncate" problem.
//
// The module graph, bottom to top; each target depends only on targets below it, and only on
// what it imports (scripts/check-layers.swift checks both):
//
//   CShims          C: libpmem, libndctl, libdaxctl, libblkid; prefixed wrappers; futex; the window fault handler
//   CRing           C: liburing (the kernel's long-term pins and writes)
//   CVerbs          C: libibverbs (RDMA devices: memory registration, RDMA WRITEs over a loopback pair)
//   DaxlabSupport   locks, the monotonic clock, named threads, the seeded generator, syscall errors
//   Pmem            mappings of persistent memory, persistence, device discovery
//   DaxFS           the file system in the mapping; its side of the DAX contract (DAXContract.swift)
//   CrashCampaign   crash injection (a persist observer) and the crash workload
//   DAX             address spaces, pins, leases, the policies (the layout breaker), the reclaimer
//   DMA             simulated devices that pin blocks and write into them
//   Race            the race harness and its oracle
//   CBenchShims     C: liburing, libpmemobj, process_vm_writev (the baselines of daxlab bench)
//   Bench           daxlab bench: every row against a baseline in the same run
//   CDaxlab         C: libdaxlab's header (daxlab.h), its errno names and thread-local last error
//   LibDaxlab       libdaxlab: the C interface (daxlab.h) over DaxFS and DAX, built as a shared library
//   DaxlabCLI       the commands (swift-argument-parser), and the `daxlab` executable on top
import PackageDescription

// The test hooks of the DAX and Pmem layers (closures the tests run at chosen points of the pin
// fast path, the lease scan, the batch pool, a revocation; an msync made to fail) are compiled only when the build asks for them
// with DAXLAB_TEST_HOOKS=1 in its environment, as swift-system's mocking is: `make test` does,
// and nothing else, whatever the configuration. A package that depends on daxlab, a release
// build or a plain `swift build` gets layers without them; the tests that need them say so
// and are skipped.
let testHooks: [SwiftSetting] =
    Context.environment["DAXLAB_TEST_HOOKS"] == "1" ? [.define("DAXLAB_TEST_HOOKS")] : []

let package = Package(
    name: "daxlab",
    products: [
        .executable(name: "daxlab", targets: ["daxlab"]),
        .library(name: "Pmem", targets: ["Pmem"]),
        .library(name: "DaxFS", targets: ["DaxFS"]),
        .library(name: "DAX", targets: ["DAX"]),
        .library(name: "DMA", targets: ["DMA"]),
        // libdaxlab for C programs: `make install` puts it in PREFIX/lib as libdaxlab.so, with
        // daxlab.h and daxlab.pc (docs/c-api.md).
        .library(name: "DaxlabC", type: .dynamic, targets: ["LibDaxlab"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
    ],
    targets: [
        // Thin, prefixed C wrappers over libpmem, libndctl, libdaxctl and the Linux bits Swift
        // cannot import (macros, variadic calls). No logic lives here.
        .target(
            name: "CShims",
            path: "CShims",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [
                .linkedLibrary("pmem"), .linkedLibrary("ndctl"), .linkedLibrary("daxctl"), .linkedLibrary("blkid"),
            ]
        ),
        // liburing for the DAX layer's kernel pins and the kernel devices' writes (io_uring fixed
        // buffers and READ_FIXED).
        .target(name: "CRing", path: "CRing", cSettings: [.define("_GNU_SOURCE")], linkerSettings: [.linkedLibrary("uring")]),
        // libibverbs for RDMA devices: a memory registration is the device's long-term pin, and an
        // RDMA WRITE between two queue pairs of one port is the device writing into the pages.
        .target(name: "CVerbs", path: "CVerbs", cSettings: [.define("_GNU_SOURCE")], linkerSettings: [.linkedLibrary("ibverbs")]),
        // The shared tools every layer uses: pthread locks (which ThreadSanitizer understands),
        // the monotonic clock, named joinable threads, SplitMix64, typed syscall errors.
        .target(name: "DaxlabSupport", dependencies: ["CShims", .product(name: "Atomics", package: "swift-atomics")]),
        // Mappings of persistent memory, persistence, and device discovery.
        // (Its test hook, an msync that fails, exists only in builds with DAXLAB_TEST_HOOKS=1.)
        .target(name: "Pmem", dependencies: ["CShims"], swiftSettings: testHooks),
        // DaxFS: the file system whose blocks live in the mapping (format, log, allocator, fsck),
        // and its side of the DAX contract.
        .target(
            name: "DaxFS",
            dependencies: ["Pmem", "CShims", "DaxlabSupport", .product(name: "Atomics", package: "swift-atomics")]
        ),
        // The crash campaign's pieces: a persist observer that models power loss and kills the
        // process at a chosen persist point, and the workload it interrupts.
        .target(name: "CrashCampaign", dependencies: ["DaxFS", "Pmem", "DaxlabSupport"]),
        // The DAX layer: address spaces (faults), pins, leases, the truncate policies.
        .target(
            name: "DAX",
            dependencies: [
                "CShims", "CRing", "DaxFS", "Pmem", "DaxlabSupport", .product(name: "Atomics", package: "swift-atomics"),
            ],
            swiftSettings: testHooks
        ),
        // Devices that pin file blocks and write into them: simulated, or the kernel's own
        // (io_uring fixed buffers, O_DIRECT, RDMA memory registrations).
        .target(
            name: "DMA",
            dependencies: [
                "CShims", "CVerbs", "DAX", "DaxFS", "Pmem", "DaxlabSupport", .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        // The race harness and its oracle: devices, truncaters and writers on shared files.
        .target(
            name: "Race",
            dependencies: [
                "CShims", "DMA", "DAX", "DaxFS", "Pmem", "DaxlabSupport", .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // The kernel's and libraries' own paths daxlab bench measures against; only Bench links them.
        .target(
            name: "CBenchShims",
            path: "CBenchShims",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("pmemobj"), .linkedLibrary("pmem")]
        ),
        // The comparison benchmarks of `daxlab bench`: every row against a baseline in the same run.
        .target(
            name: "Bench",
            dependencies: [
                "CBenchShims", "CRing", "CShims", "DAX", "DMA", "DaxFS", "Pmem", "DaxlabSupport",
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        // libdaxlab's C half: the public header, errno names, the thread-local last error.
        .target(name: "CDaxlab", path: "CDaxlab", cSettings: [.define("_GNU_SOURCE")]),
        // libdaxlab: the C interface over the file system and the DAX layer (handles, errors as
        // negative errno values, lease-break callbacks on a thread of its own).
        .target(
            name: "LibDaxlab",
            dependencies: [
                "CDaxlab", "CShims", "DAX", "DaxFS", "DaxlabSupport", .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        // The command-line interface, as a library so tests can reach its pieces.
        .target(
            name: "DaxlabCLI",
            dependencies: [
                "CShims", "Pmem", "DaxFS", "CrashCampaign", "DAX", "DMA", "Race", "Bench", "DaxlabSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "daxlab", dependencies: ["DaxlabCLI"]),
        // Temporary paths and a runner for the built `daxlab` binary, shared by the test targets.
        .target(name: "TestSupport", dependencies: ["CRing", "CShims", "CVerbs", "DaxlabSupport"], path: "Tests/TestSupport"),
        .testTarget(name: "DaxlabSupportTests", dependencies: ["DaxlabSupport", .product(name: "Atomics", package: "swift-atomics")]),
        .testTarget(name: "PmemTests", dependencies: ["Pmem", "TestSupport"]),
        .testTarget(name: "DaxFSTests", dependencies: ["CShims", "DaxFS", "Pmem", "TestSupport", "DaxlabSupport"]),
        .testTarget(
            name: "DAXTests",
            dependencies: [
                "CShims", "DAX", "DMA", "DaxFS", "Pmem", "TestSupport", "DaxlabSupport",
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            swiftSettings: testHooks
        ),
        .testTarget(
            name: "RaceTests",
            dependencies: ["Race", "DMA", "DAX", "DaxFS", "CShims", "TestSupport", "DaxlabSupport"]
        ),
        .testTarget(name: "BenchTests", dependencies: ["Bench"]),
        .testTarget(
            name: "CLITests",
            dependencies: ["daxlab", "DaxlabCLI", "CBenchShims", "CRing", "TestSupport"]
        ),
    ]
)
