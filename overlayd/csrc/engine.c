/* The forwarding engine's threads (see engine.h and the design note in overlayd/_fastpath.c). */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "gso.h"

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define ENGINE_THREAD_NAME "ovl-engine"  /* both threads (bench.ENGINE_THREAD) */
#define BEAT_MS 500                    /* an idle thread still turns this often (liveness) */
#define SEND_MAX 256                   /* datagrams per sendmmsg, at most */
#define IOV_OUT (4 * SEND_MAX)         /* iovecs per sendmmsg: a segment takes two, its headers and payload */
#define SEG_HDR_MAX (VXLAN_HDR_LEN + ETH_HDR_LEN + GSO_HDR_MAX)  /* a segment's headers, at most */
#define ARENA (IOV_OUT / 2 * SEG_HDR_MAX)  /* segment headers per sendmmsg: room whenever iovecs are left */
#define SLOT (VNET_HDR_LEN + ETH_HDR_LEN + PKT_MAX)   /* a read: header, frame (a tap's) or packet */
#define DGRAM_MAX (VXLAN_HDR_LEN + ETH_HDR_LEN + PKT_MAX)  /* a received buffer: any datagram, even one
                                                           carrying a kernel VTEP's 64 KB superpacket */
#define GSO_SEGS_MAX 64                /* datagrams per UDP GSO send (the kernel's UDP_MAX_SEGMENTS, 5.x) */
#define GSO_BYTES_MAX 65507            /* UDP payload bytes per send: 65535 - IPv4 and UDP headers */
#define ACCEPT_MAX (4 * BATCH)         /* accepted datagrams written per round (UDP_GRO buffers split) */

#define COUNT(c, field, n) __atomic_fetch_add(&(c)->field, (uint64_t)(n), __ATOMIC_RELAXED)

static int errno_slot(int code)
{
    return code >= 0 && code < ERRNO_SLOTS - 1 ? code : ERRNO_SLOTS - 1;
}

static void signal_fd(int fd)
{
    uint64_t one = 1;
    ssize_t r = write(fd, &one, sizeof(one));
    (void)r;  /* an eventfd only fails when its counter would overflow: it is readable then anyway */
}

static void beat(engine_t *e, int dir)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    __atomic_store_n(&e->beat_ns[dir], (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec, __ATOMIC_RELAXED);
}

/* A thread cannot go on: record why (the first failure wins) and tell Python. */
static void fail(engine_t *e, const char *where, int code)
{
    pthread_mutex_lock(&e->lock);
    if (!e->failed) {
        e->failed = 1;
        e->error_where = where;
        e->error_errno = code;
    }
    pthread_mutex_unlock(&e->lock);
    signal_fd(e->notify_fd);
}

/* The current table, with a reference for one batch (the lock is held for the pointer copy only). */
static peer_table_t *table_hold(engine_t *e)
{
    pthread_mutex_lock(&e->lock);
    peer_table_t *t = table_ref(e->table);
    pthread_mutex_unlock(&e->lock);
    return t;
}

/* Queue a NO_LEASE or TOO_BIG packet's first bytes for Python's ICMP answer (dropped when the queue is
 * full). */
static void queue_answer(engine_t *e, int verdict, const unsigned char *p, size_t n)
{
    pthread_mutex_lock(&e->lock);
    int was_empty = e->nanswers == 0, queued = e->nanswers < ANSWER_MAX;
    if (queued) {
        answer_t *a = &e->answers[e->nanswers++];
        a->len = n < ANSWER_BYTES ? n : ANSWER_BYTES;
        a->verdict = verdict;
        memcpy(a->data, p, a->len);
    }
    pthread_mutex_unlock(&e->lock);
    if (queued && was_empty)
        signal_fd(e->notify_fd);
}

/* Block until fd is readable or the engine stops: 1 readable, 0 stop, -1 failed (recorded). */
static int wait_readable(engine_t *e, int dir, int fd, const char *what)
{
    struct pollfd pf[2] = {{.fd = fd, .events = POLLIN}, {.fd = e->stop_fd, .events = POLLIN}};
    for (;;) {
        beat(e, dir);
        int r = poll(pf, 2, BEAT_MS);
        if (r < 0 && errno != EINTR) {
            fail(e, what, errno);
            return -1;
        }
        if (r <= 0)
            continue;
        if (pf[1].revents)
            return 0;
        if (pf[0].revents & POLLNVAL) {
            fail(e, what, EBADF);
            return -1;
        }
        if (pf[0].revents)
            return pf[0].revents & (POLLERR | POLLHUP) ? 2 : 1;
    }
}

/* ---- tun -> UDP ---------------------------------------------------------- */

typedef struct {
    unsigned char slots[BATCH][SLOT];
    unsigned char arena[ARENA];  /* segments' headers; their payloads stay in the slots they were read to */
    struct mmsghdr msgs[SEND_MAX];
    sockaddr_any_t addrs[SEND_MAX];  /* each message's destination, copied from its route: a queued
                                          * message points into this state only, never into a table */
    struct iovec iovs[IOV_OUT];
    unsigned char ctrl[SEND_MAX][CMSG_SPACE(sizeof(uint16_t))];  /* UDP_SEGMENT, when segs > 1 */
    int segs[SEND_MAX];   /* datagrams per message: > 1 is one UDP GSO send of equal-size segments */
    size_t bytes[SEND_MAX];  /* per message */
    int nmsgs;
    size_t niov, used;  /* iovecs, arena bytes */
} out_state_t;

/* The datagrams in msgs[from:to]. */
static int datagrams(const out_state_t *s, int from, int to)
{
    int n = 0;
    for (int i = from; i < to; i++)
        n += s->segs[i];
    return n;
}

/* sendmmsg every queued datagram; a full socket buffer drops the rest, as UDP does. */
static void flush_sends(engine_t *e, out_state_t *s)
{
    counters_t *c = &e->counters[OUT];
    int at = 0;
    while (at < s->nmsgs) {
        int r = sendmmsg(e->sock_fd, s->msgs + at, (unsigned)(s->nmsgs - at), 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                COUNT(c, tx_dropped, datagrams(s, at, s->nmsgs));
                break;
            }
            COUNT(c, tx_error[errno_slot(errno)], s->segs[at]);  /* this message failed: send the others */
            at++;
            continue;
        }
        uint64_t bytes = 0, gso_sends = 0;
        for (int i = at; i < at + r; i++) {
            bytes += s->bytes[i];
            gso_sends += s->segs[i] > 1;
        }
        COUNT(c, tx_packets, datagrams(s, at, at + r));
        COUNT(c, tx_bytes, bytes);
        COUNT(c, tx_gso_sends, gso_sends);
        at += r;
    }
    s->nmsgs = 0;
    s->niov = s->used = 0;
}

static void add_iov(out_state_t *s, const void *p, size_t n)
{
    s->iovs[s->niov++] = (struct iovec){.iov_base = (void *)p, .iov_len = n};
}

/* Queue the n bytes in iovecs s->iovs[first:] to r: one datagram, or (segs > 1) segs datagrams of seg
 * bytes (the last may be shorter) that the kernel cuts from one UDP GSO send. r's address is copied:
 * the table r lives in may be swapped out and freed before the message is sent (issue 16). */
static void queue_send(out_state_t *s, const route_t *r, size_t first, size_t n, int segs, size_t seg)
{
    struct msghdr *m = &s->msgs[s->nmsgs].msg_hdr;
    s->addrs[s->nmsgs] = r->addr;
    *m = (struct msghdr){.msg_name = &s->addrs[s->nmsgs], .msg_namelen = r->addr_len,
                         .msg_iov = &s->iovs[first], .msg_iovlen = s->niov - first};
    s->segs[s->nmsgs] = segs;
    s->bytes[s->nmsgs] = n;
    if (segs > 1) {
        uint16_t size = (uint16_t)seg;
        m->msg_control = s->ctrl[s->nmsgs];
        m->msg_controllen = sizeof(s->ctrl[0]);
        struct cmsghdr *cm = CMSG_FIRSTHDR(m);
        *cm = (struct cmsghdr){.cmsg_len = CMSG_LEN(sizeof(size)), .cmsg_level = SOL_UDP, .cmsg_type = UDP_SEGMENT};
        memcpy(CMSG_DATA(cm), &size, sizeof(size));
    }
    s->nmsgs++;
}

/* How many segments of at most seg bytes one send carries: with UDP GSO as many as the kernel
 * takes in one datagram's worth of bytes, else one. */
static int segments_per_send(const engine_t *e, size_t seg)
{
    size_t fit = GSO_BYTES_MAX / seg;
    return !e->udp_gso || fit < 1 ? 1 : fit < GSO_SEGS_MAX ? (int)fit : GSO_SEGS_MAX;
}

/* The bytes a read leaves free at the start of a slot: the VXLAN header is written there, in front
 * of the frame, so a frame is never copied. A vnet_hdr tap needs none: the header goes over the
 * virtio header, parsed by then. */
static size_t headroom(const engine_t *e)
{
    return e->vxlan && !e->vnet ? VXLAN_HDR_LEN : 0;
}

/* Datagram i of the count segments of superpacket p (a frame on a tap), h its header for the IP
 * packet, queued as two iovecs: its headers, written to the arena, and its payload, left in p (the
 * kernel copies it once, from there). Returns its length. On the tap the headers are the VXLAN
 * header, the frame's Ethernet header re-addressed to r's VtepMAC, then the segment's. */
static size_t segment_datagram(const engine_t *e, out_state_t *s, const route_t *r, const vnet_hdr_t *h,
                               const unsigned char *p, int i, int count)
{
    unsigned char *out = s->arena + s->used;
    const unsigned char *data;
    size_t hdr, data_len;
    if (!e->vxlan) {
        hdr = gso_segment(h, p, i, count, out, &data, &data_len);
    } else {
        unsigned char *f = out + VXLAN_HDR_LEN;
        memcpy(f, p, ETH_HDR_LEN);
        hdr = VXLAN_HDR_LEN + ETH_HDR_LEN + gso_segment(h, p + ETH_HDR_LEN, i, count, f + ETH_HDR_LEN, &data,
                                                         &data_len);
        vxlan_encapsulate(f, r, e->vni);
    }
    s->used += hdr;
    add_iov(s, out, hdr);
    add_iov(s, data, data_len);
    return hdr + data_len;
}

/* Classify one packet (or a tap's frame) read from the device (at slot, after headroom(e) free
 * bytes) and queue its datagrams (segments of a superpacket). */
static void forward_one(engine_t *e, out_state_t *s, const peer_table_t *t, unsigned char *slot, size_t got)
{
    counters_t *c = &e->counters[OUT];
    vnet_hdr_t h = {0};
    unsigned char *p = slot;
    size_t n = got;
    if (e->vnet) {
        if (got >= VNET_HDR_LEN)
            vnet_parse(slot, &h);
        n = got >= VNET_HDR_LEN ? got - VNET_HDR_LEN : 0;
        p = slot + VNET_HDR_LEN;
        vnet_strip_l2(&h, (unsigned)e->l2);  /* a tap's offsets count the Ethernet header */
    }
    COUNT(c, dev_rx_packets, 1);
    COUNT(c, dev_rx_bytes, n);
    const route_t *r = NULL;
    unsigned mtu = h.gso_type == GSO_NONE ? e->tunnel_mtu : 0;  /* a superpacket is cut to fit */
    int v = e->vxlan ? vxlan_outbound(t, p, n, &r) : table_outbound(t, p, n, mtu, &r), count = 1;
    if (v == V_OK && e->vnet && (count = gso_prepare(&h, p + e->l2, n - e->l2)) < 0)  /* V_OK: n > l2 */
        v = -count;
    if (v != V_OK) {
        COUNT(c, drops[v], 1);
        if (v == V_NO_LEASE || v == V_TOO_BIG)
            queue_answer(e, v, p, n);
        return;
    }
    if (!r->send_ok) {
        COUNT(c, tx_error[0], count);
        return;
    }
    if (h.gso_type == GSO_NONE) {
        if (e->vxlan) {
            p = vxlan_encapsulate(p, r, e->vni);
            n += VXLAN_HDR_LEN;
        }
        add_iov(s, p, n);
        queue_send(s, r, s->niov - 1, n, 1, n);
    } else {  /* every segment but the last is room bytes long: equal sizes, as UDP GSO wants */
        COUNT(c, dev_rx_superpackets, 1);
        size_t outer = e->vxlan ? VXLAN_HDR_LEN + ETH_HDR_LEN : 0;
        size_t room = outer + gro_payload_offset(p + e->l2) + h.gso_size;
        int per_send = segments_per_send(e, room);
        for (int i = 0; i < count; i += per_send) {
            int k = count - i < per_send ? count - i : per_send;
            if (s->nmsgs == SEND_MAX || s->niov + 2 * (size_t)k > IOV_OUT)
                flush_sends(e, s);
            size_t first = s->niov, len = 0;
            for (int j = i; j < i + k; j++)
                len += segment_datagram(e, s, r, &h, p, j, count);
            queue_send(s, r, first, len, k, room);
        }
    }
    if (s->nmsgs == SEND_MAX || s->niov == IOV_OUT)  /* so the next packet has a message and an iovec */
        flush_sends(e, s);
}

static void *out_main(void *arg)
{
    engine_t *e = arg;
    counters_t *c = &e->counters[OUT];
    out_state_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        fail(e, "device reader", ENOMEM);
        return NULL;
    }
    int ready;
    size_t head = headroom(e);
    while ((ready = wait_readable(e, OUT, e->dev_fd, "device reader (poll)")) > 0) {
        size_t lens[BATCH];
        int nread = 0, gone = 0;
        while (nread < BATCH) {
            ssize_t r = read(e->dev_fd, s->slots[nread] + head, SLOT - head);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                COUNT(c, dev_read_error, 1);
                gone = errno == EBADFD || errno == EBADF;
            }
            if (r < 0)
                break;
            lens[nread++] = (size_t)r;  /* an empty read is an (empty) packet, as os.read() has it */
        }
        if (nread == 0 && (ready == 2 || gone)) {  /* the device was deleted under us */
            fail(e, "device reader (the device is gone)", gone ? errno : EIO);
            break;
        }
        peer_table_t *t = table_hold(e);
        for (int i = 0; i < nread; i++)
            forward_one(e, s, t, s->slots[i] + head, lens[i]);
        table_unref(t);
        flush_sends(e, s);
    }
    free(s);
    return NULL;
}

/* ---- UDP -> tun ---------------------------------------------------------- */

typedef struct {
    unsigned char data[BATCH][DGRAM_MAX];  /* a datagram, or a UDP_GRO buffer of several */
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    sockaddr_any_t from[BATCH];
    unsigned char ctrl[BATCH][CMSG_SPACE(sizeof(int))];  /* UDP_GRO: the segment size */
    unsigned char *pkts[ACCEPT_MAX];     /* accepted IP packets (a tap's frame: e->l2 bytes before), waiting */
    size_t lens[ACCEPT_MAX];
    unsigned char verified[ACCEPT_MAX];  /* from a UDP_GRO buffer: UDP-checksummed (see gro_run) */
    int accepted;
} in_state_t;

static unsigned char no_offload[VNET_HDR_LEN];  /* an empty virtio header (never written) */

/* writev iov[0:niov] to the device: count packets, in one superpacket when super. */
static void dev_write(engine_t *e, const struct iovec *iov, int niov, int count, int super)
{
    counters_t *c = &e->counters[IN];
    ssize_t w;
    do {
        w = writev(e->dev_fd, iov, niov);
    } while (w < 0 && errno == EINTR);
    if (w < 0)
        COUNT(c, dev_write_error[errno_slot(errno)], count);  /* EIO: link down; EINVAL: malformed */
    else {
        COUNT(c, dev_tx_packets, count);
        COUNT(c, dev_tx_bytes, (size_t)w - (e->vnet ? VNET_HDR_LEN : 0));  /* what the device got, as Python counts */
        COUNT(c, dev_tx_superpackets, super);
    }
}

/* Write packets[0:count] (one run; on a tap each with its frame's Ethernet header) to the device: a
 * superpacket when count > 1. */
static void write_run(engine_t *e, unsigned char *const *pkts, const size_t *lens, int count)
{
    unsigned char hdr[GRO_HDR_MAX];
    struct iovec iov[GRO_MAX_SEGS + 1];  /* a run is at most GRO_MAX_SEGS packets (gro_run) */
    int niov = 0;
    if (count > 1) {
        iov[niov++] = (struct iovec){.iov_base = hdr, .iov_len = gro_header(pkts, lens, count, e->l2, hdr)};
        for (int i = 0; i < count; i++) {
            size_t skip = gro_payload_offset(pkts[i]);
            iov[niov++] = (struct iovec){.iov_base = pkts[i] + skip, .iov_len = lens[i] - skip};
        }
    } else {
        if (e->vnet)
            iov[niov++] = (struct iovec){.iov_base = no_offload, .iov_len = VNET_HDR_LEN};
        iov[niov++] = (struct iovec){.iov_base = pkts[0] - e->l2, .iov_len = lens[0] + e->l2};
    }
    dev_write(e, iov, niov, count, count > 1);
}

/* Write the accepted datagrams, coalescing TCP runs (and UDP runs, with udp_runs) into superpackets on a
 * vnet_hdr device. */
static void deliver(engine_t *e, in_state_t *s)
{
    for (int i = 0; i < s->accepted;) {
        int run = e->vnet ? gro_run(s->pkts + i, s->lens + i, s->verified + i, s->accepted - i, e->l2, e->udp_runs)
                          : 1;
        write_run(e, s->pkts + i, s->lens + i, run);
        i += run;
    }
    s->accepted = 0;
}

/* A kernel VTEP's superpacket: frame f[0:n] written whole with its GSO header h, after the frames
 * accepted before it (order kept). */
static void deliver_superpacket(engine_t *e, in_state_t *s, const vnet_hdr_t *h, unsigned char *f, size_t n)
{
    unsigned char b[VNET_HDR_LEN];
    vnet_put(b, h);
    deliver(e, s);
    struct iovec iov[2] = {{.iov_base = b, .iov_len = VNET_HDR_LEN}, {.iov_base = f, .iov_len = n}};
    dev_write(e, iov, 2, 1, 1);
}

/* The size of the datagrams a received buffer of n bytes holds: UDP_GRO's cmsg, else n (one). */
static size_t segment_size(struct msghdr *m, size_t n)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm != NULL; cm = CMSG_NXTHDR(m, cm)) {
        int size;
        if (cm->cmsg_level != SOL_UDP || cm->cmsg_type != UDP_GRO)
            continue;
        memcpy(&size, CMSG_DATA(cm), sizeof(size));
        if (size > 0 && (size_t)size < n)
            return (size_t)size;
    }
    return n;
}

/* The sender of a datagram received into a (namelen bytes of it used): its address as a node (IPv4 as
 * node_of_ipv4), *has_sender 0 when it has none (an IPv4-mapped IPv6 address is none: Python's
 * held_by would look its text up, which no canonical node IP is); *port_ok when it came from port. */
static addr6_t sender_of(const sockaddr_any_t *a, socklen_t namelen, uint16_t port, int *has_sender, int *port_ok)
{
    addr6_t node = {0, 0};
    *has_sender = *port_ok = 0;
    if (a->sa.sa_family == AF_INET && namelen >= sizeof(a->in)) {
        node = node_of_ipv4(ntohl(a->in.sin_addr.s_addr));
        *has_sender = 1;
        *port_ok = ntohs(a->in.sin_port) == port;
    } else if (a->sa.sa_family == AF_INET6 && namelen >= sizeof(a->in6)) {
        node = addr6_masked(a->in6.sin6_addr.s6_addr, (addr6_t){~0ull, ~0ull});
        *has_sender = !(node.hi == 0 && node.lo >> 32 == 0xFFFF);
        *port_ok = ntohs(a->in6.sin6_port) == port;
    }
    return node;
}

static void *in_main(void *arg)
{
    engine_t *e = arg;
    counters_t *c = &e->counters[IN];
    in_state_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        fail(e, "udp reader", ENOMEM);
        return NULL;
    }
    for (int i = 0; i < BATCH; i++) {
        s->iovs[i] = (struct iovec){.iov_base = s->data[i], .iov_len = DGRAM_MAX};
        s->msgs[i].msg_hdr.msg_iov = &s->iovs[i];
        s->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    while (wait_readable(e, IN, e->sock_fd, "udp reader (poll)") > 0) {
        int got = 0, errors = 0;
        for (int i = 0; i < BATCH; i++) {
            struct msghdr *m = &s->msgs[i].msg_hdr;
            m->msg_name = &s->from[i];
            m->msg_namelen = sizeof(s->from[i]);
            m->msg_control = s->ctrl[i];
            m->msg_controllen = sizeof(s->ctrl[i]);
        }
        while (errors < BATCH) {
            int r = recvmmsg(e->sock_fd, s->msgs, (unsigned)(BATCH - errors), MSG_DONTWAIT, NULL);
            if (r >= 0) {
                got = r;
                break;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno != EINTR)
                errors++;  /* e.g. ECONNREFUSED surfaced from ICMP: costs one slot, as in Python */
        }
        COUNT(c, sock_read_error, errors);
        uint64_t count = 0, bytes = 0, coalesced = 0;
        peer_table_t *t = table_hold(e);
        for (int i = 0; i < got; i++) {
            int has_sender, port_ok;
            addr6_t sender = sender_of(&s->from[i], s->msgs[i].msg_hdr.msg_namelen, e->port, &has_sender, &port_ok);
            size_t n = s->msgs[i].msg_len, seg = segment_size(&s->msgs[i].msg_hdr, n), len;
            bytes += n;
            coalesced += seg < n;
            for (size_t at = 0; at == 0 || at < n; at += len) {  /* an empty datagram is one, too */
                unsigned char *p = s->data[i] + at;
                len = n - at < seg ? n - at : seg;
                count++;
                size_t skip = 0;  /* VXLAN: the IP packet follows the VXLAN and Ethernet headers */
                vnet_hdr_t h = {0};
                int v;
                if (e->vxlan) {  /* any source port: kernel VTEPs pick one per flow */
                    v = vxlan_inbound(t, p, len, has_sender, sender, e->vni, e->own_mac, e->subnet, e->mask,
                                      e->has_subnet6 ? &e->subnet6 : NULL);
                    if (v == V_OK)
                        v = vxlan_tap_frame(p + VXLAN_HDR_LEN, len - VXLAN_HDR_LEN, e->tap_mtu, &h);
                    skip = VXLAN_HDR_LEN + ETH_HDR_LEN;
                } else {
                    v = table_inbound(t, p, len, has_sender, sender, port_ok, e->subnet, e->mask,
                                      e->has_subnet6 ? &e->subnet6 : NULL);
                }
                if (v != V_OK) {
                    COUNT(c, drops[v], 1);
                } else if (h.gso_type != GSO_NONE) {
                    deliver_superpacket(e, s, &h, p + VXLAN_HDR_LEN, len - VXLAN_HDR_LEN);
                } else {
                    if (s->accepted == ACCEPT_MAX)
                        deliver(e, s);
                    s->pkts[s->accepted] = p + skip;  /* V_OK: len > skip */
                    s->lens[s->accepted] = len - skip;
                    s->verified[s->accepted++] = seg < n;
                }
                if (n == 0)
                    break;
            }
        }
        table_unref(t);
        COUNT(c, rx_packets, count);
        COUNT(c, rx_bytes, bytes);
        COUNT(c, rx_coalesced, coalesced);
        deliver(e, s);
    }
    free(s);
    return NULL;
}

/* ---- life cycle ------------------------------------------------------------ */

int engine_init(engine_t *e, int dev_fd, int sock_fd, int vnet, int udp_gso, uint16_t port, uint32_t subnet,
                uint32_t mask, peer_table_t *table)
{
    memset(e, 0, sizeof(*e));
    e->dev_fd = dev_fd;
    e->sock_fd = sock_fd;
    e->vnet = vnet;
    e->udp_gso = udp_gso;
    e->port = port;
    e->subnet = subnet;
    e->mask = mask;
    e->table = table;
    pthread_mutex_init(&e->lock, NULL);
    e->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    e->notify_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->stop_fd < 0 || e->notify_fd < 0) {
        int code = errno;
        engine_destroy(e);
        return code;
    }
    return 0;
}

void engine_set_ipv6(engine_t *e, addr6_t subnet6, unsigned tunnel_mtu)
{
    e->subnet6 = subnet6;
    e->has_subnet6 = 1;
    e->tunnel_mtu = tunnel_mtu;
}

void engine_set_vxlan(engine_t *e, uint32_t vni, const unsigned char *own_mac, unsigned tap_mtu)
{
    e->vxlan = 1;
    e->l2 = ETH_HDR_LEN;
    e->tap_mtu = tap_mtu;
    e->vni = vni;
    memcpy(e->own_mac, own_mac, MAC_LEN);
}

void engine_set_table(engine_t *e, peer_table_t *t)
{
    pthread_mutex_lock(&e->lock);
    peer_table_t *old = e->table;
    e->table = t;
    pthread_mutex_unlock(&e->lock);
    table_unref(old);  /* freed here, or by the last thread still using it for a batch */
}

int engine_start(engine_t *e)
{
    if (e->running)
        return EBUSY;
    uint64_t drain;
    while (read(e->stop_fd, &drain, sizeof(drain)) > 0)
        continue;
    pthread_mutex_lock(&e->lock);  /* a failure belongs to the threads that had it, not to the new ones */
    e->failed = e->error_errno = 0;
    e->error_where = NULL;
    pthread_mutex_unlock(&e->lock);
    /* UDP_GRO takes a peer's UDP GSO sends whole (a kernel without it, < 5.0, splits them). Not on the
     * VXLAN wire: a kernel VTEP sends a pod's UDP GSO superpacket (QUIC stacks use UDP_SEGMENT) as one
     * VXLAN datagram, which a UDP_GRO socket takes whole too, with the INNER segment size in the cmsg,
     * so splitting it there turns every piece into garbage; without UDP_GRO our kernel cuts it into
     * VXLAN datagrams, as it cuts a checksummed peer's GSO sends. */
    int gro = !e->vxlan;
    (void)setsockopt(e->sock_fd, SOL_UDP, UDP_GRO, &gro, sizeof(gro));
    beat(e, OUT);  /* alive from the start: a beat of 0 until the threads first turn read as a stall */
    beat(e, IN);
    int code = pthread_create(&e->threads[OUT], NULL, out_main, e);
    if (code != 0)
        return code;
    code = pthread_create(&e->threads[IN], NULL, in_main, e);
    if (code != 0) {
        signal_fd(e->stop_fd);
        pthread_join(e->threads[OUT], NULL);
        return code;
    }
    for (int dir = OUT; dir <= IN; dir++)  /* as top -H shows them; scripts/bench finds them by it */
        pthread_setname_np(e->threads[dir], ENGINE_THREAD_NAME);
    e->running = 1;
    return 0;
}

void engine_stop(engine_t *e)
{
    if (!e->running)
        return;
    signal_fd(e->stop_fd);
    pthread_join(e->threads[OUT], NULL);
    pthread_join(e->threads[IN], NULL);
    e->running = 0;
}

void engine_destroy(engine_t *e)
{
    engine_stop(e);
    if (e->stop_fd >= 0)
        close(e->stop_fd);
    if (e->notify_fd >= 0)
        close(e->notify_fd);
    e->stop_fd = e->notify_fd = -1;
    table_unref(e->table);
    e->table = NULL;
    pthread_mutex_destroy(&e->lock);
}

int engine_take_answers(engine_t *e, answer_t *out, int max)
{
    uint64_t drain;
    while (read(e->notify_fd, &drain, sizeof(drain)) > 0)
        continue;
    pthread_mutex_lock(&e->lock);
    int n = e->nanswers < max ? e->nanswers : max;
    memcpy(out, e->answers, (size_t)n * sizeof(*out));
    memmove(e->answers, e->answers + n, (size_t)(e->nanswers - n) * sizeof(*out));
    e->nanswers -= n;
    pthread_mutex_unlock(&e->lock);
    return n;
}
