// Files and mappings: flags Swift cannot import, statx, statfs, fallocate, memfd, stdout.
#include "CShims.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>

const int CShims_MAP_SYNC = MAP_SYNC;
const int CShims_MAP_SHARED_VALIDATE = MAP_SHARED_VALIDATE;
const int CShims_SEEK_DATA = SEEK_DATA;
const int CShims_SEEK_HOLE = SEEK_HOLE;
const uint64_t CShims_STATX_ATTR_DAX = STATX_ATTR_DAX;
const long CShims_TMPFS_MAGIC = TMPFS_MAGIC;
const long CShims_RAMFS_MAGIC = RAMFS_MAGIC;

const int CShims_O_DIRECT = O_DIRECT;

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

int CShims_fallocate(int fd, long offset, long length) {
    return fallocate(fd, 0, offset, length) == 0 ? 0 : -errno;
}

int CShims_memfd(const char *name) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}

int CShims_flush_stdout(void) {
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        return errno != 0 ? errno : EIO;
    }
    return 0;
}
