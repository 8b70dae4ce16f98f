/* The engine's immutable peer table (see table.h). */
#include "table.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "packet.h"

static size_t slot_of(uint32_t key, size_t cap)
{
    return (size_t)((key * 0x9E3779B1u) >> 7) & (cap - 1);
}

static size_t slot6_of(addr6_t key, size_t cap)
{
    uint64_t h = (key.hi ^ (key.hi >> 29) ^ key.lo ^ (key.lo >> 31)) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 40) & (cap - 1);
}

peer_table_t *table_new(uint32_t mask, addr6_t mask6, size_t n)
{
    peer_table_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->refs = 1;
    t->mask = mask;
    t->mask6 = mask6;
    t->has6 = mask6.hi != 0 || mask6.lo != 0;
    t->cap = 8;
    while (t->cap < 2 * n)
        t->cap <<= 1;
    t->routes = calloc(t->cap, sizeof(*t->routes));
    t->routes6 = calloc(t->cap, sizeof(*t->routes6));
    t->senders = calloc(t->cap, sizeof(*t->senders));
    if (t->routes == NULL || t->routes6 == NULL || t->senders == NULL) {
        table_unref(t);
        return NULL;
    }
    return t;
}

static route_t *route_slot(const peer_table_t *t, uint32_t subnet)
{
    size_t i = slot_of(subnet, t->cap);
    while (t->routes[i].used && t->routes[i].subnet != subnet)
        i = (i + 1) & (t->cap - 1);
    return &t->routes[i];
}

static route_t *route6_slot(const peer_table_t *t, addr6_t subnet)
{
    size_t i = slot6_of(subnet, t->cap);
    while (t->routes6[i].used && (t->routes6[i].subnet6.hi != subnet.hi || t->routes6[i].subnet6.lo != subnet.lo))
        i = (i + 1) & (t->cap - 1);
    return &t->routes6[i];
}

static sender_t *sender_slot(const peer_table_t *t, addr6_t ip)
{
    size_t i = slot6_of(ip, t->cap);
    while (t->senders[i].used && !addr6_eq(t->senders[i].ip, ip))
        i = (i + 1) & (t->cap - 1);
    return &t->senders[i];
}

/* Fill route r (either family's) with its peer's facts; a canonical node IP becomes a known sender. */
static void fill_route(peer_table_t *t, route_t *r, addr6_t node, int send_ok, int canonical, uint16_t port,
                       const unsigned char *vtep_mac)
{
    r->used = 1;
    r->node = node;
    r->send_ok = (unsigned char)send_ok;
    r->canonical = (unsigned char)(send_ok && canonical);
    memset(&r->addr, 0, sizeof(r->addr));
    if (node.hi == 0 && node.lo >> 32 == 0xFFFF) {  /* IPv4 */
        r->addr.in.sin_family = AF_INET;
        r->addr.in.sin_port = htons(port);
        r->addr.in.sin_addr.s_addr = htonl((uint32_t)node.lo);
        r->addr_len = sizeof(r->addr.in);
    } else {
        r->addr.in6.sin6_family = AF_INET6;
        r->addr.in6.sin6_port = htons(port);
        for (int i = 0; i < 8; i++) {
            r->addr.in6.sin6_addr.s6_addr[i] = (unsigned char)(node.hi >> (56 - 8 * i));
            r->addr.in6.sin6_addr.s6_addr[8 + i] = (unsigned char)(node.lo >> (56 - 8 * i));
        }
        r->addr_len = sizeof(r->addr.in6);
    }
    r->has_mac = vtep_mac != NULL;
    if (vtep_mac != NULL)
        memcpy(r->vtep_mac, vtep_mac, sizeof(r->vtep_mac));
    if (r->canonical) {
        sender_t *s = sender_slot(t, node);
        s->used = 1;
        s->ip = node;
    }
}

void table_add(peer_table_t *t, uint32_t subnet, addr6_t node, int send_ok, int canonical, uint16_t port,
               const unsigned char *vtep_mac)
{
    route_t *r = route_slot(t, subnet);
    r->subnet = subnet;
    fill_route(t, r, node, send_ok, canonical, port, vtep_mac);
}

void table_add6(peer_table_t *t, addr6_t subnet6, addr6_t node, int send_ok, int canonical, uint16_t port,
                const unsigned char *vtep_mac)
{
    route_t *r = route6_slot(t, subnet6);
    r->subnet6 = subnet6;
    fill_route(t, r, node, send_ok, canonical, port, vtep_mac);
}

peer_table_t *table_ref(peer_table_t *t)
{
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
    return t;
}

void table_unref(peer_table_t *t)
{
    if (t == NULL || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    free(t->routes);
    free(t->routes6);
    free(t->senders);
    free(t);
}

int table_outbound(const peer_table_t *t, const unsigned char *p, size_t n, unsigned mtu, const route_t **route)
{
    const route_t *r;
    if (is_ipv6(p, n, t->has6)) {
        int v = ipv6_check(p, n);
        if (v != V_OK)
            return v;
        r = route6_slot(t, addr6_masked(p + 24, t->mask6));
        if (r->used && mtu != 0 && IPV6_HDR_LEN + be16(p + 4) > mtu)
            return V_TOO_BIG;
    } else {
        int v = ipv4_check(p, n);
        if (v != V_OK)
            return v;
        r = route_slot(t, be32(p + 16) & t->mask);
    }
    if (!r->used)
        return V_NO_LEASE;
    *route = r;
    return V_OK;
}

int table_knows_sender(const peer_table_t *t, addr6_t sender)
{
    return sender_slot(t, sender)->used;
}

int table_admit(const peer_table_t *t, const unsigned char *p, addr6_t sender, uint32_t subnet, uint32_t mask,
                const route_t **owner)
{
    uint32_t dst = be32(p + 16), host_bits = ~mask;
    if ((dst & mask) != subnet)
        return V_NOT_OUR_SUBNET;
    if (host_bits > 1 && dst == (subnet | host_bits))
        return V_TO_BROADCAST_ADDRESS;
    const route_t *r = route_slot(t, be32(p + 12) & mask);  /* held.get(src & mask) */
    if (!(r->used && r->canonical && addr6_eq(r->node, sender)))
        return V_SPOOFED_SOURCE;
    *owner = r;
    return V_OK;
}

/* receive.admit6 for a checked IPv6 packet p from a known sender, to our IPv6 subnet. */
static int table_admit6(const peer_table_t *t, const unsigned char *p, addr6_t sender, addr6_t subnet6,
                        const route_t **owner)
{
    addr6_t dst = addr6_masked(p + 24, t->mask6);
    if (dst.hi != subnet6.hi || dst.lo != subnet6.lo)
        return V_NOT_OUR_SUBNET;
    const route_t *r = route6_slot(t, addr6_masked(p + 8, t->mask6));  /* held.get(src & mask6 | V6_KEY) */
    if (!(r->used && r->canonical && addr6_eq(r->node, sender)))
        return V_SPOOFED_SOURCE;
    *owner = r;
    return V_OK;
}

int table_admit_ip(const peer_table_t *t, const unsigned char *p, size_t n, addr6_t sender, uint32_t subnet,
                   uint32_t mask, const addr6_t *subnet6, const route_t **owner)
{
    int v;
    if (is_ipv6(p, n, subnet6 != NULL)) {
        v = ipv6_check(p, n);
        return v != V_OK ? v : table_admit6(t, p, sender, *subnet6, owner);
    }
    v = ipv4_check(p, n);
    return v != V_OK ? v : table_admit(t, p, sender, subnet, mask, owner);
}

int table_inbound(const peer_table_t *t, const unsigned char *p, size_t n, int has_sender, addr6_t sender,
                  int port_ok, uint32_t subnet, uint32_t mask, const addr6_t *subnet6)
{
    if (!has_sender || !table_knows_sender(t, sender))
        return V_UNKNOWN_SENDER;
    if (!port_ok)
        return V_WRONG_SOURCE_PORT;
    const route_t *owner;
    return table_admit_ip(t, p, n, sender, subnet, mask, subnet6, &owner);
}
