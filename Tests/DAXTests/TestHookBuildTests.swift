import Foundation
import Testing

/// The tests that make a race happen on purpose need the DAX layer's test hooks, which only a
/// build asked for with DAXLAB_TEST_HOOKS=1 has; elsewhere they are skipped with a line saying so.
/// A run that asked for them (`make test` sets the variable for its builds and its test runs)
/// must have them, or those tests would be skipped where they are meant to run.
@Suite("Test hooks")
struct TestHookBuildTests {
    @Test("a test run that asks for the DAX test hooks runs on a build that has them")
    func hooksWhereAsked() {
        let asked = ProcessInfo.processInfo.environment["DAXLAB_TEST_HOOKS"] == "1"
        #if DAXLAB_TEST_HOOKS
        let built = true
        #else
        let built = false
        #endif
        #expect(!asked || built, "DAXLAB_TEST_HOOKS=1 is set, but the build under test was made without it")
    }
}
