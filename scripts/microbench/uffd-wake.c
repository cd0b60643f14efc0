// What the service's own work costs a window's 4 KiB fault, beyond itself: floor.uffd_mmap's
// round trip (a handler thread reads the userfaultfd fault, mmaps a tmpfs page over it and wakes
// the faulting thread) with the handler spinning for DELAY ns before its wake-up, as long as
// daxlab's fault path takes. On a VM whose idle vCPUs halt at once (no guest halt polling),
// every microsecond the handler takes lets the faulting vCPU go further into its halt, and its
// wake-up costs more. Delays alternate in rounds (2048 first stores each); medians printed.
//
//   gcc -O2 -o uffd-wake uffd-wake.c -lpthread && ./uffd-wake
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "microbench.h"

#define PAGES 2048
#define ROUNDS 9
static const long delays[] = {0, 1000, 2000, 4000, 6000, 8000};
#define DELAYS (sizeof(delays) / sizeof(delays[0]))

struct handler {
    int uffd, fd;
    char *window;
    long delay;
    volatile int stop;
};

static void *serve(void *argument) {
    struct handler *h = argument;
    struct uffd_msg message;
    while (!h->stop) {
        // Spins on a non-blocking read, as daxlab's service does while faults keep coming.
        if (read(h->uffd, &message, sizeof(message)) != sizeof(message)) continue;
        if (message.event != UFFD_EVENT_PAGEFAULT) continue;
        char *page = (char *)(uintptr_t)(message.arg.pagefault.address & ~4095ull);
        if (mmap(page, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_POPULATE, h->fd, page - h->window)
            == MAP_FAILED) {
            perror("mmap");
            exit(1);
        }
        for (uint64_t until = now() + h->delay; now() < until;) __builtin_ia32_pause();
        struct uffdio_range range = {.start = (uintptr_t)page, .len = 4096};
        ioctl(h->uffd, UFFDIO_WAKE, &range);
    }
    return NULL;
}

/// ns per first store to each of PAGES pages of a fresh registered window.
static double run(int fd, long delay) {
    size_t length = PAGES * 4096ul;
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)length);
    struct handler h = {.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK), .fd = fd, .delay = delay};
    struct uffdio_api api = {.api = UFFD_API};
    if (h.uffd < 0 || ioctl(h.uffd, UFFDIO_API, &api) != 0) {
        perror("userfaultfd");
        exit(1);
    }
    h.window = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    madvise(h.window, length, MADV_NOHUGEPAGE);
    struct uffdio_register registration = {
        .range = {.start = (uintptr_t)h.window, .len = length}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(h.uffd, UFFDIO_REGISTER, &registration) != 0) {
        perror("UFFDIO_REGISTER");
        exit(1);
    }
    pthread_t thread;
    pthread_create(&thread, NULL, serve, &h);
    uint64_t start = now();
    for (size_t page = 0; page < PAGES; page++) ((volatile char *)h.window)[page * 4096] = 1;
    double result = (double)(now() - start) / PAGES;
    h.stop = 1;
    pthread_join(thread, NULL);
    munmap(h.window, length);
    close(h.uffd);
    return result;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(void) {
    char path[] = "/dev/shm/uffd-wake-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || ftruncate(fd, PAGES * 4096l) != 0) {
        perror(path);
        return 1;
    }
    unlink(path);
    double samples[DELAYS][ROUNDS];
    for (int round = 0; round < ROUNDS; round++)
        for (size_t d = 0; d < DELAYS; d++) samples[d][round] = run(fd, delays[d]);
    for (size_t d = 0; d < DELAYS; d++) {
        qsort(samples[d], ROUNDS, sizeof(double), compare);
        printf("handler work + %5ld ns before the wake-up: %6.0f ns a fault (median of %d)\n", delays[d],
               samples[d][ROUNDS / 2], ROUNDS);
    }
    return 0;
}
