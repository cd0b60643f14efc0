#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <time.h>
static inline unsigned long long now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1000000000ull+t.tv_nsec;}
int main(){
  for (int kind=0; kind<2; kind++){
    pthread_rwlock_t l; pthread_rwlockattr_t a; pthread_rwlockattr_init(&a);
    pthread_rwlockattr_setkind_np(&a, kind ? PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP : PTHREAD_RWLOCK_PREFER_READER_NP);
    pthread_rwlock_init(&l,&a);
    int N=20000000; unsigned long long s=now();
    for(int i=0;i<N;i++){pthread_rwlock_rdlock(&l);pthread_rwlock_unlock(&l);}
    double r=(double)(now()-s)/N; s=now();
    for(int i=0;i<N;i++){pthread_rwlock_wrlock(&l);pthread_rwlock_unlock(&l);}
    double w=(double)(now()-s)/N;
    pthread_mutex_t m=PTHREAD_MUTEX_INITIALIZER; s=now();
    for(int i=0;i<N;i++){pthread_mutex_lock(&m);pthread_mutex_unlock(&m);}
    double mu=(double)(now()-s)/N;
    printf("kind %s: rd pair %.1f ns, wr pair %.1f ns, mutex pair %.1f ns\n", kind?"writer-nonrec":"reader", r, w, mu);
  }
}
