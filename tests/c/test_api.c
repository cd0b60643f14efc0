// libdaxlab's C tests, built against the installed library through pkg-config alone (make
// test-c): each function's success and its documented errors, misuse from C (stale handles, a
// double unpin, NULL arguments, ranges out of bounds), the lease-break callback's order (the
// callback before the revocation; the truncate completes after the release) and concurrent use
// from several threads.
//
// Usage: test_api IMAGE-PATH (a scratch file on tmpfs; created, formatted and removed).
#define _GNU_SOURCE
#include <daxlab.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int failures;
static const char *image;

#define CHECK(condition)                                                                              \
    do {                                                                                              \
        if (!(condition)) {                                                                           \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #condition,     \
                    daxlab_last_error());                                                             \
            failures++;                                                                               \
        }                                                                                             \
    } while (0)

static daxlab_mount_t fresh_mount(int policy, int64_t lease_break_ms) {
    CHECK(daxlab_format(image, 32u << 20, DAXLAB_FORCE) == 0);
    daxlab_mount_t mount = 0;
    CHECK(daxlab_mount(image, 0, &mount) == 0);
    struct daxlab_times times = {.wait_timeout_ms = 0, .lease_break_time_ms = lease_break_ms};
    CHECK(daxlab_attach(mount, policy, &times) == 0);
    return mount;
}

static void test_errors_and_version(void) {
    CHECK(strcmp(daxlab_version(), "0.1.0") == 0);
    CHECK(strncmp(daxlab_strerror(-EBUSY), "EBUSY: ", 7) == 0);
    CHECK(strncmp(daxlab_strerror(-ENOENT), "ENOENT: ", 8) == 0);
    CHECK(daxlab_mount("/nonexistent/daxlab.img", 0, &(daxlab_mount_t){0}) < 0);
    CHECK(strlen(daxlab_last_error()) > 0);
    CHECK(daxlab_format(NULL, 0, 0) == -EINVAL);
    CHECK(daxlab_format(image, 32u << 20, DAXLAB_FORCE | 0x100) == -EINVAL);  // unknown flag bits
    CHECK(daxlab_format("/dev/shm/daxlab-\xff.img", 32u << 20, 0) == -EINVAL);  // a path that is not UTF-8
    CHECK(strlen(daxlab_strerror(-2147483647 - 1)) > 0);
}

static void test_files(void) {
    daxlab_mount_t second = 0;
    daxlab_mount_t mount = fresh_mount(DAXLAB_POLICY_WAIT, 50);
    daxlab_file_t file = 0, again = 0;
    CHECK(daxlab_create(mount, "data", &file) == 0);
    CHECK(daxlab_create(mount, "data", &again) == -EEXIST);
    CHECK(daxlab_open(mount, "data", &again) == 0 && again == file);
    CHECK(daxlab_open(mount, "missing", &again) == -ENOENT);

    char block[8192];
    memset(block, 0x5A, sizeof(block));
    CHECK(daxlab_write(mount, file, block, sizeof(block), 4096) == (int64_t)sizeof(block));
    struct daxlab_stat stat;
    CHECK(daxlab_stat(mount, file, &stat) == 0 && stat.size == 12288 && stat.blocks == 2);
    char back[12288];
    CHECK(daxlab_read(mount, file, back, sizeof(back), 0) == 12288);
    CHECK(back[0] == 0 && back[4095] == 0 && back[4096] == 0x5A && back[12287] == 0x5A);
    CHECK(daxlab_read(mount, file, back, sizeof(back), 1u << 20) == 0);  // past the end

    CHECK(daxlab_fallocate(mount, file, DAXLAB_FALLOC_PUNCH_HOLE, 4096, 4096, DAXLAB_POLICY_DEFAULT) == 0);
    CHECK(daxlab_stat(mount, file, &stat) == 0 && stat.size == 12288 && stat.blocks == 1);
    CHECK(daxlab_read(mount, file, back, 4096, 4096) == 4096 && back[0] == 0 && back[4095] == 0);
    CHECK(daxlab_fallocate(mount, file, DAXLAB_FALLOC_KEEP_SIZE, 0, 4096, DAXLAB_POLICY_DEFAULT) == 0);
    CHECK(daxlab_stat(mount, file, &stat) == 0 && stat.size == 12288 && stat.blocks == 2);
    CHECK(daxlab_fallocate(mount, file, DAXLAB_FALLOC_COLLAPSE_RANGE, 0, 4096, DAXLAB_POLICY_DEFAULT) == 0);
    CHECK(daxlab_stat(mount, file, &stat) == 0 && stat.size == 8192);
    CHECK(daxlab_fallocate(mount, file, DAXLAB_FALLOC_INSERT_RANGE, 0, 4096, DAXLAB_POLICY_DEFAULT) == 0);
    CHECK(daxlab_stat(mount, file, &stat) == 0 && stat.size == 12288);
    CHECK(daxlab_fallocate(mount, file, DAXLAB_FALLOC_ZERO_RANGE, 0, 16384, DAXLAB_POLICY_DEFAULT) == 0);
    CHECK(daxlab_stat(mount, file, &stat) == 0 && stat.size == 16384);
    CHECK(daxlab_fallocate(mount, file, 99, 0, 4096, DAXLAB_POLICY_DEFAULT) == -EINVAL);
    CHECK(daxlab_fallocate(mount, file, DAXLAB_FALLOC_PUNCH_HOLE, 0, 0, DAXLAB_POLICY_DEFAULT) == -EINVAL);  // no length
    CHECK(daxlab_read(mount, file, (void *)16, 16, 0) == -EFAULT);  // a buffer that cannot be written
    CHECK(daxlab_truncate(mount, file, 0, 42) == -EINVAL);  // not a policy
    CHECK(daxlab_truncate(mount, file, 4096, DAXLAB_POLICY_NONE) == 0);
    CHECK(daxlab_stat(mount, file, &stat) == 0 && stat.size == 4096);

    // Names are bytes: two names that are not UTF-8 are two files.
    daxlab_file_t ff = 0, fe = 0;
    CHECK(daxlab_create(mount, "\xff", &ff) == 0 && daxlab_create(mount, "\xfe", &fe) == 0 && ff != fe);
    CHECK(daxlab_open(mount, "\xef\xbf\xbd", &again) == -ENOENT);
    CHECK(daxlab_rename(mount, "data", "renamed") == 0);
    CHECK(daxlab_open(mount, "data", &again) == -ENOENT);
    CHECK(daxlab_open(mount, "renamed", &again) == 0 && again == file);
    CHECK(daxlab_unlink(mount, "renamed", DAXLAB_POLICY_DEFAULT) == 0);
    CHECK(daxlab_stat(mount, file, &stat) == -ENOENT);  // a removed file's handle
    CHECK(daxlab_read(mount, file, back, 1, 0) == -ENOENT);

    CHECK(daxlab_unmount(mount) == 0);
    CHECK(daxlab_unmount(mount) == -EBADF);                        // twice
    CHECK(daxlab_create(mount, "late", &file) == -EBADF);          // a stale mount handle
    CHECK(daxlab_create(987654321, "never", &file) == -EBADF);     // one that never existed

    // A file handle of one mount names no file of another (whose first file has the same inode).
    char other[4096];
    snprintf(other, sizeof(other), "%s.other", image);
    daxlab_mount_t mine = 0, theirs = 0;
    daxlab_file_t my_file = 0, their_file = 0;
    CHECK(daxlab_format(image, 32u << 20, DAXLAB_FORCE) == 0 && daxlab_format(other, 32u << 20, DAXLAB_FORCE) == 0);
    CHECK(daxlab_mount(image, 0, &mine) == 0 && daxlab_mount(other, 0, &theirs) == 0);
    CHECK(daxlab_create(mine, "first", &my_file) == 0 && daxlab_create(theirs, "first", &their_file) == 0);
    CHECK(daxlab_write(theirs, my_file, "CLOBBER", 7, 0) == -ENOENT);
    CHECK(daxlab_unmount(mine) == 0 && daxlab_unmount(theirs) == 0);
    unlink(other);

    // Read-only: writes are refused.
    CHECK(daxlab_mount(image, DAXLAB_READ_ONLY, &mount) == 0);
    CHECK(daxlab_mount(image, 0x40, &second) == -EINVAL);  // unknown flag bits
    CHECK(daxlab_create(mount, "nope", &file) == -EROFS);
    CHECK(daxlab_mount(image, 0, &second) == -EBUSY);  // the image is mounted already
    CHECK(daxlab_unmount(mount) == 0);
}

static void test_map_and_pins(void) {
    daxlab_mount_t mount = fresh_mount(DAXLAB_POLICY_FAIL, 50);
    daxlab_file_t file = 0;
    CHECK(daxlab_create(mount, "mapped", &file) == 0);
    CHECK(daxlab_truncate(mount, file, 4 * 4096, DAXLAB_POLICY_DEFAULT) == 0);
    void *address = NULL;
    size_t length = 0;
    CHECK(daxlab_map(mount, file, &address, &length) == 0 && address != NULL && length >= 4 * 4096);
    ((char *)address)[2 * 4096] = 0x11;  // a real fault: the page is allocated
    char byte = 0;
    CHECK(daxlab_read(mount, file, &byte, 1, 2 * 4096) == 1 && byte == 0x11);

    daxlab_pin_t pin = 0;
    CHECK(daxlab_pin(mount, file, 0, 4, DAXLAB_PIN_WRITE | DAXLAB_PIN_LONG_TERM, NULL, NULL, &pin) == 0);
    CHECK(daxlab_pin_block(pin, 0) > 0 && daxlab_pin_block(pin, 4) == -EINVAL);
    char tag[4096];
    memset(tag, 0x77, sizeof(tag));
    CHECK(daxlab_pin_write(pin, 1, tag, sizeof(tag), 0) == 1);
    CHECK(((volatile char *)address)[4096] == 0x77);  // the device's write, seen through the mapping
    CHECK(daxlab_pin_write(pin, 1, tag, 4096, 1) == -EINVAL);  // past the page
    CHECK(daxlab_pin_write(pin, 1, (const void *)16, 16, 0) == -EFAULT);  // a source that cannot be read
    CHECK(daxlab_pin_write(pin, 9, tag, 1, 0) == -EINVAL);     // past the pin
    CHECK(daxlab_pin_revoked(pin) == 0);
    // fail refuses a truncate over a pinned block, and changes nothing.
    CHECK(daxlab_truncate(mount, file, 0, DAXLAB_POLICY_DEFAULT) == -EBUSY);
    struct daxlab_statistics statistics;
    CHECK(daxlab_statistics(mount, &statistics) == 0 && statistics.refused_busy == 1);
    CHECK(daxlab_unmount(mount) == -EBUSY);  // a pin is held
    CHECK(daxlab_unpin(pin) == 0);
    CHECK(daxlab_unpin(pin) == -EBADF);                       // double unpin
    CHECK(daxlab_pin_write(pin, 0, tag, 1, 0) == -EBADF);     // a stale pin handle
    CHECK(daxlab_truncate(mount, file, 0, DAXLAB_POLICY_DEFAULT) == 0);
    CHECK(daxlab_pin(mount, file, 0, 1, DAXLAB_PIN_WRITE, NULL, NULL, &pin) == -EINVAL);  // past the end
    CHECK(daxlab_pin(mount, file, 0, 0, 0, NULL, NULL, &pin) == -EINVAL);
    CHECK(daxlab_truncate(mount, file, 4096, DAXLAB_POLICY_DEFAULT) == 0);
    CHECK(daxlab_pin(mount, file, 0, 1, 0x10, NULL, NULL, &pin) == -EINVAL);  // unknown flag bits
    CHECK(daxlab_pin(mount, file, 0, 1, 0, NULL, NULL, &pin) == 0);            // a read pin
    CHECK(daxlab_pin_write(pin, 0, tag, 1, 0) == -EPERM);                      // is not written through
    CHECK(daxlab_unpin(pin) == 0);
    CHECK(daxlab_unmount(mount) == 0);

    // Without daxlab_attach there is no mapping.
    CHECK(daxlab_format(image, 32u << 20, DAXLAB_FORCE) == 0);
    CHECK(daxlab_mount(image, 0, &mount) == 0);
    CHECK(daxlab_create(mount, "plain", &file) == 0);
    CHECK(daxlab_map(mount, file, &address, &length) == -EINVAL);
    CHECK(daxlab_attach(mount, DAXLAB_POLICY_DEFAULT, NULL) == -EINVAL);
    struct daxlab_times forever = {.wait_timeout_ms = INT64_MAX, .lease_break_time_ms = 1000};
    CHECK(daxlab_attach(mount, DAXLAB_POLICY_WAIT, &forever) == -EINVAL);  // past 100 days
    CHECK(daxlab_attach(mount, DAXLAB_POLICY_MAINLINE, NULL) == 0);
    CHECK(daxlab_attach(mount, DAXLAB_POLICY_MAINLINE, NULL) == -EBUSY);  // once
    CHECK(daxlab_truncate(mount, file, 4096, DAXLAB_POLICY_DEFAULT) == 0);
    CHECK(daxlab_pin(mount, file, 0, 1, DAXLAB_PIN_WRITE | DAXLAB_PIN_LONG_TERM, NULL, NULL, &pin) == -EOPNOTSUPP);
    CHECK(daxlab_statistics(mount, &statistics) == 0 && statistics.long_term_refused == 1);
    CHECK(daxlab_unmount(mount) == 0);
}

// The lease-break callback's order: it runs (on a thread of daxlab's) while the truncate
// waits; the program unpins from it; the truncate completes only after that release.
struct lease_story {
    atomic_int called;
    atomic_int released;
    atomic_int truncated;
    atomic_int truncated_before_release;
    daxlab_pin_t pin;
    pthread_t truncating_thread;
    atomic_int on_truncating_thread;
};

static void on_break(void *context, daxlab_pin_t pin, uint64_t first_page, uint64_t pages) {
    struct lease_story *story = context;
    if (pthread_equal(pthread_self(), story->truncating_thread)) atomic_store(&story->on_truncating_thread, 1);
    CHECK(pin == story->pin && first_page == 1 && pages == 2);
    CHECK(daxlab_pin_revoked(pin) == 0);  // told before any revocation
    if (atomic_load(&story->truncated)) atomic_store(&story->truncated_before_release, 1);
    atomic_store(&story->called, 1);
    CHECK(daxlab_unpin(pin) == 0);  // the application releases its pin from the callback
    atomic_store(&story->released, 1);
}

// A callback that only releases its pin.
static void release_only(void *context, daxlab_pin_t pin, uint64_t first_page, uint64_t pages) {
    struct lease_story *story = context;
    (void)first_page;
    (void)pages;
    CHECK(daxlab_unpin(pin) == 0);
    atomic_store(&story->released, 1);
}

struct truncation {
    daxlab_mount_t mount;
    daxlab_file_t file;
    struct lease_story *story;
    int result;
};

static void *truncate_file(void *argument) {
    struct truncation *work = argument;
    work->story->truncating_thread = pthread_self();
    work->result = daxlab_truncate(work->mount, work->file, 4096, DAXLAB_POLICY_DEFAULT);
    atomic_store(&work->story->truncated, 1);
    return NULL;
}

static void test_lease_break(void) {
    // An hour's break time: the truncate can only finish because the callback released the pin.
    daxlab_mount_t mount = fresh_mount(DAXLAB_POLICY_LEASE_BREAK, 3600 * 1000);
    daxlab_file_t file = 0;
    CHECK(daxlab_create(mount, "leased", &file) == 0);
    CHECK(daxlab_truncate(mount, file, 4 * 4096, DAXLAB_POLICY_DEFAULT) == 0);
    struct lease_story story = {0};
    CHECK(daxlab_pin(mount, file, 1, 2, DAXLAB_PIN_WRITE | DAXLAB_PIN_LONG_TERM, on_break, &story, &story.pin) == 0);
    struct truncation work = {.mount = mount, .file = file, .story = &story};
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, truncate_file, &work) == 0);
    for (int i = 0; i < 60000 && !atomic_load(&story.truncated); i++) usleep(1000);  // at most 60 s
    CHECK(atomic_load(&story.truncated));
    pthread_join(thread, NULL);
    CHECK(work.result == 0);
    // (The truncate goes on at the release itself, which may be before daxlab_unpin returns in
    // the callback: wait for that return before unmounting.)
    for (int i = 0; i < 10000 && !atomic_load(&story.released); i++) usleep(1000);
    CHECK(atomic_load(&story.called) && atomic_load(&story.released));
    CHECK(!atomic_load(&story.truncated_before_release));
    CHECK(!atomic_load(&story.on_truncating_thread));
    struct daxlab_statistics statistics;
    CHECK(daxlab_statistics(mount, &statistics) == 0 && statistics.lease_breaks == 1 && statistics.revocations == 0);
    CHECK(daxlab_unmount(mount) == 0);

    // One truncate over two pins, each released from its own callback: both are told at once,
    // and the truncate completes at the second release, long before an hour's break time.
    mount = fresh_mount(DAXLAB_POLICY_LEASE_BREAK, 3600 * 1000);
    CHECK(daxlab_create(mount, "two", &file) == 0);
    CHECK(daxlab_truncate(mount, file, 8 * 4096, DAXLAB_POLICY_DEFAULT) == 0);
    struct lease_story first = {0}, second = {0};
    CHECK(daxlab_pin(mount, file, 0, 4, DAXLAB_PIN_WRITE | DAXLAB_PIN_LONG_TERM, release_only, &first, &first.pin) == 0);
    CHECK(daxlab_pin(mount, file, 4, 4, DAXLAB_PIN_WRITE | DAXLAB_PIN_LONG_TERM, release_only, &second, &second.pin) == 0);
    struct truncation both = {.mount = mount, .file = file, .story = &first};
    atomic_store(&first.truncated, 0);
    CHECK(pthread_create(&thread, NULL, truncate_file, &both) == 0);
    for (int i = 0; i < 60000 && !atomic_load(&first.truncated); i++) usleep(1000);
    CHECK(atomic_load(&first.truncated));
    pthread_join(thread, NULL);
    CHECK(both.result == 0);
    CHECK(daxlab_statistics(mount, &statistics) == 0 && statistics.lease_breaks == 2 && statistics.revocations == 0);
    CHECK(statistics.callbacks_dropped == 0);
    // At once: the unmount waits for the callbacks' unpins, which the truncate may outrun.
    CHECK(daxlab_unmount(mount) == 0);
    CHECK(atomic_load(&first.released) && atomic_load(&second.released));

    // A holder that does not answer is revoked at the break time: its writes are refused.
    mount = fresh_mount(DAXLAB_POLICY_LEASE_BREAK, 20);
    CHECK(daxlab_create(mount, "deaf", &file) == 0);
    CHECK(daxlab_truncate(mount, file, 2 * 4096, DAXLAB_POLICY_DEFAULT) == 0);
    daxlab_pin_t pin = 0;
    CHECK(daxlab_pin(mount, file, 0, 2, DAXLAB_PIN_WRITE | DAXLAB_PIN_LONG_TERM, NULL, NULL, &pin) == 0);
    char tag[16] = {1};
    CHECK(daxlab_pin_write(pin, 0, tag, sizeof(tag), 0) == 1);
    CHECK(daxlab_truncate(mount, file, 0, DAXLAB_POLICY_DEFAULT) == 0);
    CHECK(daxlab_pin_revoked(pin) == 1);
    CHECK(daxlab_pin_write(pin, 0, tag, sizeof(tag), 0) == 0);  // refused
    CHECK(daxlab_statistics(mount, &statistics) == 0 && statistics.revocations == 1);
    CHECK(daxlab_unpin(pin) == 0);
    CHECK(daxlab_unmount(mount) == 0);
}

// Several C threads on one mount at once: each its own file, pins and writes.
struct worker {
    daxlab_mount_t mount;
    int index;
    int errors;
};

static void *work(void *argument) {
    struct worker *worker = argument;
    char name[32];
    snprintf(name, sizeof(name), "thread-%d", worker->index);
    daxlab_file_t file = 0;
    if (daxlab_create(worker->mount, name, &file) != 0) { worker->errors++; return NULL; }
    char data[4096];
    memset(data, worker->index, sizeof(data));
    for (int round = 0; round < 200; round++) {
        if (daxlab_write(worker->mount, file, data, sizeof(data), (uint64_t)(round % 8) * 4096) != 4096) worker->errors++;
        daxlab_pin_t pin = 0;
        if (daxlab_pin(worker->mount, file, 0, 1, DAXLAB_PIN_WRITE, NULL, NULL, &pin) != 0) { worker->errors++; continue; }
        if (daxlab_pin_write(pin, 0, data, 64, 0) != 1) worker->errors++;
        if (daxlab_unpin(pin) != 0) worker->errors++;
        if (round % 50 == 49 && daxlab_truncate(worker->mount, file, 4096, DAXLAB_POLICY_DEFAULT) != 0) worker->errors++;
    }
    return NULL;
}

static void test_threads(void) {
    daxlab_mount_t mount = fresh_mount(DAXLAB_POLICY_WAIT, 50);
    enum { THREADS = 4 };
    pthread_t threads[THREADS];
    struct worker workers[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (struct worker){.mount = mount, .index = i + 1};
        CHECK(pthread_create(&threads[i], NULL, work, &workers[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        CHECK(workers[i].errors == 0);
    }
    CHECK(daxlab_unmount(mount) == 0);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s IMAGE-PATH\n", argv[0]);
        return 2;
    }
    image = argv[1];
    test_errors_and_version();
    test_files();
    test_map_and_pins();
    test_lease_break();
    test_threads();
    unlink(image);
    if (failures) {
        fprintf(stderr, "test_api: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_api: every check passed\n");
    return 0;
}
