// The parts of libdaxlab's C interface that are plain C: the version, errno names, and the
// calling thread's last error (its buffer is thread-local). The rest is Swift (LibDaxlab).
#define _GNU_SOURCE
#include "daxlab.h"
#include "daxlab_internal.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[512];
static _Thread_local char error_name[160];

const char *daxlab_version(void) { return "0.1.0"; }

const char *daxlab_strerror(int error) {
    int number = error == INT_MIN ? 0 : error < 0 ? -error : error;
    const char *name = strerrorname_np(number);
    char text[96];
    snprintf(error_name, sizeof(error_name), "%s: %s", name ? name : "unknown",
             strerror_r(number, text, sizeof(text)));
    return error_name;
}

const char *daxlab_last_error(void) { return last_error; }

void CDaxlab_set_last_error(const char *message) { snprintf(last_error, sizeof(last_error), "%s", message); }
