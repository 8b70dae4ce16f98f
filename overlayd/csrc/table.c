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

peer_table_t *table_new(uint32_t mask, size_t n)
{
    peer_table_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->refs = 1;
    t->mask = mask;
    t->cap = 8;
    while (t->cap < 2 * n)
        t->cap <<= 1;
    t->routes = calloc(t->cap, sizeof(*t->routes));
    t->senders = calloc(t->cap, sizeof(*t->senders));
    if (t->routes == NULL || t->senders == NULL) {
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

static sender_t *sender_slot(const peer_table_t *t, uint32_t ip)
{
    size_t i = slot_of(ip, t->cap);
    while (t->senders[i].used && t->senders[i].ip != ip)
        i = (i + 1) & (t->cap - 1);
    return &t->senders[i];
}

void table_add(peer_table_t *t, uint32_t subnet, uint32_t node_ip, int send_ok, int canonical, uint16_t port,
               const unsigned char *vtep_mac)
{
    route_t *r = route_slot(t, subnet);
    r->used = 1;
    r->subnet = subnet;
    r->node_ip = node_ip;
    r->send_ok = (unsigned char)send_ok;
    r->canonical = (unsigned char)(send_ok && canonical);
    r->addr.sin_family = AF_INET;
    r->addr.sin_port = htons(port);
    r->addr.sin_addr.s_addr = htonl(node_ip);
    r->has_mac = vtep_mac != NULL;
    if (vtep_mac != NULL)
        memcpy(r->vtep_mac, vtep_mac, sizeof(r->vtep_mac));
    if (r->canonical) {
        sender_t *s = sender_slot(t, node_ip);
        s->used = 1;
        s->ip = node_ip;
    }
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
    free(t->senders);
    free(t);
}

int table_outbound(const peer_table_t *t, const unsigned char *p, size_t n, const route_t **route)
{
    int v = ipv4_check(p, n);
    if (v != V_OK)
        return v;
    const route_t *r = route_slot(t, be32(p + 16) & t->mask);
    if (!r->used)
        return V_NO_LEASE;
    *route = r;
    return V_OK;
}

int table_knows_sender(const peer_table_t *t, uint32_t sender)
{
    return sender_slot(t, sender)->used;
}

int table_admit(const peer_table_t *t, const unsigned char *p, uint32_t sender, uint32_t subnet, uint32_t mask,
                const route_t **owner)
{
    uint32_t dst = be32(p + 16), host_bits = ~mask;
    if ((dst & mask) != subnet)
        return V_NOT_OUR_SUBNET;
    if (host_bits > 1 && dst == (subnet | host_bits))
        return V_TO_BROADCAST_ADDRESS;
    const route_t *r = route_slot(t, be32(p + 12) & mask);  /* held.get(src & mask) */
    if (!(r->used && r->canonical && r->node_ip == sender))
        return V_SPOOFED_SOURCE;
    *owner = r;
    return V_OK;
}

int table_inbound(const peer_table_t *t, const unsigned char *p, size_t n, int has_sender, uint32_t sender,
                  int port_ok, uint32_t subnet, uint32_t mask)
{
    if (!has_sender || !table_knows_sender(t, sender))
        return V_UNKNOWN_SENDER;
    if (!port_ok)
        return V_WRONG_SOURCE_PORT;
    const route_t *owner;
    int v = ipv4_check(p, n);
    return v != V_OK ? v : table_admit(t, p, sender, subnet, mask, &owner);
}
