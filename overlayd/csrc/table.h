/*
 * The engine's peer table: an immutable open-addressing hash built from the
 * Python PeerTable (overlayd.encap.table) and shared by the forwarding threads
 * through a reference count. Lookups are O(1) whatever the number of peers.
 */
#ifndef OVERLAYD_TABLE_H
#define OVERLAYD_TABLE_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

/* An IPv6 address (or subnet, or mask) as two host-order halves. */
typedef struct {
    uint64_t hi, lo;
} addr6_t;

/* A node's underlay address, either family's: an IPv6 address, or an IPv4 one as ::ffff:a.b.c.d
 * (issue 17: one underlay family per node, IPv6 for a node without a PublicIP). */
static inline addr6_t node_of_ipv4(uint32_t ip)
{
    return (addr6_t){0, 0xFFFF00000000ull | ip};
}

static inline int addr6_eq(addr6_t a, addr6_t b)
{
    return a.hi == b.hi && a.lo == b.lo;
}

/* A sockaddr of either family, as sendmmsg and recvmmsg take it. */
typedef union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
} sockaddr_any_t;

/* The 16 bytes at p, masked with m. */
static inline addr6_t addr6_masked(const unsigned char *p, addr6_t m)
{
    addr6_t a = {0, 0};
    for (int i = 0; i < 8; i++) {
        a.hi = a.hi << 8 | p[i];
        a.lo = a.lo << 8 | p[8 + i];
    }
    return (addr6_t){a.hi & m.hi, a.lo & m.lo};
}

typedef struct {
    uint32_t subnet;         /* network address (host order); a slot is used when peer != NULL-equivalent */
    addr6_t subnet6;         /* an IPv6 route's network address (in routes6) */
    addr6_t node;            /* the peer's node IP (node_of_ipv4 for IPv4), when send_ok */
    unsigned char used;
    unsigned char send_ok;   /* node_ip parsed as an IPv4 or IPv6 address: datagrams can be sent to it */
    unsigned char canonical; /* ... and is written as a received address would be (inet_ntop's form) */
    unsigned char has_mac;   /* VXLAN: the peer published a VtepMAC (vtep_mac holds it) */
    unsigned char vtep_mac[6];
    sockaddr_any_t addr;     /* node_ip:port, ready for sendmmsg (sockaddr_in for IPv4, else sockaddr_in6) */
    socklen_t addr_len;
} route_t;

typedef struct {
    addr6_t ip;
    unsigned char used;
} sender_t;

typedef struct {
    int refs;                /* atomic: holders (the engine, a thread for one batch) */
    uint32_t mask;
    addr6_t mask6;           /* the IPv6 subnets' mask; zero: no IPv6 pool (IPv6 is not_ipv4) */
    int has6;                /* mask6 is not zero */
    size_t cap;              /* power of two, at least twice the entries */
    route_t *routes;         /* by subnet */
    route_t *routes6;        /* by IPv6 subnet */
    sender_t *senders;       /* node IPs holding at least one lease of either family (canonical ones) */
} peer_table_t;

/* A table for up to n subnets (of both families together) with mask and mask6 (one reference held by
 * the caller); NULL: out of memory. */
peer_table_t *table_new(uint32_t mask, addr6_t mask6, size_t n);
/* Add subnet's peer, whose node IP text parsed (send_ok) to node (IPv4 as node_of_ipv4), canonical or
 * not; vtep_mac: its 6-byte VtepMAC, or NULL (not a VXLAN peer). */
void table_add(peer_table_t *t, uint32_t subnet, addr6_t node, int send_ok, int canonical, uint16_t port,
               const unsigned char *vtep_mac);
/* table_add for an IPv6 subnet (its peer is reached over the same underlay as for IPv4). */
void table_add6(peer_table_t *t, addr6_t subnet6, addr6_t node, int send_ok, int canonical, uint16_t port,
                const unsigned char *vtep_mac);
peer_table_t *table_ref(peer_table_t *t);
void table_unref(peer_table_t *t);

/* udp.outbound (udp.route) with the tunnel's mtu (0: none): V_OK with *route set, or the drop. */
int table_outbound(const peer_table_t *t, const unsigned char *p, size_t n, unsigned mtu, const route_t **route);
/* Whether sender holds a lease: table.held_by(sender) is not None. */
int table_knows_sender(const peer_table_t *t, addr6_t sender);
/* receive.admit for a checked IPv4 packet p from a known sender: V_OK with *owner set to the route
 * of the sender's subnet holding the source, or the drop. */
int table_admit(const peer_table_t *t, const unsigned char *p, addr6_t sender, uint32_t subnet, uint32_t mask,
                const route_t **owner);
/* udp.admit for p[0:n] from a known sender: the IPv4 or IPv6 check, then receive.admit or admit6 for our
 * subnet/mask or our IPv6 subnet *subnet6 (NULL: none, IPv6 is not_ipv4). V_OK with *owner set, or the drop. */
int table_admit_ip(const peer_table_t *t, const unsigned char *p, size_t n, addr6_t sender, uint32_t subnet,
                   uint32_t mask, const addr6_t *subnet6, const route_t **owner);
/* udp.inbound for p[0:n] from sender (has_sender 0: no usable address), whose
 * source port matched ours (port_ok) or not, to our subnet/mask or IPv6 subnet *subnet6 (NULL: none):
 * V_OK or the drop. */
int table_inbound(const peer_table_t *t, const unsigned char *p, size_t n, int has_sender, addr6_t sender,
                  int port_ok, uint32_t subnet, uint32_t mask, const addr6_t *subnet6);

#endif
