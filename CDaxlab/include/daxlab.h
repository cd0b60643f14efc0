/*
 * daxlab.h: the C interface of libdaxlab, a userspace laboratory for the Linux DAX "DMA versus
 * truncate" problem. A C program formats and mounts a daxlab image (a file on tmpfs, a file on
 * an fs-dax mount, or a device-dax device), works on its files, maps them, pins their pages as a
 * device would, and sees what a truncate or hole punch does to its pins under each policy.
 *
 * Build with `pkg-config --cflags --libs daxlab`. C11 and C++17.
 *
 * Conventions:
 *   - Every function that can fail returns 0 (or a count) on success and a negative errno value
 *     on failure; daxlab_strerror() names the value and daxlab_last_error() gives the calling
 *     thread's last failure as one line of text.
 *   - Handles (daxlab_mount_t, daxlab_pin_t) are numbers, never pointers: a handle that was
 *     unmounted or unpinned, or one that never existed, gives -EBADF, not a crash. A file is
 *     named by a daxlab_file_t (its inode and generation): one whose file was removed gives
 *     -ENOENT.
 *   - Thread safety: every function may be called from any thread, on the same mount or pin
 *     from several threads at once, unless its comment says otherwise.
 */
#ifndef DAXLAB_H
#define DAXLAB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A mounted image. */
typedef uint64_t daxlab_mount_t;
/** A file of a mounted image: its inode and generation (a removed file's gives -ENOENT). */
typedef uint64_t daxlab_file_t;
/** A pin of a range of a file's pages (daxlab_pin). */
typedef uint64_t daxlab_pin_t;

/** What a truncate, hole punch or unlink does to blocks a device has pinned. */
enum daxlab_policy {
    DAXLAB_POLICY_DEFAULT = -1, /**< the mount's default (daxlab_attach) */
    DAXLAB_POLICY_NONE = 0,     /**< free at once: the bug, reproduced */
    DAXLAB_POLICY_FAIL = 1,     /**< refuse with -EBUSY, change nothing */
    DAXLAB_POLICY_WAIT = 2,     /**< sleep until the last unpin (what mainline merged) */
    DAXLAB_POLICY_SEQUESTER = 3, /**< move busy blocks to lost+found until their last unpin */
    DAXLAB_POLICY_DEFERRED = 4, /**< out of the file, kept from the allocator until the last unpin */
    DAXLAB_POLICY_LEASE_BREAK = 5, /**< break the holders' leases, revoke them after the break time */
    DAXLAB_POLICY_MAINLINE = 6, /**< v6.15: long-term pins refused (-EOPNOTSUPP), short-term waited for */
    DAXLAB_POLICY_ODP = 7       /**< on-demand paging: devices mirror, never pin */
};

/** daxlab_format and daxlab_mount flags. */
enum daxlab_flags {
    DAXLAB_FORCE = 1,     /**< format a target that holds data (its contents are lost) */
    DAXLAB_READ_ONLY = 2  /**< mount read-only: writes give -EROFS */
};

/** daxlab_fallocate modes (fallocate(2)'s). */
enum daxlab_fallocate_mode {
    DAXLAB_FALLOC_ALLOCATE = 0,   /**< allocate the range; the size grows to cover it */
    DAXLAB_FALLOC_KEEP_SIZE = 1,  /**< allocate the range; the size stays */
    DAXLAB_FALLOC_PUNCH_HOLE = 2, /**< free whole blocks, zero the rest; the size stays */
    DAXLAB_FALLOC_ZERO_RANGE = 3, /**< the range reads as zeros; the size grows to cover it */
    DAXLAB_FALLOC_COLLAPSE_RANGE = 4, /**< remove the range (block-aligned), shift the rest down */
    DAXLAB_FALLOC_INSERT_RANGE = 5    /**< insert a hole (block-aligned), shift the rest up */
};

/** daxlab_pin flags. */
enum daxlab_pin_flags {
    DAXLAB_PIN_WRITE = 1,      /**< the device writes: holes are allocated first */
    DAXLAB_PIN_LONG_TERM = 2,  /**< FOLL_LONGTERM (RDMA-like); without it the pin is short-term (O_DIRECT-like) */
};

struct daxlab_stat {
    uint64_t size;   /**< bytes */
    uint64_t blocks; /**< data blocks mapped (4096 bytes each) */
    uint64_t modified_ns; /**< last modification, nanoseconds since the epoch */
};

/** The DAX layer's times (daxlab_attach). */
struct daxlab_times {
    int64_t wait_timeout_ms;     /**< wait and mainline: give up after this (-ETIMEDOUT); 0: never */
    int64_t lease_break_time_ms; /**< lease-break: how long holders get before they are revoked */
};

/** What the policies did (daxlab_statistics): counts since daxlab_attach. */
struct daxlab_statistics {
    uint64_t refused_busy;    /**< truncates refused with -EBUSY (fail) */
    uint64_t waits;           /**< sleeps on a pinned block (wait, mainline, lease-break) */
    uint64_t truncates_waited;
    uint64_t lease_breaks;    /**< holders told to give a lease back */
    uint64_t revocations;     /**< leases revoked at the break time */
    uint64_t sequestered_now; /**< blocks in lost+found now */
    uint64_t deferred_now;    /**< blocks kept from the allocator now */
    uint64_t pinned_blocks_freed; /**< pinned blocks freed anyway (none): the corruption's cause */
    uint64_t window_faults;   /**< faults served in mapped windows */
    uint64_t long_term_refused; /**< long-term pins refused (mainline) */
    uint64_t callbacks_dropped; /**< lease-break callbacks not run: no thread could be started */
};

/**
 * Called when a truncate, punch or unlink breaks a pin's lease under lease-break: the pin covers
 * pages [first_page, first_page + pages) of its file. It runs on a thread of daxlab's own (one
 * per broken lease, so the callbacks of one truncate run at the same time), never on the
 * truncating thread, so it may call daxlab_unpin(pin) itself; the truncate goes on at the last
 * unpin or, at the latest, when the break time runs out, when the pins still held are revoked:
 * their later daxlab_pin_write calls return 0 (refused), and they must still be unpinned. A
 * callback not started when its pin is unpinned is skipped (one already running may finish
 * after daxlab_unpin returns).
 */
typedef void (*daxlab_lease_break_fn)(void *context, daxlab_pin_t pin, uint64_t first_page, uint64_t pages);

/** The library's version, "MAJOR.MINOR.PATCH". */
const char *daxlab_version(void);

/** The name of a negative errno value daxlab returned ("EBUSY: device or resource busy"). */
const char *daxlab_strerror(int error);

/** The calling thread's last failure, one line (empty before any); valid until its next call. */
const char *daxlab_last_error(void);

/** Formats a daxlab file system at `path` (created with `size` bytes when it does not exist, 0
 * for 256 MiB; a device-dax device is formatted whole and `size` is ignored). A target that holds
 * anything is refused (-ENOTEMPTY) unless `flags` has DAXLAB_FORCE. Paths are UTF-8; flag bits
 * other than those named give -EINVAL, here and everywhere. */
int daxlab_format(const char *path, uint64_t size, int flags);

/** Mounts the image at `path` (DAXLAB_READ_ONLY in `flags` for read-only); `*mount` gets its
 * handle. Another mount of the same image, here or in another process, gives -EBUSY. */
int daxlab_mount(const char *path, int flags, daxlab_mount_t *mount);

/** Unmounts `mount`: its handle, its files' handles and its mappings end (touching a mapping
 * afterwards is SIGSEGV: the address is no longer mapped; a file handle of a later mount of the
 * same image names no file, -ENOENT). Pins still held give -EBUSY and nothing changes (unpin
 * them first). Calls in progress on the mount in other threads are waited for (a large read, an
 * unpin), and so are lease-break callbacks still running: a callback must not wait for the
 * unmount. Calls made after the unmount began give -EBADF. */
int daxlab_unmount(daxlab_mount_t mount);

/** Creates the empty file `name` (-EEXIST if it exists). Names are bytes, taken as they are
 * (not UTF-8 checked); "", ".", "..", names with '/' and names over 255 bytes give -EINVAL. */
int daxlab_create(daxlab_mount_t mount, const char *name, daxlab_file_t *file);
/** The file `name` (-ENOENT if none). */
int daxlab_open(daxlab_mount_t mount, const char *name, daxlab_file_t *file);
/** Removes `name`; its blocks are released under `policy` (DAXLAB_POLICY_DEFAULT: the mount's). */
int daxlab_unlink(daxlab_mount_t mount, const char *name, int policy);
/** Renames `from` to `to`, replacing `to` if it exists. */
int daxlab_rename(daxlab_mount_t mount, const char *from, const char *to);

/** Reads `count` bytes (at most 1 GiB) at `offset`: the bytes read (fewer at the end, 0 past
 * it), or -errno; a buffer that cannot be written gives -EFAULT, as read(2). */
int64_t daxlab_read(daxlab_mount_t mount, daxlab_file_t file, void *buffer, size_t count, uint64_t offset);
/** Writes `count` bytes at `offset`, all or nothing: `count`, or -errno. */
int64_t daxlab_write(daxlab_mount_t mount, daxlab_file_t file, const void *buffer, size_t count, uint64_t offset);
/** Sets the size: shrinking frees blocks under `policy`, growing leaves a hole. */
int daxlab_truncate(daxlab_mount_t mount, daxlab_file_t file, uint64_t size, int policy);
/** fallocate(2): `mode` is a daxlab_fallocate_mode; blocks freed go under `policy`. */
int daxlab_fallocate(daxlab_mount_t mount, daxlab_file_t file, int mode, uint64_t offset, uint64_t length, int policy);
int daxlab_stat(daxlab_mount_t mount, daxlab_file_t file, struct daxlab_stat *stat);

/** Attaches the DAX layer to `mount` with its default `policy` and `times` (NULL: a wait without
 * a timeout, a 45 s lease-break time; each at most 100 days); once per mount, and not on a
 * read-only mount (-EROFS). Mapping and pinning need it. */
int daxlab_attach(daxlab_mount_t mount, int policy, const struct daxlab_times *times);

/** Maps `file` (daxlab_attach first): `*address` gets a real mapping of its pages, as large as a
 * file may grow (`*length` bytes); each page is mapped onto the file's block at the first touch,
 * by the CPU or by the kernel (an O_DIRECT read into it, a registration), a hole allocated for a
 * write; a truncate unmaps what it removes; an access past the end of file is SIGBUS for the
 * CPU and EFAULT for the kernel, as on a DAX file. The same address for every call on the file;
 * it stays mapped until the image is unmounted (after an unlink every access is SIGBUS). */
int daxlab_map(daxlab_mount_t mount, daxlab_file_t file, void **address, size_t *length);

/** Pins pages [first_page, first_page + pages) of `file` (1 to 512 pages) as a device does
 * (pin_user_pages): DAXLAB_PIN_WRITE allocates holes first, DAXLAB_PIN_LONG_TERM makes it
 * long-term. A pin holds a lease; `on_break` (may be NULL) is told when a truncate breaks it
 * (daxlab_lease_break_fn). Refused with -EOPNOTSUPP for a long-term pin under mainline, -EINVAL
 * for a range past the end of file, -ENOSPC when a hole cannot be allocated, -EBUSY when a
 * truncate took the range while it was being pinned. */
int daxlab_pin(daxlab_mount_t mount, daxlab_file_t file, uint64_t first_page, uint64_t pages, int flags,
               daxlab_lease_break_fn on_break, void *context, daxlab_pin_t *pin);

/** The block the `index`-th pinned page holds (the pmem block a device writes into). */
int64_t daxlab_pin_block(daxlab_pin_t pin, uint64_t index);

/** A device's write of `count` bytes into the `index`-th pinned page at `offset` (within the
 * page), straight into the pinned block: 1 when it landed, 0 when it was refused because the
 * pin was revoked, or -errno (-EPERM for a pin taken without DAXLAB_PIN_WRITE, -EFAULT for a
 * source that cannot be read). Several threads may write through one pin; their writes are made
 * one at a time. */
int daxlab_pin_write(daxlab_pin_t pin, uint64_t index, const void *data, size_t count, uint64_t offset);

/** Whether the pin's lease was revoked (1) or not (0). */
int daxlab_pin_revoked(daxlab_pin_t pin);

/** Drops the pin (a second unpin gives -EBADF). A truncate waiting for it goes on, possibly
 * before this returns. Under lease-break, the unpin of a pin whose lease a truncate broke
 * returns only when that truncate stops holding the leases it broke: at the last of their
 * releases, or at the break time. So a thread releasing several such pins one after another
 * waits the break time at the first; release each from its own callback (they run in
 * parallel) instead. An unmount waits for an unpin in progress. */
int daxlab_unpin(daxlab_pin_t pin);

/** What the policies did since daxlab_attach. */
int daxlab_statistics(daxlab_mount_t mount, struct daxlab_statistics *statistics);

#ifdef __cplusplus
}
#endif

#endif
