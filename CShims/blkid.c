// libblkid: what mkfs finds in a target it would overwrite.
#include "CShims.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

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
