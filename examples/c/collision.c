// xfstests' t_mmap_collision (generic/503) written against libdaxlab: two threads, one doing
// O_DIRECT reads from a file on a disk file system into the mapping of a 4-page daxlab file (the
// kernel's GUP faults the mapping's pages in and the block layer's DMA lands in them), the other
// punching, zero-ranging, truncating and reallocating, or collapsing that file, for a second
// each. Under punch and zero-range every read must return its full length: the pages fault back
// in. Under truncate and collapse a read may fail (EFAULT past the end of file), as there.
//
// Build: cc collision.c $(pkg-config --cflags --libs daxlab) -pthread -o collision
// Run:   ./collision [POLICY [IMAGE [DIRECTORY]]]
//        POLICY: none, fail, wait, sequester, deferred, lease-break, mainline (default wait);
//        IMAGE default /dev/shm/daxlab-collision.img; DIRECTORY holds the O_DIRECT source file
//        and must be on a disk file system (default /var/tmp; tmpfs has no real O_DIRECT).
#define _GNU_SOURCE
#include <daxlab.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGES 4
#define LENGTH (PAGES * 4096)

enum operation { PUNCH, ZERO_RANGE, TRUNCATE, COLLAPSE };
static const char *operation_names[] = {"punch-hole", "zero-range", "truncate", "collapse"};

struct run {
    daxlab_mount_t mount;
    daxlab_file_t file;
    int policy;
    int source;
    char *mapping;
    enum operation operation;
    atomic_int stop;
    atomic_long reads, short_reads, operations, refused;
};

static void *reader(void *argument) {
    struct run *run = argument;
    while (!atomic_load(&run->stop)) {
        ssize_t read = pread(run->source, run->mapping, LENGTH, 0);
        atomic_fetch_add(&run->reads, 1);
        if (read != LENGTH) atomic_fetch_add(&run->short_reads, 1);
    }
    return NULL;
}

static void *changer(void *argument) {
    struct run *run = argument;
    unsigned seed = 1;
    while (!atomic_load(&run->stop)) {
        int result = 0;
        switch (run->operation) {
        case PUNCH:
            result = daxlab_fallocate(run->mount, run->file, DAXLAB_FALLOC_PUNCH_HOLE, 0, LENGTH, run->policy);
            break;
        case ZERO_RANGE:
            result = daxlab_fallocate(run->mount, run->file, DAXLAB_FALLOC_ZERO_RANGE, 0, LENGTH, run->policy);
            break;
        case TRUNCATE:
            result = daxlab_truncate(run->mount, run->file, 0, run->policy);
            if (result == 0) result = daxlab_fallocate(run->mount, run->file, DAXLAB_FALLOC_ALLOCATE, 0, LENGTH, run->policy);
            break;
        case COLLAPSE:
            result = daxlab_fallocate(run->mount, run->file, DAXLAB_FALLOC_ALLOCATE, 0, LENGTH, run->policy);
            if (result == 0)
                result = daxlab_fallocate(run->mount, run->file, DAXLAB_FALLOC_COLLAPSE_RANGE, 0, 4096, run->policy);
            if (result == 0) result = daxlab_fallocate(run->mount, run->file, DAXLAB_FALLOC_ALLOCATE, 0, LENGTH, run->policy);
            break;
        }
        atomic_fetch_add(result == 0 ? &run->operations : &run->refused, 1);
        usleep((unsigned)rand_r(&seed) % 1000);
    }
    return NULL;
}

static int policy_named(const char *name) {
    const char *names[] = {"none", "fail", "wait", "sequester", "deferred", "lease-break", "mainline"};
    for (int i = 0; i < 7; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}

int main(int argc, char **argv) {
    const char *policy_name = argc > 1 ? argv[1] : "wait";
    const char *image = argc > 2 ? argv[2] : "/dev/shm/daxlab-collision.img";
    const char *directory = argc > 3 ? argv[3] : "/var/tmp";
    int policy = policy_named(policy_name);
    if (policy < 0) {
        fprintf(stderr, "collision: no policy '%s' (none, fail, wait, sequester, deferred, lease-break, mainline)\n",
                policy_name);
        return 2;
    }
    char source_path[4096];
    snprintf(source_path, sizeof(source_path), "%s/.daxlab-collision-%d", directory, getpid());
    int source = open(source_path, O_RDWR | O_CREAT | O_EXCL | O_DIRECT, 0600);
    if (source < 0) {
        fprintf(stderr, "collision: %s: %s (an O_DIRECT file on a disk file system is needed)\n", source_path,
                strerror(errno));
        return 2;
    }
    unlink(source_path);
    void *block;
    if (posix_memalign(&block, 4096, LENGTH) || pwrite(source, memset(block, 0xA5, LENGTH), LENGTH, 0) != LENGTH) {
        fprintf(stderr, "collision: cannot write the O_DIRECT source: %s\n", strerror(errno));
        return 2;
    }
    free(block);

    daxlab_mount_t mount;
    daxlab_file_t file;
    void *mapping;
    size_t length;
    struct daxlab_times times = {.wait_timeout_ms = 0, .lease_break_time_ms = 10};
    if (daxlab_format(image, 32u << 20, DAXLAB_FORCE) < 0 || daxlab_mount(image, 0, &mount) < 0
        || daxlab_attach(mount, policy, &times) < 0 || daxlab_create(mount, "dax-file", &file) < 0
        || daxlab_fallocate(mount, file, DAXLAB_FALLOC_ALLOCATE, 0, LENGTH, DAXLAB_POLICY_DEFAULT) < 0
        || daxlab_map(mount, file, &mapping, &length) < 0) {
        fprintf(stderr, "collision: %s\n", daxlab_last_error());
        return 1;
    }
    int failed = 0;
    for (enum operation operation = PUNCH; operation <= COLLAPSE; operation++) {
        struct run run = {.mount = mount, .file = file, .policy = DAXLAB_POLICY_DEFAULT, .source = source,
                          .mapping = mapping, .operation = operation};
        pthread_t threads[2];
        pthread_create(&threads[0], NULL, reader, &run);
        pthread_create(&threads[1], NULL, changer, &run);
        sleep(1);
        atomic_store(&run.stop, 1);
        pthread_join(threads[0], NULL);
        pthread_join(threads[1], NULL);
        int whole = operation == PUNCH || operation == ZERO_RANGE;
        int ok = atomic_load(&run.reads) > 0 && atomic_load(&run.operations) + atomic_load(&run.refused) > 0
                 && (!whole || atomic_load(&run.short_reads) == 0);
        failed |= !ok;
        printf("%-5s %-10s policy %-11s: %ld O_DIRECT reads into the mapping (%ld short), %ld operations (%ld refused)\n",
               ok ? "PASS" : "FAIL", operation_names[operation], policy_name, (long)atomic_load(&run.reads),
               (long)atomic_load(&run.short_reads), (long)atomic_load(&run.operations), (long)atomic_load(&run.refused));
        // Each subtest starts from a whole 4-page file.
        daxlab_fallocate(mount, file, DAXLAB_FALLOC_ALLOCATE, 0, LENGTH, DAXLAB_POLICY_DEFAULT);
    }
    close(source);
    if (daxlab_unmount(mount) < 0) {
        fprintf(stderr, "collision: unmount: %s\n", daxlab_last_error());
        return 1;
    }
    unlink(image);
    return failed;
}
