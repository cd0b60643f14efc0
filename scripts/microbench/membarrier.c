// What the lease table's asymmetric fence costs its slow side: one
// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), the call a breaker makes once per scan that finds
// a lease (LeaseTable.hold), alone in the process and with another thread of it running (the
// kernel then sends that thread's CPU an IPI and waits for it). Medians of 9 rounds of 2000 calls.
// What it buys the fast side, one locked instruction fewer per unpin, is `make count-locked`'s.
//
//   gcc -O2 -o membarrier membarrier.c -lpthread && ./membarrier
#define _GNU_SOURCE
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "microbench.h"

static volatile int stop;

static void *spin(void *unused) {
    (void)unused;
    uint64_t x = 1;
    while (!stop) x = work(x, 64);
    return (void *)(uintptr_t)x;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_ns(void) {
    double rounds[9];
    for (int r = 0; r < 9; r++) {
        uint64_t start = now();
        for (int i = 0; i < 2000; i++) syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
        rounds[r] = (double)(now() - start) / 2000;
    }
    qsort(rounds, 9, sizeof rounds[0], compare);
    return rounds[4];
}

int main(void) {
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0) return perror("register"), 1;
    printf("membarrier alone:                      %6.0f ns\n", median_ns());
    pthread_t thread;
    pthread_create(&thread, NULL, spin, NULL);
    usleep(20000);
    printf("membarrier, another thread running:    %6.0f ns\n", median_ns());
    stop = 1;
    pthread_join(thread, NULL);
    return 0;
}
