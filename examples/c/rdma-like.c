// An RDMA-like application on a daxlab file, as Ira Weiny's layout leases would have it: it maps
// a file, pins 8 pages long-term with a lease-break callback, and a "device" thread writes into
// the pinned pages; another thread truncates the file under lease-break. The callback tells the
// application, which stops its device and releases the pin; the truncate then completes, and a
// file written afterwards (which takes the freed blocks) is intact: nothing stale landed.
//
// Build: cc rdma-like.c $(pkg-config --cflags --libs daxlab) -pthread -o rdma-like
// Run:   ./rdma-like [IMAGE]     (default /dev/shm/daxlab-rdma-like.img; created and removed)
#define _GNU_SOURCE
#include <daxlab.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGES 8

struct application {
    daxlab_pin_t pin;
    atomic_int stop_device;    // set by the callback: the device must stop before the release
    atomic_int device_stopped;
    atomic_long writes;
    atomic_int refused;
};

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void *device(void *argument) {
    struct application *app = argument;
    char block[4096];
    memset(block, 0xD1, sizeof(block));
    for (uint64_t i = 0; !atomic_load(&app->stop_device); i++) {
        int landed = daxlab_pin_write(app->pin, i % PAGES, block, sizeof(block), 0);
        if (landed == 1) atomic_fetch_add(&app->writes, 1);
        else atomic_fetch_add(&app->refused, 1);
    }
    atomic_store(&app->device_stopped, 1);
    return NULL;
}

// Called on a daxlab thread when the truncate breaks the lease: stop the device, then release.
static void lease_broken(void *context, daxlab_pin_t pin, uint64_t first_page, uint64_t pages) {
    struct application *app = context;
    printf("lease broken: pages %llu-%llu must be given back\n", (unsigned long long)first_page,
           (unsigned long long)(first_page + pages - 1));
    atomic_store(&app->stop_device, 1);
    while (!atomic_load(&app->device_stopped)) usleep(100);
    printf("the application stopped its device and releases its pin\n");
    fflush(stdout);
    if (daxlab_unpin(pin) < 0) printf("rdma-like: the unpin failed: %s\n", daxlab_last_error());
}

struct truncation {
    daxlab_mount_t mount;
    daxlab_file_t file;
    int result;
    double milliseconds;
};

static void *truncate_file(void *argument) {
    struct truncation *work = argument;
    double started = now_ms();
    work->result = daxlab_truncate(work->mount, work->file, 0, DAXLAB_POLICY_LEASE_BREAK);
    work->milliseconds = now_ms() - started;
    return NULL;
}

#define TRY(call)                                                                      \
    do {                                                                               \
        if ((call) < 0) {                                                              \
            fprintf(stderr, "rdma-like: %s: %s\n", #call, daxlab_last_error());         \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

int main(int argc, char **argv) {
    const char *image = argc > 1 ? argv[1] : "/dev/shm/daxlab-rdma-like.img";
    daxlab_mount_t mount;
    daxlab_file_t file, after;
    TRY(daxlab_format(image, 64u << 20, DAXLAB_FORCE));
    TRY(daxlab_mount(image, 0, &mount));
    // A 10 s break time: the truncate goes on as soon as the application releases its pin.
    struct daxlab_times times = {.wait_timeout_ms = 0, .lease_break_time_ms = 10000};
    TRY(daxlab_attach(mount, DAXLAB_POLICY_LEASE_BREAK, &times));
    TRY(daxlab_create(mount, "buffer", &file));
    TRY(daxlab_truncate(mount, file, PAGES * 4096, DAXLAB_POLICY_DEFAULT));
    void *mapping;
    size_t length;
    TRY(daxlab_map(mount, file, &mapping, &length));

    struct application app = {0};
    TRY(daxlab_pin(mount, file, 0, PAGES, DAXLAB_PIN_WRITE | DAXLAB_PIN_LONG_TERM, lease_broken, &app, &app.pin));
    pthread_t device_thread, truncating_thread;
    pthread_create(&device_thread, NULL, device, &app);
    while (atomic_load(&app.writes) < 1000) usleep(100);
    printf("the device wrote %ld pages through its pin; the first byte of the mapping is 0x%02x\n",
           (long)atomic_load(&app.writes), ((unsigned char *)mapping)[0]);

    struct truncation work = {.mount = mount, .file = file};
    pthread_create(&truncating_thread, NULL, truncate_file, &work);
    pthread_join(truncating_thread, NULL);
    pthread_join(device_thread, NULL);
    if (work.result < 0) {
        fprintf(stderr, "rdma-like: the truncate failed: %s\n", daxlab_last_error());
        return 1;
    }
    printf("the truncate completed in %.1f ms, after the release (break time %lld ms)\n", work.milliseconds,
           (long long)times.lease_break_time_ms);

    // Another file takes the freed blocks; the device is gone, so nothing may change it.
    TRY(daxlab_create(mount, "after", &after));
    char expected[PAGES * 4096], found[PAGES * 4096];
    memset(expected, 0x42, sizeof(expected));
    TRY(daxlab_write(mount, after, expected, sizeof(expected), 0));
    usleep(10000);
    TRY(daxlab_read(mount, after, found, sizeof(found), 0));
    struct daxlab_statistics statistics;
    TRY(daxlab_statistics(mount, &statistics));
    int intact = memcmp(expected, found, sizeof(found)) == 0;
    printf("lease breaks %llu, revocations %llu, device writes refused %d; the next file's blocks are %s\n",
           (unsigned long long)statistics.lease_breaks, (unsigned long long)statistics.revocations,
           atomic_load(&app.refused), intact ? "intact: nothing stale" : "CORRUPTED");
    TRY(daxlab_unmount(mount));
    unlink(image);
    return intact && statistics.lease_breaks == 1 && statistics.revocations == 0 ? 0 : 1;
}
