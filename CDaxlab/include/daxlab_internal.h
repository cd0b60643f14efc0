// What libdaxlab's Swift half needs from its C half; not installed.
#ifndef DAXLAB_INTERNAL_H
#define DAXLAB_INTERNAL_H

/// Sets the calling thread's last error (daxlab_last_error), truncated to one buffer.
void CDaxlab_set_last_error(const char *message);

#endif
