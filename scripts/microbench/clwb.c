#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <immintrin.h>
static inline uint64_t now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1000000000ull+t.tv_nsec;}
int main(){
  volatile uint32_t *p = aligned_alloc(64, 4096);
  p[0]=1;
  int N=2000000; uint64_t s; volatile uint32_t sink=0;
  for(int mode=0; mode<4; mode++){
    s=now();
    for(int i=0;i<N;i++){
      p[0]=i;
      if(mode==1||mode==3){ _mm_clwb((void*)p); _mm_sfence(); }
      if(mode==2){ _mm_clflushopt((void*)p); _mm_sfence(); }
      if(mode>=2 || mode==1) sink+=p[0];
      if(mode==3) sink+=p[0];
    }
    printf("mode %d: %.1f ns/iter\n", mode, (double)(now()-s)/N);
  }
  // reload latency after clwb, dependent
  s=now();
  for(int i=0;i<N;i++){ p[0]=i; _mm_clwb((void*)p); _mm_sfence(); }
  printf("clwb+sfence only: %.1f\n", (double)(now()-s)/N);
  s=now();
  for(int i=0;i<N;i++){ p[0]=i; _mm_clwb((void*)p); _mm_sfence(); sink += p[0]; __asm__ volatile("lfence"); }
  printf("clwb+sfence+load+lfence: %.1f\n", (double)(now()-s)/N);
  s=now();
  for(int i=0;i<N;i++){ p[0]=i; _mm_clflushopt((void*)p); _mm_sfence(); sink += p[0]; __asm__ volatile("lfence"); }
  printf("clflushopt+sfence+load+lfence: %.1f\n", (double)(now()-s)/N);
  return 0;
}
