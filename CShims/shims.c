#include "CShims.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sched.h>
#include <unistd.h>
#include <linux/magic.h>
#include <sys/mman.h>
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

int CShims_fallocate(int fd, long offset, long length) {
    return fallocate(fd, 0, offset, length) == 0 ? 0 : -errno;
}

int CShims_blkid_probe_bytes(const void *data, size_t length, char *type, size_t type_length) {
    int fd = memfd_create("daxlab-probe", MFD_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    size_t written = 0;
    while (written < length) {
        ssize_t count = write(fd, (const char *)data + written, length - written);
        if (count < 0) {
            int error = errno;
            close(fd);
            return -error;
        }
        written += (size_t)count;
    }
    int result = 0;
    blkid_probe probe = blkid_new_probe();
    if (probe == NULL) {
        close(fd);
        return -ENOMEM;
    }
    if (blkid_probe_set_device(probe, fd, 0, (blkid_loff_t)length) != 0) {
        result = -EIO;
    } else {
        blkid_probe_enable_superblocks(probe, 1);
        blkid_probe_set_superblocks_flags(probe, BLKID_SUBLKS_TYPE);
        blkid_probe_enable_partitions(probe, 1);
        blkid_probe_set_partitions_flags(probe, BLKID_PARTS_MAGIC);
        int found = blkid_do_safeprobe(probe);
        if (found == 0 || found == -2) {
            const char *value = NULL;
            if (blkid_probe_lookup_value(probe, "TYPE", &value, NULL) != 0 &&
                blkid_probe_lookup_value(probe, "PTTYPE", &value, NULL) != 0) {
                value = found == -2 ? "ambivalent" : "unknown";
            }
            snprintf(type, type_length, "%s", value);
            result = 1;
        } else if (found < 0) {
            result = -EIO;
        }
    }
    blkid_free_probe(probe);
    close(fd);
    return result;
}

int CShims_flush_stdout(void) {
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        return errno != 0 ? errno : EIO;
    }
    return 0;
}

int CShims_die_with_parent(int signal) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0) == 0 ? 0 : -errno;
}

int CShims_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) == 0 ? 0 : -errno;
}
