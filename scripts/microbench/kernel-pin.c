// pin.kernel_longterm's kernel part alone: what io_uring costs to pin and unpin 512 pages, per
// page, for the two ways the bench row and its baseline do it: registering and unregistering a
// buffer table of anonymous memory (the baseline), and updating a slot of a sparse table with a
// MAP_SHARED mapping of a tmpfs file and clearing it again (what daxlab's kernel pin asks of the
// kernel, on the pin's view of the image). Alternated in rounds, medians printed.
//
//   gcc -O2 -o kernel-pin kernel-pin.c -luring && ./kernel-pin
#define _GNU_SOURCE
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "microbench.h"

#define PAGES 512
#define LENGTH (PAGES * 4096)

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(void) {
    struct io_uring anonymousRing, sparseRing;
    if (io_uring_queue_init(4, &anonymousRing, 0) || io_uring_queue_init(4, &sparseRing, 0)) return perror("ring"), 1;
    if (io_uring_register_buffers_sparse(&sparseRing, 2)) return perror("sparse"), 1;
    void *anonymous;
    if (posix_memalign(&anonymous, 4096, LENGTH)) return 1;
    memset(anonymous, 1, LENGTH);
    int file = open("/dev/shm", O_TMPFILE | O_RDWR, 0600);
    if (file < 0 || ftruncate(file, LENGTH)) return perror("tmpfs"), 1;
    char *shared = mmap(NULL, LENGTH, PROT_READ | PROT_WRITE, MAP_SHARED, file, 0);
    if (shared == MAP_FAILED) return perror("mmap"), 1;
    memset(shared, 1, LENGTH);
    enum { ROUNDS = 21, CYCLES = 200 };
    double anonymousNs[ROUNDS], sharedNs[ROUNDS], ratios[ROUNDS];
    for (int round = -2; round < ROUNDS; round++) {  // two warm-up rounds
        uint64_t start = now();
        for (int i = 0; i < CYCLES; i++) {
            struct iovec vector = {anonymous, LENGTH};
            if (io_uring_register_buffers(&anonymousRing, &vector, 1)) return perror("register"), 1;
            io_uring_unregister_buffers(&anonymousRing);
        }
        uint64_t middle = now();
        for (int i = 0; i < CYCLES; i++) {
            struct iovec vector = {shared, LENGTH}, empty = {NULL, 0};
            __u64 tag = 0;
            if (io_uring_register_buffers_update_tag(&sparseRing, 0, &vector, &tag, 1) < 0) return perror("update"), 1;
            io_uring_register_buffers_update_tag(&sparseRing, 0, &empty, &tag, 1);
        }
        uint64_t end = now();
        if (round < 0) continue;
        anonymousNs[round] = (double)(middle - start) / CYCLES / PAGES;
        sharedNs[round] = (double)(end - middle) / CYCLES / PAGES;
        ratios[round] = sharedNs[round] / anonymousNs[round];
    }
    qsort(anonymousNs, ROUNDS, sizeof(double), compare);
    qsort(sharedNs, ROUNDS, sizeof(double), compare);
    qsort(ratios, ROUNDS, sizeof(double), compare);
    printf("anonymous register+unregister: %.1f ns/page\n", anonymousNs[ROUNDS / 2]);
    printf("tmpfs MAP_SHARED slot update+clear: %.1f ns/page\n", sharedNs[ROUNDS / 2]);
    printf("ratio (median of rounds): %.3f [%.3f-%.3f]\n", ratios[ROUNDS / 2], ratios[ROUNDS / 4], ratios[3 * ROUNDS / 4]);
    return 0;
}
