#include "CBenchShims.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <libpmem.h>
#include <libpmemobj.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

int CBenchShims_uring_register_unregister(void *ring, void *buffer, size_t length) {
    struct iovec vector = {buffer, length};
    int result = io_uring_register_buffers(ring, &vector, 1);
    if (result < 0) {
        return result;
    }
    return io_uring_unregister_buffers(ring);
}

long CBenchShims_process_vm_writev_self(void *destination, const void *source, size_t length) {
    struct iovec local = {(void *)source, length};
    struct iovec remote = {destination, length};
    ssize_t written = process_vm_writev(getpid(), &local, 1, &remote, 1, 0);
    return written < 0 ? -errno : written;
}

int CBenchShims_punch_hole(int fd, long offset, long length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0 ? 0 : -errno;
}

void *CBenchShims_pmemobj_create(const char *path, size_t size) {
    return pmemobj_create(path, "daxlab-bench", size, 0600);
}

void CBenchShims_pmemobj_close(void *pool) { pmemobj_close(pool); }

int CBenchShims_pmemobj_alloc_free(void *pool, size_t size) {
    PMEMoid oid;
    if (pmemobj_alloc(pool, &oid, size, 0, NULL, NULL) != 0) {
        return -errno;
    }
    pmemobj_free(&oid);
    return 0;
}

void CBenchShims_persist_floor(uint32_t *slot, char *blocks, size_t batch, uint32_t value, size_t count,
                               int underWriteBack) {
    for (size_t i = 0; i < count; i++) {
        char *block = blocks + (i % batch) * 4096;
        *(volatile uint32_t *)slot = value;
        if (underWriteBack) {
            pmem_flush(slot, 4);
            pmem_memset(block, 0, 4096, PMEM_F_MEM_NONTEMPORAL | PMEM_F_MEM_NODRAIN);
            pmem_drain();
        } else {
            pmem_persist(slot, 4);
        }
        *(volatile uint32_t *)slot = 0;
        pmem_persist(slot, 4);
        if (!underWriteBack) {
            pmem_memset(block, 0, 4096, PMEM_F_MEM_NONTEMPORAL | PMEM_F_MEM_NODRAIN);
            if (i % batch == batch - 1) pmem_drain();
        }
    }
    pmem_drain();
}

int CBenchShims_pmemobj_zalloc_free(void *pool, size_t size) {
    PMEMoid oid;
    if (pmemobj_zalloc(pool, &oid, size, 0) != 0) {
        return -errno;
    }
    pmemobj_free(&oid);
    return 0;
}

unsigned long long CBenchShims_thread_cpu_ns(void) {
    struct timespec time;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time);
    return (unsigned long long)time.tv_sec * 1000000000ULL + (unsigned long long)time.tv_nsec;
}

static char *floor_window;
static int floor_descriptor;

static void floor_handler(int signal_number, siginfo_t *info, void *context) {
    (void)signal_number;
    (void)context;
    char *page = (char *)((unsigned long)info->si_addr & ~4095UL);
    mmap(page, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, floor_descriptor, page - floor_window);
}

double CBenchShims_sigsegv_mmap_touch(int fd, size_t pages) {
    size_t length = pages * 4096;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)length) != 0) {
        return -errno;
    }
    char *window = mmap(NULL, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (window == MAP_FAILED) {
        return -errno;
    }
    floor_window = window;
    floor_descriptor = fd;
    struct sigaction action, previous;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = floor_handler;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &previous);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (size_t page = 0; page < pages; page++) {
        ((volatile char *)window)[page * 4096] = 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    sigaction(SIGSEGV, &previous, NULL);
    munmap(window, length);
    return ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / (double)pages;
}
