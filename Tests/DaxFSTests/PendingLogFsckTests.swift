@testable import DaxFS
import Foundation
import Testing
import TestSupport

/// A snapshot of the image at every persist point (the state a crash there would leave).
private final class Snapshots: PersistObserver, @unchecked Sendable {
    let path: String
    var images: [[UInt8]] = []
    init(path: String) { self.path = path }
    func didFlush(offset: Int, length: Int) {}
    func didBarrier() {
        if let bytes = FileManager.default.contents(atPath: self.path) { self.images.append([UInt8](bytes)) }
    }
}

/// fsck without --repair on an image a crash left with committed log transactions: it opens the
/// image read-only, so it checks it as the replay would leave it (in a private copy), and reports
/// the pending transactions, not the bitmap and map differences the replay will fix.
@Suite("fsck of an image with a committed, unreplayed log", .serialized, .timeLimit(.minutes(2)))
struct PendingLogFsckTests {
    @Test("at every persist point of writes, a truncate and an unlink: a read-only fsck finds nothing the replay fixes, and changes nothing")
    func readOnlyFsckReplaysPrivately() throws {
        try withTemporaryPath("pending-log") { path in
            _ = try FileSystem.format(path: path, size: 4 << 20)
            let snapshots = Snapshots(path: path)
            let fs = try FileSystem.mount(path: path, persistence: nil, persistObserver: snapshots)
            let file = try fs.create("f")
            try fs.write(file, offset: 0, bytes: [UInt8](repeating: 7, count: 20 * 4096))
            try fs.write(try fs.create("g"), offset: 0, bytes: [UInt8](repeating: 9, count: 3 * 4096))
            try fs.truncate(file, size: 4096)
            try fs.unlink("g")
            try fs.unmount()
            var pending = 0
            for (point, image) in snapshots.images.enumerated() {
                try withTemporaryPath("pending-log-point") { copy in
                    try Data(image).write(to: URL(fileURLWithPath: copy))
                    let report = try Fsck.run(path: copy)
                    #expect(FileManager.default.contents(atPath: copy) == Data(image), "point \(point): a read-only fsck wrote")
                    guard report.pendingLogTransactions > 0 else { return }
                    pending += 1
                    let others = report.result.problems.filter { $0.structure != "log" && $0.structure != "intents" }
                    #expect(others.isEmpty, "point \(point): \(report.pendingLogTransactions) pending; problems the replay fixes: \(others.prefix(3))")
                    if pending == 1 {
                        // The command says what the repair replayed, besides the problems it lists.
                        let repaired = try DaxlabBinary.run(["fsck", copy, "--repair"])
                        #expect(repaired.status == 0, "point \(point): \(repaired.standardError)")
                        #expect(repaired.standardOutput.contains("committed log transaction(s) replayed"), "\(repaired.standardOutput)")
                    } else {
                        #expect(try Fsck.run(path: copy, repair: true).afterRepair?.isClean == true, "point \(point)")
                    }
                }
            }
            #expect(pending > 0, "no persist point left a committed transaction unreplayed: nothing tested")
        }
    }
}
