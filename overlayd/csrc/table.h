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

typedef struct {
    uint32_t subnet;         /* network address (host order); a slot is used when peer != NULL-equivalent */
    uint32_t node_ip;        /* the peer's node IP (host order), when send_ok */
    unsigned char used;
    unsigned char send_ok;   /* node_ip parsed as an IPv4 address: datagrams can be sent to it */
    unsigned char canonical; /* ... and is written as a received address would be (dotted decimal) */
    unsigned char has_mac;   /* VXLAN: the peer published a VtepMAC (vtep_mac holds it) */
    unsigned char vtep_mac[6];
    struct sockaddr_in addr; /* node_ip:port, ready for sendmmsg */
} route_t;

typedef struct {
    uint32_t ip;
    unsigned char used;
} sender_t;

typedef struct {
    int refs;                /* atomic: holders (the engine, a thread for one batch) */
    uint32_t mask;
    size_t cap;              /* power of two, at least twice the entries */
    route_t *routes;         /* by subnet */
    sender_t *senders;       /* node IPs holding at least one lease (canonical ones) */
} peer_table_t;

/* A table for up to n subnets with mask (one reference held by the caller); NULL: out of memory. */
peer_table_t *table_new(uint32_t mask, size_t n);
/* Add subnet's peer, whose node IP text parsed (send_ok) to node_ip, canonical or not; vtep_mac: its
 * 6-byte VtepMAC, or NULL (not a VXLAN peer). */
void table_add(peer_table_t *t, uint32_t subnet, uint32_t node_ip, int send_ok, int canonical, uint16_t port,
               const unsigned char *vtep_mac);
peer_table_t *table_ref(peer_table_t *t);
void table_unref(peer_table_t *t);

/* udp.outbound: V_OK with *route set, or the drop. */
int table_outbound(const peer_table_t *t, const unsigned char *p, size_t n, const route_t **route);
/* Whether sender (host order) holds a lease: table.held_by(sender) is not None. */
int table_knows_sender(const peer_table_t *t, uint32_t sender);
/* receive.admit for a checked IPv4 packet p from a known sender: V_OK with *owner set to the route
 * of the sender's subnet holding the source, or the drop. */
int table_admit(const peer_table_t *t, const unsigned char *p, uint32_t sender, uint32_t subnet, uint32_t mask,
                const route_t **owner);
/* udp.inbound for p[0:n] from sender (host order; has_sender 0: not an IPv4 address), whose
 * source port matched ours (port_ok) or not, to our subnet/mask: V_OK or the drop. */
int table_inbound(const peer_table_t *t, const unsigned char *p, size_t n, int has_sender, uint32_t sender,
                  int port_ok, uint32_t subnet, uint32_t mask);

#endif
