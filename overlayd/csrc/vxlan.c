/* The userspace VXLAN framing (see vxlan.h); every rule mirrors overlayd.encap.ether / .vxlan. */
#include "vxlan.h"

#include <string.h>

#include "packet.h"

static const unsigned char broadcast[MAC_LEN] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

/* Why frame f[0:n] is no Ethernet frame carrying IPv4, or V_OK (the IPv4 header is not looked at). */
static int ether_check(const unsigned char *f, size_t n)
{
    if (n < ETH_HDR_LEN)
        return V_TRUNCATED;
    if (f[12] != 0x08 || f[13] != 0x00)
        return V_NOT_IPV4;
    return V_OK;
}

/* ether._ipv4_payload_check: why frame f[0:n] does not carry a usable IPv4 packet, or V_OK. */
static int ipv4_payload_check(const unsigned char *f, size_t n)
{
    int v = ether_check(f, n);
    return v != V_OK ? v : ipv4_check(f + ETH_HDR_LEN, n - ETH_HDR_LEN);
}

int vxlan_outbound(const peer_table_t *t, const unsigned char *f, size_t n, const route_t **route)
{
    int v = ether_check(f, n);  /* table_outbound checks the IPv4 header itself */
    if (v != V_OK)
        return v;
    const route_t *r;
    v = table_outbound(t, f + ETH_HDR_LEN, n - ETH_HDR_LEN, &r);
    if (v != V_OK)
        return v;
    if (!r->has_mac)  /* peer.vtep_mac is None */
        return V_NO_LEASE;
    *route = r;
    return V_OK;
}

unsigned char *vxlan_encapsulate(unsigned char *f, const route_t *r, uint32_t vni)
{
    unsigned char *h = f - VXLAN_HDR_LEN;
    memset(h, 0, VXLAN_HDR_LEN);
    h[0] = VXLAN_FLAG_I;
    put_be32(h + 4, (vni & 0xFFFFFFu) << 8);
    memcpy(f, r->vtep_mac, MAC_LEN);
    return h;
}

/* ether._partial_field: the offset (from p) of the TCP/UDP checksum field of the checked IPv4 packet
 * p[0:n] and its L4 length, when that field holds what a kernel with checksum offload writes there:
 * the folded pseudo-header sum, not 0. 0 for fragments, other protocols, short L4 headers and any
 * other value. */
static int partial_field(const unsigned char *p, size_t n, unsigned *at, unsigned *l4len)
{
    unsigned proto = p[9], min_len, offset;
    if (proto == PROTO_TCP) {
        min_len = 20;
        offset = 16;
    } else if (proto == PROTO_UDP) {
        min_len = 8;
        offset = 6;
    } else {
        return 0;
    }
    if ((p[6] & 0x3F) || p[7])  /* MF or a fragment offset */
        return 0;
    size_t ihl = (p[0] & 0x0Fu) * 4u, total = be16(p + 2);
    if (total > n || ihl > total || total - ihl < min_len)  /* ipv4_check holds the first two */
        return 0;
    unsigned field = be16(p + ihl + offset);
    if (field != csum_fold(pseudo_sum(p, (unsigned)(total - ihl))) || field == 0)
        return 0;
    *at = (unsigned)ihl + offset;
    *l4len = (unsigned)(total - ihl);
    return 1;
}

int complete_partial_checksum(unsigned char *p, size_t n)
{
    unsigned at, l4len;
    if (!partial_field(p, n, &at, &l4len))
        return 0;
    unsigned char *l4 = p + (p[0] & 0x0Fu) * 4u;
    uint64_t body = csum_add(0, l4, l4len);
    if (csum_fold(be16(p + at) + body) == 0xFFFF)  /* valid as it is */
        return 0;
    unsigned full = ~csum_fold(body) & 0xFFFFu;
    if (p[9] == PROTO_UDP && full == 0)
        full = 0xFFFF;  /* RFC 768: a computed 0 is sent as all ones */
    put_be16(p + at, full);
    return 1;
}

int vxlan_inbound(const peer_table_t *t, const unsigned char *d, size_t n, int has_sender, uint32_t sender,
                  uint32_t vni, const unsigned char *own_mac, uint32_t subnet, uint32_t mask)
{
    if (!has_sender || !table_knows_sender(t, sender))
        return V_UNKNOWN_SENDER;
    /* vxlan.decapsulate */
    if (n < VXLAN_HDR_LEN + ETH_HDR_LEN)
        return V_TRUNCATED;
    if (!(d[0] & VXLAN_FLAG_I))
        return V_BAD_VXLAN;
    if ((be32(d + 4) >> 8) != vni)
        return V_WRONG_VNI;
    /* ether.tap_inbound */
    const unsigned char *f = d + VXLAN_HDR_LEN;
    size_t len = n - VXLAN_HDR_LEN;
    int v = ipv4_payload_check(f, len);
    if (v != V_OK)
        return v;
    if (memcmp(f, own_mac, MAC_LEN) != 0 && memcmp(f, broadcast, MAC_LEN) != 0)
        return V_NOT_FOR_US;
    const route_t *owner;
    v = table_admit(t, f + ETH_HDR_LEN, sender, subnet, mask, &owner);
    if (v != V_OK)
        return v;
    if (owner->has_mac && memcmp(f + MAC_LEN, owner->vtep_mac, MAC_LEN) != 0)
        return V_WRONG_SOURCE_MAC;
    return V_OK;
}

int vxlan_tap_frame(unsigned char *f, size_t n, unsigned mtu, vnet_hdr_t *h)
{
    unsigned char *p = f + ETH_HDR_LEN;  /* checked by vxlan_inbound: an IPv4 packet, total <= its bytes */
    *h = (vnet_hdr_t){0};
    if (be16(p + 2) <= mtu) {
        complete_partial_checksum(p, n - ETH_HDR_LEN);
        return V_OK;
    }
    unsigned at, l4len;  /* ether.cut_superpacket: TCP with the partial checksum mark, else a drop */
    int cut = p[9] == PROTO_TCP && partial_field(p, n - ETH_HDR_LEN, &at, &l4len);
    return cut && gso_wire_superpacket(p, mtu, ETH_HDR_LEN, h) == 0 ? V_OK : V_BAD_IP_HEADER;
}
