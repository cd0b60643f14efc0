// Persisting a 4-byte pointer with a non-temporal store instead of a store and `clwb`, in the
// shape of alloc.block's cycle: a "fault" reads the slot, sets it durably and takes a locked
// instruction; a "punch" reads it, clears it durably and takes a locked instruction; 50 ns of
// register work after each.
//
//   gcc -O2 -mclwb -o nt-pointer nt-pointer.c && ./nt-pointer
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "microbench.h"

static inline void persist(uint32_t *slot, uint32_t value, int nontemporal) {
    if (nontemporal) {
        _mm_stream_si32((int *)slot, (int)value);
    } else {
        *(volatile uint32_t *)slot = value;
        _mm_clwb(slot);
    }
    _mm_sfence();
}

int main(void) {
    uint32_t *slot = aligned_alloc(64, 4096);
    volatile uint64_t *counter = aligned_alloc(64, 4096);
    const int n = 500000;
    uint64_t x = 1, start;
    for (int pass = 0; pass < 4; pass++) {
        int nontemporal = pass % 2;
        start = now();
        for (int i = 0; i < n; i++) {
            x += *(volatile uint32_t *)slot;
            persist(slot, (uint32_t)i | 1, nontemporal);
            __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST);
            x = work(x, 30);
            x += *(volatile uint32_t *)slot;
            persist(slot, 0, nontemporal);
            __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST);
            x = work(x, 30);
        }
        printf("%-22s %.1f ns per fault+punch\n", nontemporal ? "movnti + sfence:" : "store + clwb + sfence:",
               (double)(now() - start) / n);
    }
    start = now();
    for (int i = 0; i < n; i++) x = work(x, 60);
    printf("the work alone:        %.1f ns\n", (double)(now() - start) / n);
    return (int)(x & 1);
}
