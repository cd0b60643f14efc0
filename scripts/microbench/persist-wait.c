// Where a persist's write-back is waited for, on this CPU: after a 4-byte store, `clwb` and
// `sfence`, is the ~160 ns write-back paid at the fence, at the next locked instruction, at the
// next read of the same line, or hidden under work that touches neither?
//
//   gcc -O2 -mclwb -o persist-wait persist-wait.c && ./persist-wait
//
// Each loop iteration persists one line (a store, clwb, sfence) and then does `W` rounds of
// register-only work (xorshift, a dependent chain) placed as the mode says. If the write-back
// were paid at the fence, an iteration would cost write-back + work; if it is paid only at the
// next locked instruction or read of the line, work placed before that point hides under it.
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <x86intrin.h>

#include "microbench.h"

int main(void) {
    volatile uint32_t *line = aligned_alloc(64, 4096);
    volatile uint64_t *counter = aligned_alloc(64, 4096);
    const int n = 500000;
    const int rounds[] = {0, 30, 60, 120};
    uint64_t x = 1, start;
    for (int r = 0; r < 4; r++) {
        int w = rounds[r];
        start = now();
        for (int i = 0; i < n; i++) x = work(x, w);
        double alone = (double)(now() - start) / n;
        // persist, work, locked add: the work comes before the locked instruction
        start = now();
        for (int i = 0; i < n; i++) {
            line[0] = i; _mm_clwb((void *)line); _mm_sfence();
            x = work(x, w);
            __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST);
        }
        double beforeLock = (double)(now() - start) / n;
        // persist, locked add, work: the work comes after it
        start = now();
        for (int i = 0; i < n; i++) {
            line[0] = i; _mm_clwb((void *)line); _mm_sfence();
            __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST);
            x = work(x, w);
        }
        double afterLock = (double)(now() - start) / n;
        // persist, read of the same line, work that depends on it
        start = now();
        for (int i = 0; i < n; i++) {
            line[0] = i; _mm_clwb((void *)line); _mm_sfence();
            x += line[1];
            x = work(x, w);
        }
        double afterRead = (double)(now() - start) / n;
        printf("work %3d rounds (%5.1f ns alone): persist+work+lock %6.1f  persist+lock+work %6.1f  "
               "persist+read+work %6.1f ns\n", w, alone, beforeLock, afterLock, afterRead);
    }
    // The wait a read of the line sees, by how long after the persist it comes (rdtscp cycles,
    // including rdtscp's own ~75).
    unsigned aux;
    for (int r = 0; r < 3; r++) {
        int w = r == 0 ? 0 : (r == 1 ? 60 : 400);
        uint64_t total = 0;
        for (int i = 0; i < n / 2; i++) {
            line[0] = i; _mm_clwb((void *)line); _mm_sfence();
            x = work(x, w);
            _mm_lfence(); uint64_t t0 = __rdtscp(&aux); _mm_lfence();
            x += line[x & 1];
            _mm_lfence(); total += __rdtscp(&aux) - t0;
        }
        printf("a read of the line %3d work rounds after the persist: %.0f TSC cycles\n", w, (double)total / (n / 2));
    }
    return (int)(x & 1);
}
