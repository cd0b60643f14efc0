#include "CShims.h"

#include <fcntl.h>
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
