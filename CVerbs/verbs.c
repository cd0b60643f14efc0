// The loopback RDMA path of CVerbs.h. Queue-pair transitions follow rdma-core's
// libibverbs/examples/rc_pingpong.c (pp_connect_ctx); the destination is the port's own GID.
#include "CVerbs.h"

#include <errno.h>
#include <infiniband/verbs.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

struct CVerbs_port {
    struct ibv_context *context;
    struct ibv_pd *domain;
    struct ibv_cq *queue;
    struct ibv_qp *requester;  // posts the writes
    struct ibv_qp *responder;  // the target of the writes: the device executes them here
    void *source;
    struct ibv_mr *source_region;
    union ibv_gid gid;
    int gid_index;
    enum ibv_mtu mtu;
    uint32_t psn;  // where both queue pairs' packet sequence numbers start; moved at each reconnect
    uint64_t sequence;
    char name[64];
};

static void say(char *reason, size_t size, const char *format, ...) {
    if (!reason || size == 0) return;
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(reason, size, format, arguments);
    va_end(arguments);
}

int CVerbs_device_names(char *buffer, size_t size) {
    int count = 0;
    struct ibv_device **list = ibv_get_device_list(&count);
    if (!list) return errno == ENOSYS ? 0 : -errno;
    size_t used = 0;
    if (size) buffer[0] = 0;
    for (int i = 0; i < count && size; i++) {
        int wrote = snprintf(buffer + used, size - used, "%s%s", i ? " " : "", ibv_get_device_name(list[i]));
        if (wrote < 0 || (size_t)wrote >= size - used) break;
        used += (size_t)wrote;
    }
    ibv_free_device_list(list);
    return count;
}

/// The first IPv4-mapped GID of the port (RoCE v2 over an IPv4 address: on `lo`, ::ffff:127.0.0.1),
/// else the first non-zero one; -1 if none.
static int choose_gid(struct ibv_context *context, int table_length, union ibv_gid *gid) {
    int fallback = -1;
    union ibv_gid first = {0};
    for (int index = 0; index < table_length; index++) {
        union ibv_gid candidate;
        if (ibv_query_gid(context, 1, index, &candidate)) continue;
        static const uint8_t zero[16];
        if (!memcmp(candidate.raw, zero, 16)) continue;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (!memcmp(candidate.raw, mapped, 12)) { *gid = candidate; return index; }
        if (fallback < 0) { fallback = index; first = candidate; }
    }
    *gid = first;
    return fallback;
}

static int to_init(struct ibv_qp *qp) {
    struct ibv_qp_attr attr = {.qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = 1,
                               .qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE};
    return ibv_modify_qp(qp, &attr, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

static int to_rtr(CVerbs_port *port, struct ibv_qp *qp, uint32_t destination) {
    struct ibv_qp_attr attr = {
        .qp_state = IBV_QPS_RTR, .path_mtu = port->mtu, .dest_qp_num = destination, .rq_psn = port->psn,
        .max_dest_rd_atomic = 1, .min_rnr_timer = 12,
        .ah_attr = {.is_global = 1, .dlid = 0, .sl = 0, .src_path_bits = 0, .port_num = 1,
                    .grh = {.dgid = port->gid, .sgid_index = (uint8_t)port->gid_index, .hop_limit = 1}},
    };
    return ibv_modify_qp(qp, &attr,
                         IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN
                             | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
}

// A local ACK timeout of 4.096 us * 2^18 (about 1 s), as a loopback under emulation can be slow.
static int to_rts(CVerbs_port *port, struct ibv_qp *qp) {
    struct ibv_qp_attr attr = {.qp_state = IBV_QPS_RTS, .timeout = 18, .retry_cnt = 7, .rnr_retry = 7,
                               .sq_psn = port->psn, .max_rd_atomic = 1};
    return ibv_modify_qp(qp, &attr,
                         IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN
                             | IBV_QP_MAX_QP_RD_ATOMIC);
}

/// Resets both queue pairs and connects them to each other again (after an error completion
/// moved them to the error state), starting from new packet sequence numbers so that nothing
/// left from before matches. Returns 0 or an errno value.
static int connect_pair(CVerbs_port *port) {
    struct ibv_qp *pair[2] = {port->requester, port->responder};
    port->psn = (port->psn + 0x10000u) & 0xffffffu;
    for (int i = 0; i < 2; i++) {
        struct ibv_qp_attr reset = {.qp_state = IBV_QPS_RESET};
        int error = ibv_modify_qp(pair[i], &reset, IBV_QP_STATE);
        if (error) return error;
    }
    struct ibv_wc drained[8];
    while (ibv_poll_cq(port->queue, 8, drained) > 0) {}
    for (int i = 0; i < 2; i++) {
        int error = to_init(pair[i]);
        if (!error) error = to_rtr(port, pair[i], pair[1 - i]->qp_num);
        if (!error) error = to_rts(port, pair[i]);
        if (error) return error;
    }
    return 0;
}

/// Destroys both queue pairs (which flushes anything posted on them: nothing executes after
/// this returns); the port writes nothing from then on.
static void drop_pair(CVerbs_port *port) {
    if (port->requester) ibv_destroy_qp(port->requester);
    if (port->responder) ibv_destroy_qp(port->responder);
    port->requester = port->responder = NULL;
}

void CVerbs_close(CVerbs_port *port) {
    if (!port) return;
    if (port->source_region) ibv_dereg_mr(port->source_region);
    drop_pair(port);
    if (port->queue) ibv_destroy_cq(port->queue);
    if (port->domain) ibv_dealloc_pd(port->domain);
    if (port->context) ibv_close_device(port->context);
    if (port->source) munmap(port->source, 4096);
    free(port);
}

CVerbs_port *CVerbs_open(const char *name, char *reason, size_t reason_size) {
    int count = 0;
    struct ibv_device **list = ibv_get_device_list(&count);
    if (!list || count == 0) {
        int error = list ? ENODEV : errno;
        if (list) ibv_free_device_list(list);
        say(reason, reason_size, "no RDMA device here (%s)",
            error == ENODEV ? "none listed" : error == ENOSYS ? "this kernel has no RDMA support" : strerror(error));
        errno = ENODEV;
        return NULL;
    }
    struct ibv_device *device = NULL;
    for (int i = 0; i < count && !device; i++)
        if (!name || !strcmp(ibv_get_device_name(list[i]), name)) device = list[i];
    if (!device) {
        ibv_free_device_list(list);
        say(reason, reason_size, "no RDMA device named %s", name);
        errno = ENODEV;
        return NULL;
    }
    CVerbs_port *port = calloc(1, sizeof(*port));
    if (!port) {
        ibv_free_device_list(list);
        say(reason, reason_size, "out of memory");
        errno = ENOMEM;
        return NULL;
    }
    snprintf(port->name, sizeof(port->name), "%s", ibv_get_device_name(device));
    port->context = ibv_open_device(device);
    int error = errno;
    ibv_free_device_list(list);
#define FAIL(what)                                                                          \
    do {                                                                                    \
        say(reason, reason_size, "%s: %s: %s", port->name, what, strerror(error ? error : EIO)); \
        CVerbs_close(port);                                                                 \
        errno = error ? error : EIO;                                                        \
        return NULL;                                                                        \
    } while (0)
    if (!port->context) FAIL("ibv_open_device");
    struct ibv_port_attr attributes;
    if ((error = ibv_query_port(port->context, 1, &attributes))) FAIL("ibv_query_port");
    if (attributes.state != IBV_PORT_ACTIVE) { error = ENETDOWN; FAIL("port 1 is not active"); }
    port->mtu = attributes.active_mtu;
    port->gid_index = choose_gid(port->context, attributes.gid_tbl_len, &port->gid);
    if (port->gid_index < 0) { error = EADDRNOTAVAIL; FAIL("port 1 has no GID (is its netdev up?)"); }
    if (!(port->domain = ibv_alloc_pd(port->context))) { error = errno; FAIL("ibv_alloc_pd"); }
    if (!(port->queue = ibv_create_cq(port->context, 16, NULL, NULL, 0))) { error = errno; FAIL("ibv_create_cq"); }
    struct ibv_qp_init_attr init = {
        .send_cq = port->queue, .recv_cq = port->queue, .qp_type = IBV_QPT_RC,
        .cap = {.max_send_wr = 4, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1},
    };
    if (!(port->requester = ibv_create_qp(port->domain, &init))) { error = errno; FAIL("ibv_create_qp"); }
    if (!(port->responder = ibv_create_qp(port->domain, &init))) { error = errno; FAIL("ibv_create_qp"); }
    port->source = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (port->source == MAP_FAILED) { port->source = NULL; error = errno; FAIL("mmap of the source buffer"); }
    memset(port->source, 0, 4096);
    if (!(port->source_region = ibv_reg_mr(port->domain, port->source, 4096, IBV_ACCESS_LOCAL_WRITE))) {
        error = errno;
        FAIL("ibv_reg_mr of the source buffer");
    }
    if ((error = connect_pair(port))) FAIL("connecting the queue pairs");
#undef FAIL
    return port;
}

const char *CVerbs_name(const CVerbs_port *port) { return port->name; }
int CVerbs_gid_index(const CVerbs_port *port) { return port->gid_index; }
void *CVerbs_source(CVerbs_port *port) { return port->source; }

int CVerbs_register(CVerbs_port *port, void *address, size_t length, int on_demand, void **region, uint32_t *rkey) {
    int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | (on_demand ? IBV_ACCESS_ON_DEMAND : 0);
    errno = 0;
    struct ibv_mr *mr = ibv_reg_mr(port->domain, address, length, access);
    if (!mr) return -(errno ? errno : EIO);
    *region = mr;
    *rkey = mr->rkey;
    return 0;
}

int CVerbs_deregister(void *region) {
    int error = ibv_dereg_mr(region);
    return error ? -error : 0;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int CVerbs_write(CVerbs_port *port, uint64_t remote, uint32_t rkey, uint32_t length, int *status) {
    *status = 0;
    if (!port->requester) return -ENOTCONN;
    struct ibv_sge piece = {.addr = (uintptr_t)port->source, .length = length, .lkey = port->source_region->lkey};
    struct ibv_send_wr request = {
        .wr_id = ++port->sequence, .sg_list = &piece, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
        .send_flags = IBV_SEND_SIGNALED, .wr.rdma = {.remote_addr = remote, .rkey = rkey},
    };
    struct ibv_send_wr *bad = NULL;
    int error = ibv_post_send(port->requester, &request, &bad);
    if (error) return -error;
    uint64_t deadline = now_ns() + 30ull * 1000000000u;
    struct ibv_wc completion;
    for (unsigned spins = 0;; spins++) {
        int found = ibv_poll_cq(port->queue, 1, &completion);
        if (found < 0) return -EIO;
        if (found > 0 && completion.wr_id == request.wr_id) break;
        if (found > 0) continue;  // (a flushed completion of an earlier request)
        if (spins >= 64) {
            if (now_ns() > deadline) {
                if (connect_pair(port)) drop_pair(port);
                return -ETIMEDOUT;
            }
            sched_yield();
        }
    }
    *status = completion.status;
    if (completion.status == IBV_WC_SUCCESS) return (int)length;
    // Any error completion moves both queue pairs to the error state: connect them again (or,
    // if that fails, drop them, so that nothing posted can still execute).
    if (connect_pair(port)) drop_pair(port);
    return completion.status == IBV_WC_REM_ACCESS_ERR ? -EFAULT : -EIO;
}

int CVerbs_probe_on_demand(CVerbs_port *port, int *capable) {
    struct ibv_device_attr_ex attributes;
    memset(&attributes, 0, sizeof(attributes));
    *capable = 0;
    if (!ibv_query_device_ex(port->context, NULL, &attributes))
        *capable = (attributes.odp_caps.general_caps & IBV_ODP_SUPPORT)
                   && (attributes.odp_caps.per_transport_caps.rc_odp_caps & IBV_ODP_SUPPORT_WRITE);
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return -errno;
    void *region = NULL;
    uint32_t rkey = 0;
    int result = CVerbs_register(port, page, 4096, 1, &region, &rkey);
    if (result == 0) CVerbs_deregister(region);
    munmap(page, 4096);
    return result;
}
