/*
 * The forwarding engine: two threads (tun -> UDP, UDP -> tun) that own the
 * hot loop, block in poll() and never touch Python. See the design note in
 * overlayd/_fastpath.c.
 */
#ifndef OVERLAYD_ENGINE_H
#define OVERLAYD_ENGINE_H

#include <pthread.h>
#include <stdint.h>

#include "packet.h"
#include "table.h"
#include "vxlan.h"

#define BATCH 64          /* reads or datagrams per round, at most */
#define PKT_MAX 65535     /* bytes per packet */
#define ERRNO_SLOTS 160   /* per-errno counters; larger codes share the last slot */
#define ANSWER_MAX 64     /* dropped NO_LEASE and TOO_BIG packets waiting for Python's ICMP answer */
#define ANSWER_BYTES 1246 /* their first bytes: a tap's 14-byte Ethernet header and the 1232 bytes an ICMPv6
                            error quotes at most (RFC 4443 2.4 (c): 1280 bytes in all); ICMP quotes less */

enum { OUT = 0, IN = 1 };

/* One thread's counters: written by that thread only, read by Python at any time. */
typedef struct {
    uint64_t dev_rx_packets, dev_rx_bytes, dev_read_error, tx_packets, tx_bytes, tx_dropped;
    uint64_t rx_packets, rx_bytes, sock_read_error, dev_tx_packets, dev_tx_bytes;  /* bytes: without a virtio header */
    uint64_t dev_rx_superpackets, dev_tx_superpackets;  /* reads segmented, coalesced writes */
    uint64_t tx_gso_sends, rx_coalesced;  /* UDP GSO sends (several datagrams each), UDP_GRO buffers split */
    uint64_t drops[V_COUNT];
    uint64_t tx_error[ERRNO_SLOTS];         /* by errno; 0: the peer's node IP is not an address */
    uint64_t dev_write_error[ERRNO_SLOTS];
} counters_t;

typedef struct {
    unsigned char data[ANSWER_BYTES];
    size_t len;
    int verdict;              /* V_NO_LEASE or V_TOO_BIG */
} answer_t;

typedef struct {
    int dev_fd, sock_fd, vnet;   /* vnet: the device speaks virtio_net_hdr (superpackets) */
    int udp_gso;                 /* send a superpacket's segments with UDP GSO (the socket checksums) */
    int udp_runs;                /* vnet: coalesce UDP datagrams too (the device takes UDP GSO writes) */
    uint16_t port;
    uint32_t subnet, mask;
    addr6_t subnet6;             /* our IPv6 subnet, when has_subnet6 (else IPv6 from peers is not_ipv4) */
    int has_subnet6;
    unsigned tunnel_mtu;         /* the tun's: a longer IPv6 packet is too_big (0: no limit) */
    int vxlan;                   /* the device is a tap and the wire VXLAN on vni (else a tun, IP in UDP) */
    size_t l2;                   /* link-layer bytes in front of a device's IP packet: ETH_HDR_LEN on the tap */
    unsigned tap_mtu;            /* VXLAN: larger inner IP packets are superpackets from the wire (PKT_MAX: none) */
    uint32_t vni;
    unsigned char own_mac[MAC_LEN];  /* our VtepMAC: inbound frames must be addressed to it (or broadcast) */
    int stop_fd;                 /* eventfd: the threads end when it is readable */
    int notify_fd;               /* eventfd: Python has answers to take or an error to read */
    pthread_mutex_t lock;        /* guards table (the pointer), answers and the error */
    peer_table_t *table;
    pthread_t threads[2];
    int running;
    counters_t counters[2];      /* [OUT], [IN] */
    int64_t beat_ns[2];          /* CLOCK_MONOTONIC of each thread's last turn */
    answer_t answers[ANSWER_MAX];
    int nanswers;
    int failed, error_errno;
    const char *error_where;
} engine_t;

/* 0, or an errno (the eventfds could not be made). */
int engine_init(engine_t *e, int dev_fd, int sock_fd, int vnet, int udp_gso, uint16_t port, uint32_t subnet,
                uint32_t mask, peer_table_t *table);
/* Before engine_start: forward IPv6 too, to and from our IPv6 subnet subnet6, refusing IPv6 packets
 * longer than tunnel_mtu (0: no limit) as too_big (issue 17). */
void engine_set_ipv6(engine_t *e, addr6_t subnet6, unsigned tunnel_mtu);
/* Before engine_start: speak VXLAN on vni over a tap whose (and our VTEP's) MAC is own_mac. On a
 * vnet_hdr tap, tap_mtu is its MTU: a kernel VTEP's TCP superpacket beyond it is written as one GSO
 * write (see vxlan_tap_frame); on a plain tap pass PKT_MAX. */
void engine_set_vxlan(engine_t *e, uint32_t vni, const unsigned char *own_mac, unsigned tap_mtu);
/* Make t (one reference handed over) the table every later batch uses. */
void engine_set_table(engine_t *e, peer_table_t *t);
/* Start the threads: 0 or an errno. Clears the failure earlier threads recorded (engine_t.failed). Turns
 * UDP_GRO on for sock_fd on the UDP wire, off on VXLAN's. */
int engine_start(engine_t *e);
/* Wake and join the threads (no-op when not running). */
void engine_stop(engine_t *e);
void engine_destroy(engine_t *e);
/* Move up to max queued answers (packets dropped for V_NO_LEASE or V_TOO_BIG) to out; returns how many. */
int engine_take_answers(engine_t *e, answer_t *out, int max);

#endif
