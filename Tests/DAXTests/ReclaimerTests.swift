import DAX
import DaxFS
import Foundation
import Testing
import TestSupport

/// The last unpin of a block that left its file while pinned only queues it; the reclaimer
/// thread releases it. So a device's unpin never takes a file-system lock, whatever locks other
/// threads hold.
@Suite("The reclaimer", .timeLimit(.minutes(1)))
struct ReclaimerTests {
    @Test("a device's last unpin of a sequestered block returns while lost+found's lock is held",
          arguments: [TruncatePolicy.sequester, .deferred])
    func unpinTakesNoFileSystemLock(policy: TruncatePolicy) throws {
        let lab = try Lab(policy: policy)
        let handle = HandleSlot(try lab.space.pin(3..<5, write: true))
        defer { handle.unpin() }
        try lab.fs.truncate(lab.file, size: 4096)
        #expect(lab.fs.lostFoundBlocks == (policy == .sequester ? 2 : 0))
        // Hold the file's lock and lost+found's (its invalidate lock) exclusively, in the lock
        // order, while a "device" thread unpins: a fault takes the first, releasing the second.
        let lostFound = lab.fs.invalidateLock(for: FileID(inode: FileSystem.lostFoundInode, generation: 0))
        let fileLock = lab.fs.invalidateLock(for: lab.file)
        fileLock.lockExclusive()
        lostFound.lockExclusive()
        let unpinned = lab.background { handle.unpin() }
        // (A hang guard: an unpin that took either lock would not return until they are let go.)
        let returned = unpinned.wait(seconds: 30)
        lostFound.unlock()
        fileLock.unlock()
        #expect(returned, "the unpin waited for a file-system lock")
        lab.dax.waitForReclaims()
        #expect(lab.fs.lostFoundBlocks == 0)
        #expect(lab.dax.statistics.limboNow == 0)
        try lab.fs.unmount()
        #expect(try Fsck.run(path: lab.path).isClean)
    }
}
