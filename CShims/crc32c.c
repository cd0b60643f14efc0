// CRC-32C with the SSE4.2 instruction, where the CPU has it.
#include "CShims.h"

#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2")))
uint32_t CShims_crc32c_hardware(uint32_t crc, const void *bytes, size_t count) {
    const unsigned char *p = bytes;
    uint64_t wide = crc;
    for (; count >= 8; count -= 8, p += 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        wide = _mm_crc32_u64(wide, word);
    }
    uint32_t narrow = (uint32_t)wide;
    for (; count > 0; count--, p++) narrow = _mm_crc32_u8(narrow, *p);
    return narrow;
}

int CShims_has_crc32c_instruction(void) { return __builtin_cpu_supports("sse4.2") ? 1 : 0; }
#else
uint32_t CShims_crc32c_hardware(uint32_t crc, const void *bytes, size_t count) {
    (void)bytes; (void)count;
    return crc;
}

int CShims_has_crc32c_instruction(void) { return 0; }
#endif
