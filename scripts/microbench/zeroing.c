// alloc.block's floor on this CPU, in its parts: how long 4 KiB of non-temporal zeroing takes by
// each way of storing (libpmem's choice, AVX2, AVX-512, and where the CPU has them movdir64b
// (Intel) and clzero (AMD)), and whether zeroing a punched
// block between the punch's clwb and its sfence hides the pointer's write-back (the zeroing and
// the write-back overlapping) or costs the same as zeroing later, in a batch with one drain.
//
//   gcc -O2 -mclwb -o zeroing zeroing.c -lpmem && PMEM_IS_PMEM_FORCE=1 ./zeroing
#include <cpuid.h>
#include <immintrin.h>
#include <libpmem.h>
#include <stdint.h>
#include <stdio.h>

#include "microbench.h"

__attribute__((target("avx512f"))) static void zero512(char *p) {
    __m512i z = _mm512_setzero_si512();
    for (int i = 0; i < 4096; i += 64) _mm512_stream_si512((void *)(p + i), z);
}
__attribute__((target("avx2"))) static void zero256(char *p) {
    __m256i z = _mm256_setzero_si256();
    for (int i = 0; i < 4096; i += 32) _mm256_stream_si256((void *)(p + i), z);
}
__attribute__((target("movdir64b"))) static void zeroDirect(char *p, const char *zeros) {
    for (int i = 0; i < 4096; i += 64) _movdir64b(p + i, zeros);
}
__attribute__((target("clzero"))) static void zeroLines(char *p) {
    for (int i = 0; i < 4096; i += 64) _mm_clzero(p + i);
}
static int hasMovdir64b(void) {
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & (1u << 28));
}
static int hasClzero(void) {
    unsigned a, b, c, d;
    return __get_cpuid(0x80000008, &a, &b, &c, &d) && (b & 1u);
}

static volatile uint64_t counter;
static inline void locked(void) { __atomic_fetch_add(&counter, 1, __ATOMIC_SEQ_CST); }
static inline void persist(uint32_t *slot, uint32_t value) {
    *(volatile uint32_t *)slot = value;
    _mm_clwb(slot);
    _mm_sfence();
}
static void pmemZero(char *p) { pmem_memset(p, 0, 4096, PMEM_F_MEM_NONTEMPORAL | PMEM_F_MEM_NODRAIN); }

int main(void) {
    size_t length;
    int isPmem;
    char *base = pmem_map_file("/dev/shm/daxlab-zeroing", 4 << 20, PMEM_FILE_CREATE, 0600, &length, &isPmem);
    if (!base) { perror("pmem_map_file"); return 1; }
    uint32_t *slot = (uint32_t *)base;
    char *blocks = base + 4096;
    static char zeros[64] __attribute__((aligned(64)));
    const int n = 200000, batch = 31;  // 31: a reserve's worth of blocks, one drain
    uint64_t start;
    for (int pass = 0; pass < 2; pass++) {
        start = now();
        for (int i = 0; i < n; i++) { pmemZero(blocks + (i % batch) * 4096); if (i % batch == batch - 1) pmem_drain(); }
        printf("zero 4 KiB, libpmem non-temporal:  %6.1f ns\n", (double)(now() - start) / n);
        start = now();
        for (int i = 0; i < n; i++) { zero256(blocks + (i % batch) * 4096); if (i % batch == batch - 1) _mm_sfence(); }
        printf("zero 4 KiB, AVX2 streaming:        %6.1f ns\n", (double)(now() - start) / n);
        start = now();
        for (int i = 0; i < n; i++) { zero512(blocks + (i % batch) * 4096); if (i % batch == batch - 1) _mm_sfence(); }
        printf("zero 4 KiB, AVX-512 streaming:     %6.1f ns\n", (double)(now() - start) / n);
        if (hasMovdir64b()) {
            start = now();
            for (int i = 0; i < n; i++) { zeroDirect(blocks + (i % batch) * 4096, zeros); if (i % batch == batch - 1) _mm_sfence(); }
            printf("zero 4 KiB, movdir64b:             %6.1f ns\n", (double)(now() - start) / n);
        }
        if (hasClzero()) {
            start = now();
            for (int i = 0; i < n; i++) { zeroLines(blocks + (i % batch) * 4096); if (i % batch == batch - 1) _mm_sfence(); }
            printf("zero 4 KiB, clzero:                %6.1f ns\n", (double)(now() - start) / n);
        }
        // The cycle's persists: a fault's pointer, a punch's; each followed by a locked instruction.
        start = now();
        for (int i = 0; i < n; i++) { persist(slot, i | 1); locked(); persist(slot, 0); locked(); }
        printf("two pointer persists:              %6.1f ns\n", (double)(now() - start) / n);
        start = now();
        for (int i = 0; i < n; i++) {
            persist(slot, i | 1); locked(); persist(slot, 0); locked();
            pmemZero(blocks + (i % batch) * 4096);
            if (i % batch == batch - 1) { _mm_sfence(); locked(); }
        }
        printf("persists + zeroing in a batch:     %6.1f ns\n", (double)(now() - start) / n);
        start = now();
        for (int i = 0; i < n; i++) {
            persist(slot, i | 1); locked();
            *(volatile uint32_t *)slot = 0;
            _mm_clwb(slot);
            pmemZero(blocks + (i % batch) * 4096);  // under the pointer's write-back
            _mm_sfence(); locked();
        }
        printf("persists + zeroing in the punch:   %6.1f ns\n", (double)(now() - start) / n);
    }
    pmem_unmap(base, length);
    return 0;
}
