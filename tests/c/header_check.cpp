// daxlab.h compiles as C++17 (make test-c: -Wall -Wextra -Werror), and its names are usable from C++.
#include <daxlab.h>

static_assert(sizeof(daxlab_mount_t) == 8, "handles are 64-bit numbers");
static_assert(DAXLAB_POLICY_LEASE_BREAK == 5, "policies keep their numbers");

int main() {
    struct daxlab_stat stat{};  // (daxlab_stat is also the function, as stat(2) is)
    daxlab_times times{0, 45000};
    daxlab_lease_break_fn callback = [](void *, daxlab_pin_t, uint64_t, uint64_t) {};
    return static_cast<int>(stat.size) + static_cast<int>(times.wait_timeout_ms) + (callback == nullptr);
}
