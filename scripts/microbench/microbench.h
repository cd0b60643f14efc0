// Shared by the microbenchmarks here: a monotonic clock and register-only work.
#ifndef DAXLAB_MICROBENCH_H
#define DAXLAB_MICROBENCH_H
#include <stdint.h>
#include <time.h>

static inline uint64_t now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000ull + t.tv_nsec;
}

// `rounds` rounds of xorshift, a dependent chain the compiler cannot fold (about 1.7 ns a round
// on the development VM).
static inline uint64_t work(uint64_t x, int rounds) {
    for (int i = 0; i < rounds; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; }
    return x;
}
#endif
