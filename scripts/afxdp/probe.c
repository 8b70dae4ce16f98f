// SPDX-License-Identifier: GPL-2.0
/* The AF_XDP experiment (scripts/bench-afxdp): the tunnel's underlay half, one thread, four ways.
 *
 *   probe sock-recv PORT SECONDS                 UDP socket, recvmmsg in batches of 64
 *   probe xdp-recv IFACE OBJ SECONDS             steer.bpf.o on IFACE, an AF_XDP socket on queue 0
 *   probe sock-send DST PORT SIZE SECONDS        UDP socket, sendmmsg in batches of 64
 *   probe xdp-send IFACE SRCMAC DSTMAC SRC DST PORT SIZE SECONDS   AF_XDP TX ring, batches of 64
 *
 * Each prints one JSON line: {"packets": N, "bytes": N, "seconds": S, "cpu": S, "mode": "..."}
 * (cpu: its own user and system seconds, set-up included); a receiver
 * first prints "ready" once it receives. The AF_XDP
 * socket is set up with the kernel's own interface (no libxdp), in copy mode (veth has no zero
 * copy); libbpf only loads and attaches the XDP program. Every loop ends after SECONDS. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_XDP
#define SOL_XDP 283
#endif
#ifndef AF_XDP
#define AF_XDP 44
#endif

#define BATCH 64
#define FRAMES 4096 /* UMEM frames, and every ring's size */
#define FRAME 2048

static void die(const char *what)
{
    fprintf(stderr, "probe: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void report(const char *mode, uint64_t packets, uint64_t bytes, double seconds)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("{\"mode\": \"%s\", \"packets\": %llu, \"bytes\": %llu, \"seconds\": %.3f, \"cpu\": %.3f}\n", mode,
           (unsigned long long)packets, (unsigned long long)bytes, seconds, cpu);
}

/* ---- UDP sockets ---- */

static int sock_recv(int port, double seconds)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    static char bufs[BATCH][FRAME];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    int rcvbuf = 4 << 20;
    uint64_t packets = 0, bytes = 0;

    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0)
        die("udp socket");
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){bufs[i], FRAME};
        msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iov[i], .msg_iovlen = 1}};
    }
    printf("ready\n");
    fflush(stdout);
    double start = now(), end = start + seconds;
    while (now() < end) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        for (int i = 0; i < n; i++) {
            packets++;
            bytes += msgs[i].msg_len;
        }
    }
    report("sock-recv", packets, bytes, now() - start);
    return 0;
}

static int sock_send(const char *dst, int port, int size, double seconds)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    static char payload[FRAME];
    struct iovec iov = {payload, (size_t)size};
    struct mmsghdr msgs[BATCH];
    uint64_t packets = 0;

    if (fd < 0 || inet_pton(AF_INET, dst, &sin.sin_addr) != 1)
        die("udp socket");
    for (int i = 0; i < BATCH; i++)
        msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_name = &sin, .msg_namelen = sizeof sin,
                                               .msg_iov = &iov, .msg_iovlen = 1}};
    double start = now(), end = start + seconds;
    while (now() < end) {
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n > 0)
            packets += n;
    }
    report("sock-send", packets, packets * size, now() - start);
    return 0;
}

/* ---- AF_XDP ---- */

struct ring {
    uint32_t *producer, *consumer;
    void *desc;
};

struct xsk {
    int fd;
    char *umem;
    struct ring fill, comp, rx, tx;
};

static void map_ring(int fd, struct xdp_ring_offset *off, size_t entry, off_t pgoff, struct ring *r)
{
    char *m = mmap(NULL, off->desc + FRAMES * entry, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   pgoff);
    if (m == MAP_FAILED)
        die("mmap ring");
    r->producer = (uint32_t *)(m + off->producer);
    r->consumer = (uint32_t *)(m + off->consumer);
    r->desc = m + off->desc;
}

static void xsk_open(struct xsk *x, int ifindex)
{
    struct xdp_umem_reg reg = {.len = (uint64_t)FRAMES * FRAME, .chunk_size = FRAME};
    struct xdp_mmap_offsets off;
    socklen_t len = sizeof off;
    int size = FRAMES;

    x->fd = socket(AF_XDP, SOCK_RAW, 0);
    if (x->fd < 0)
        die("AF_XDP socket");
    x->umem = mmap(NULL, reg.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (x->umem == MAP_FAILED)
        die("umem");
    reg.addr = (uint64_t)(uintptr_t)x->umem;
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof reg) < 0
        || setsockopt(x->fd, SOL_XDP, XDP_UMEM_FILL_RING, &size, sizeof size) < 0
        || setsockopt(x->fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &size, sizeof size) < 0
        || setsockopt(x->fd, SOL_XDP, XDP_RX_RING, &size, sizeof size) < 0
        || setsockopt(x->fd, SOL_XDP, XDP_TX_RING, &size, sizeof size) < 0
        || getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &len) < 0)
        die("AF_XDP rings");
    map_ring(x->fd, &off.fr, sizeof(uint64_t), XDP_UMEM_PGOFF_FILL_RING, &x->fill);
    map_ring(x->fd, &off.cr, sizeof(uint64_t), XDP_UMEM_PGOFF_COMPLETION_RING, &x->comp);
    map_ring(x->fd, &off.rx, sizeof(struct xdp_desc), XDP_PGOFF_RX_RING, &x->rx);
    map_ring(x->fd, &off.tx, sizeof(struct xdp_desc), XDP_PGOFF_TX_RING, &x->tx);
    struct sockaddr_xdp sxdp = {.sxdp_family = AF_XDP, .sxdp_ifindex = ifindex, .sxdp_queue_id = 0,
                                .sxdp_flags = XDP_COPY};
    if (bind(x->fd, (struct sockaddr *)&sxdp, sizeof sxdp) < 0)
        die("AF_XDP bind");
}

static uint32_t load(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static int xdp_recv(const char *iface, const char *obj_path, double seconds)
{
    int ifindex = if_nametoindex(iface), key = 0;
    struct bpf_object *obj = bpf_object__open_file(obj_path, NULL);
    struct xsk x;
    uint32_t flags = XDP_FLAGS_DRV_MODE;
    uint64_t packets = 0, bytes = 0;
    volatile unsigned char sink; /* each packet's data is read, as a decapsulation would */

    if (!ifindex || !obj || bpf_object__load(obj))
        die("loading the XDP program");
    int prog = bpf_program__fd(bpf_object__find_program_by_name(obj, "steer"));
    if (bpf_xdp_attach(ifindex, prog, flags, NULL) < 0) {
        flags = XDP_FLAGS_SKB_MODE;
        if (bpf_xdp_attach(ifindex, prog, flags, NULL) < 0)
            die("attaching the XDP program");
    }
    xsk_open(&x, ifindex);
    int sockets = bpf_object__find_map_fd_by_name(obj, "sockets");
    if (bpf_map_update_elem(sockets, &key, &x.fd, 0) < 0)
        die("XSKMAP");
    uint64_t *fill = x.fill.desc;
    struct xdp_desc *rx = x.rx.desc;
    for (uint32_t i = 0; i < FRAMES; i++)
        fill[i] = (uint64_t)i * FRAME;
    store(x.fill.producer, FRAMES);
    uint32_t fill_prod = FRAMES;
    printf("ready\n");
    fflush(stdout);
    double start = now(), end = start + seconds;
    while (now() < end) {
        struct pollfd p = {x.fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        uint32_t prod = load(x.rx.producer), cons = *x.rx.consumer;
        for (; cons != prod; cons++) {
            struct xdp_desc *d = &rx[cons & (FRAMES - 1)];
            packets++;
            bytes += d->len - ETH_HLEN - 28; /* the UDP payload, as the socket counts it */
            sink = (unsigned char)x.umem[d->addr + ETH_HLEN + 28]; /* the inner packet's first byte */
            fill[fill_prod++ & (FRAMES - 1)] = d->addr & ~(uint64_t)(FRAME - 1);
        }
        store(x.rx.consumer, cons);
        store(x.fill.producer, fill_prod);
    }
    double took = now() - start;
    bpf_xdp_detach(ifindex, flags, NULL);
    (void)sink;
    report(flags == XDP_FLAGS_DRV_MODE ? "xdp-recv" : "xdp-recv-skb", packets, bytes, took);
    return 0;
}

static uint16_t ip_checksum(const void *data, int len)
{
    const uint16_t *w = data;
    uint32_t sum = 0;
    for (; len > 1; len -= 2)
        sum += *w++;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static int parse_mac(const char *text, unsigned char *mac)
{
    return sscanf(text, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3], &mac[4],
                  &mac[5]) == 6 ? 0 : -1;
}

static int xdp_send(const char *iface, const char *src_mac, const char *dst_mac, const char *src,
                    const char *dst, int port, int size, double seconds)
{
    int ifindex = if_nametoindex(iface);
    struct xsk x;
    unsigned char frame[FRAME] = {0};
    struct ethhdr *eth = (struct ethhdr *)frame;
    struct iphdr *ip = (struct iphdr *)(eth + 1);
    struct udphdr *udp = (struct udphdr *)(ip + 1);
    int len = ETH_HLEN + 28 + size;
    uint64_t packets = 0;

    if (!ifindex || size + 28 + ETH_HLEN > FRAME || parse_mac(src_mac, eth->h_source)
        || parse_mac(dst_mac, eth->h_dest) || inet_pton(AF_INET, src, &ip->saddr) != 1
        || inet_pton(AF_INET, dst, &ip->daddr) != 1)
        die("xdp-send arguments");
    eth->h_proto = htons(ETH_P_IP);
    *ip = (struct iphdr){.version = 4, .ihl = 5, .ttl = 64, .protocol = IPPROTO_UDP,
                         .tot_len = htons(28 + size), .saddr = ip->saddr, .daddr = ip->daddr};
    ip->check = ip_checksum(ip, sizeof *ip);
    *udp = (struct udphdr){.source = htons(port), .dest = htons(port), .len = htons(8 + size)}; /* checksum 0 */
    xsk_open(&x, ifindex);
    for (uint32_t i = 0; i < FRAMES; i++)
        memcpy(x.umem + (uint64_t)i * FRAME, frame, len);
    struct xdp_desc *tx = x.tx.desc;
    uint32_t tx_prod = 0, outstanding = 0;
    double start = now(), end = start + seconds;
    while (now() < end) {
        uint32_t done = load(x.comp.producer) - *x.comp.consumer;
        store(x.comp.consumer, *x.comp.consumer + done);
        outstanding -= done;
        uint32_t n = FRAMES - outstanding < BATCH ? FRAMES - outstanding : BATCH;
        for (uint32_t i = 0; i < n; i++, tx_prod++)
            tx[tx_prod & (FRAMES - 1)] = (struct xdp_desc){.addr = (uint64_t)(tx_prod & (FRAMES - 1)) * FRAME,
                                                           .len = (uint32_t)len};
        store(x.tx.producer, tx_prod);
        outstanding += n;
        packets += n;
        if (sendto(x.fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno != EAGAIN && errno != EBUSY
            && errno != ENOBUFS)
            die("AF_XDP kick");
    }
    packets -= outstanding - (load(x.comp.producer) - *x.comp.consumer); /* queued, never sent */
    report("xdp-send", packets, packets * size, now() - start);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "sock-recv"))
        return sock_recv(atoi(argv[2]), atof(argv[3]));
    if (argc == 5 && !strcmp(argv[1], "xdp-recv"))
        return xdp_recv(argv[2], argv[3], atof(argv[4]));
    if (argc == 6 && !strcmp(argv[1], "sock-send"))
        return sock_send(argv[2], atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
    if (argc == 10 && !strcmp(argv[1], "xdp-send"))
        return xdp_send(argv[2], argv[3], argv[4], argv[5], argv[6], atoi(argv[7]), atoi(argv[8]),
                        atof(argv[9]));
    fprintf(stderr, "usage: see the comment at the top of probe.c\n");
    return 2;
}
