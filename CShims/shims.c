#include "CShims.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <libpmemobj.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>

const int CShims_MAP_SYNC = MAP_SYNC;
const int CShims_MAP_SHARED_VALIDATE = MAP_SHARED_VALIDATE;
const uint64_t CShims_STATX_ATTR_DAX = STATX_ATTR_DAX;
const long CShims_TMPFS_MAGIC = TMPFS_MAGIC;

int CShims_statx_attributes(int fd, uint64_t *attributes, uint64_t *attributes_mask) {
    struct statx stx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx) != 0) {
        return -1;
    }
    *attributes = stx.stx_attributes;
    *attributes_mask = stx.stx_attributes_mask;
    return 0;
}


unsigned int CShims_dev_major(dev_t device) { return major(device); }
unsigned int CShims_dev_minor(dev_t device) { return minor(device); }

long CShims_fstatfs_type(int fd) {
    struct statfs buffer;
    if (fstatfs(fd, &buffer) != 0) {
        return -1;
    }
    return (long)buffer.f_type;
}

int CShims_sched_getcpu(void) { return sched_getcpu(); }

void *CShims_uring_create(unsigned entries) {
    struct io_uring *ring = malloc(sizeof(struct io_uring));
    if (ring == NULL) {
        return NULL;
    }
    int result = io_uring_queue_init(entries, ring, 0);
    if (result < 0) {
        free(ring);
        errno = -result;
        return NULL;
    }
    return ring;
}

void CShims_uring_destroy(void *ring) {
    io_uring_queue_exit(ring);
    free(ring);
}

int CShims_uring_register_unregister(void *ring, void *buffer, size_t length) {
    struct iovec vector = {buffer, length};
    int result = io_uring_register_buffers(ring, &vector, 1);
    if (result < 0) {
        return result;
    }
    return io_uring_unregister_buffers(ring);
}

long CShims_process_vm_writev_self(void *destination, const void *source, size_t length) {
    struct iovec local = {(void *)source, length};
    struct iovec remote = {destination, length};
    ssize_t written = process_vm_writev(getpid(), &local, 1, &remote, 1, 0);
    return written < 0 ? -errno : written;
}

int CShims_punch_hole(int fd, long offset, long length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0 ? 0 : -errno;
}

void *CShims_pmemobj_create(const char *path, size_t size) {
    return pmemobj_create(path, "daxlab-bench", size, 0600);
}

void CShims_pmemobj_close(void *pool) { pmemobj_close(pool); }

int CShims_pmemobj_alloc_free(void *pool, size_t size) {
    PMEMoid oid;
    if (pmemobj_alloc(pool, &oid, size, 0, NULL, NULL) != 0) {
        return -errno;
    }
    pmemobj_free(&oid);
    return 0;
}

int CShims_bind_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : -errno;
}

unsigned long long CShims_thread_cpu_ns(void) {
    struct timespec time;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time);
    return (unsigned long long)time.tv_sec * 1000000000ULL + (unsigned long long)time.tv_nsec;
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
