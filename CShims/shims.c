#include "CShims.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/prctl.h>
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
