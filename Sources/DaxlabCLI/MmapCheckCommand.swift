import ArgumentParser
import DAX
import DMA
import DaxFS
import Pmem

#if canImport(Glibc)
import Glibc
#endif

/// `daxlab mmap-check`: daxlab's windows on a medium, faulted by the CPU and by the kernel.
struct MmapCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mmap-check",
        abstract: "Check daxlab's windows (mappings of its files the kernel can fault) on a medium.",
        discussion: """
            Formats a fresh image at PATH (as race does), mounts it, and maps files of it into \
            windows: address space whose pages daxlab's fault service maps onto the files' \
            blocks when something first touches them, as the kernel's fault handler maps a DAX \
            file. The test suites check windows on tmpfs; this runs the same checks on any \
            medium, device-dax and fs-dax included. Why it matters: DMA into a DAX file (an \
            O_DIRECT read, an RDMA registration) reaches its pages through the kernel faulting \
            the mapping, and a huge fault is how a DAX mapping covers 2 MiB at once; a lab whose \
            mappings only the CPU could fault would study a different problem. One line per check \
            (PASS, FAIL or SKIP with why), then a summary:

              kernel-read      a buffered pread(2) from a file in /tmp into an untouched window: \
            the kernel's copy_to_user faults every page in through daxlab (one fault per page, \
            holes allocated) and returns the full length; the bytes are then in the file. A \
            mapping the kernel itself cannot fault fails read(2) with EFAULT.
              kernel-direct    the same with O_DIRECT from a file in --source-dir (default \
            /var/tmp): GUP faults and pins the window's pages (FOLL_PIN) and the block layer's \
            DMA lands in them, as a device's DMA into a DAX mapping does. Skipped where O_DIRECT \
            is refused or would only copy (tmpfs, ramfs): give a directory on a disk file system.
              huge-fault       a 4 MiB file written in order (two 2 MiB-aligned runs of the image), \
            read through its window: 2 faults, each mapping 2 MiB at once (a PMD on fs-dax and \
            2 MiB-capable device-dax), every byte right. Skipped where the allocator had no \
            aligned runs.
              punch-split      a punch of one page inside that huge mapping: zeros there through \
            the window, the other pages intact and still mapped (the kernel splits the PMD).
              past-eof         a pread into the window's page past the end of file fails with \
            EFAULT, and the process goes on (the CPU's access there would be SIGBUS); once the \
            file grows over the page, the same pread fills it.
              hole-then-write  a load of a hole reads zeros and allocates nothing; a store after \
            it faults again (write-protect), allocates a block, and the file system reads it.

            Where userfaultfd is refused (an unprivileged user with vm.unprivileged_userfaultfd=0, \
            a seccomp filter), windows fall back to a SIGSEGV handler, which serves only the CPU's \
            faults: kernel-read, kernel-direct and past-eof are skipped, saying why. A device-dax \
            device that is not 4 KiB aligned cannot map single blocks: one line, exit 2.

            Exit status: 0 when every check passed (skips allowed); 1 when a check failed; 2 for \
            bad arguments, an unusable path, or a medium that refuses windows.
            """
    )

    static let defaultPath = "/dev/shm/daxlab-mmap-check.pmem"
    /// Where the buffered source of kernel-read and past-eof goes (unnamed: nothing is left).
    static let bufferedSourceDirectory = "/tmp"
    /// Sizes an image may be created at: room for the 4 MiB file's two aligned runs beside the
    /// others, and no more than six small checks need.
    static let sizes = (16 << 20)...(16 << 30)

    @Argument(help: "The image to format (a file, created, or with --force a device-dax device).")
    var path: String = MmapCheckCommand.defaultPath

    @Option(
        name: .long, help: "Size of the image when it is created (16M to 16G; a device-dax device is formatted whole).")
    var size = ByteSize(bytes: 64 << 20)
    @Option(
        name: .customLong("source-dir"),
        help: ArgumentHelp(
            "Where kernel-direct's O_DIRECT source file goes: a directory on a disk file system "
                + "(default \(DeviceKind.defaultSourceDirectory)).",
            valueName: "DIR"))
    var sourceDirectory: String?
    @Flag(name: .long, help: "Format PATH even though it exists (its contents are lost; it is not removed afterwards).")
    var force = false
    @Flag(name: .long, help: "Print one JSON object: the medium, how windows fault, and each check.")
    var json = false

    /// What `--json` prints.
    struct Report: Encodable {
        var path: String
        var medium: Medium
        /// `userfaultfd`, or `signals` where userfaultfd is refused.
        var windowFaults: WindowFaultMechanism
        var mapSync: Bool
        /// The least a window maps at once, in bytes: 4096, or 2 MiB over a device-dax device
        /// aligned to 2 MiB (whole aligned runs only).
        var windowGranularity: Int
        var checks: [WindowCheck]
        var passed: Int
        var failed: Int
        var skipped: Int
    }

    func validate() throws {
        guard Self.sizes.contains(self.size.bytes) else {
            throw ValidationError("--size \(self.size) is out of range: 16M to 16G")
        }
        if let directory = self.sourceDirectory {
            var status = stat()
            guard stat(directory, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
                throw ValidationError("--source-dir \(directory): not a directory")
            }
            guard access(directory, W_OK) == 0 else {
                throw ValidationError("--source-dir \(directory): cannot create files there: \(String(cString: strerror(errno)))")
            }
        }
    }

    func run() throws {
        let image = try ScratchImage(self.path, command: "mmap-check", force: self.force, defaultPath: Self.defaultPath)
        let report: Report
        var formatted = false
        do {
            report = try self.check(image, formatted: &formatted)
        } catch {
            // (Only what this run formatted: a format that failed may have met another run's image.)
            if formatted { image.remove() }
            throw error
        }
        image.remove()
        if self.json {
            try Terminal.printJSON(report)
        } else {
            Output.print(
                "\(report.path): \(report.medium.description), windows fault through \(report.windowFaults)"
                    + (report.mapSync ? " (MAP_SYNC)" : "")
                    + (report.windowGranularity > pageSize ? ", mapping whole 2 MiB aligned runs only" : ""))
            WindowCheck.printLines(report.checks)
        }
        if report.failed > 0 { throw ExitCode(1) }
    }

    /// Formats and mounts the image, runs the checks, and unmounts it.
    private func check(_ image: ScratchImage, formatted: inout Bool) throws -> Report {
        // A device-dax device is formatted whole, whatever --size says.
        _ = try FileSystem.format(
            path: image.path, size: image.isDevice ? nil : self.size.bytes, force: image.formatForce)
        formatted = true
        ImageRemovalOnSignal.arm(image)
        let fs = try FileSystem.mount(path: image.path)
        let checks: WindowChecks
        let results: [WindowCheck]
        do {
            let dax = try DAXFileSystem(fs: fs, policy: .wait)
            checks = try WindowChecks(
                fs: fs, dax: dax, bufferedDirectory: Self.bufferedSourceDirectory,
                directDirectory: self.sourceDirectory ?? DeviceKind.defaultSourceDirectory)
            results = checks.run()
        } catch {
            try? fs.unmount()
            throw error
        }
        try fs.unmount()
        let count = { (outcome: WindowCheck.Outcome) in WindowCheck.count(results, outcome) }
        return Report(
            path: image.path, medium: fs.mapping.medium, windowFaults: checks.mechanism, mapSync: checks.mapSync,
            windowGranularity: checks.coarse ? Geometry.runBlocks * pageSize : pageSize, checks: results, passed: count(.pass), failed: count(.fail), skipped: count(.skip))
    }
}

/// SIGINT and SIGTERM during `mmap-check`: the image this run formatted is removed (as at the end
/// of a run) and the process exits with 128 + the signal. The checks take seconds and leave
/// nothing to finish; the handler only unlinks a path prepared beforehand and exits.
enum ImageRemovalOnSignal {
    /// The path to unlink (a C string made before the handler is installed), or nil.
    nonisolated(unsafe) private static var path: UnsafeMutablePointer<CChar>?

    /// Installs the handler for `image`, unless it is a device or was there before the run.
    static func arm(_ image: ScratchImage) {
        guard image.removable else { return }
        Self.path = strdup(image.path)
        for number in [SIGINT, SIGTERM] {
            signal(number) { number in
                if let path = ImageRemovalOnSignal.path { unlink(path) }
                _exit(128 + number)
            }
        }
    }
}
