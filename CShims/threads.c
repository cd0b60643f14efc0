// Threads: the current CPU, a small per-thread index, CPU binding, names, death with the parent.
#include "CShims.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/prctl.h>

int CShims_current_cpu_slow(void) {
    int cpu = sched_getcpu();
    return cpu < 0 ? 0 : cpu;
}

__thread int CShims_thread_index_plus_one;

enum { thread_index_limit = 4096 };
static pthread_mutex_t thread_index_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char thread_index_taken[thread_index_limit];
static pthread_key_t thread_index_key;
static pthread_once_t thread_index_once = PTHREAD_ONCE_INIT;

/// At the thread's exit: its index is free again, and the thread (in what is left of its exit)
/// has none.
static void thread_index_release(void *value) {
    int index = (int)(intptr_t)value - 1;
    pthread_mutex_lock(&thread_index_lock);
    thread_index_taken[index] = 0;
    pthread_mutex_unlock(&thread_index_lock);
    CShims_thread_index_plus_one = CSHIMS_NO_THREAD_INDEX + 1;
}

static int thread_index_key_made;

static void thread_index_key_create(void) {
    thread_index_key_made = pthread_key_create(&thread_index_key, thread_index_release) == 0;
}

/// CShims_thread_index's first call on a thread: the lowest free index, registered with the key
/// so that the thread's exit gives it back (none if there is no key: the process used up its
/// keys; or the key cannot hold it).
int CShims_thread_index_slow(void) {
    pthread_once(&thread_index_once, thread_index_key_create);
    int index = CSHIMS_NO_THREAD_INDEX;
    pthread_mutex_lock(&thread_index_lock);
    for (int i = 0; thread_index_key_made && i < thread_index_limit; i++) {
        if (thread_index_taken[i]) continue;
        if (pthread_setspecific(thread_index_key, (void *)(intptr_t)(i + 1)) == 0) {
            thread_index_taken[i] = 1;
            index = i;
        }
        break;
    }
    pthread_mutex_unlock(&thread_index_lock);
    CShims_thread_index_plus_one = index + 1;
    return index;
}

int CShims_bind_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : -errno;
}

int CShims_unbind_cpu(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    long count = sysconf(_SC_NPROCESSORS_ONLN);
    for (long cpu = 0; cpu < count && cpu < CPU_SETSIZE; cpu++) {
        CPU_SET(cpu, &set);
    }
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : -errno;
}

int CShims_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) == 0 ? 0 : -errno;
}

int CShims_die_with_parent(int signal) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0) == 0 ? 0 : -errno;
}
