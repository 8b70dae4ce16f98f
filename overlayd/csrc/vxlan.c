/* The userspace VXLAN framing (see vxlan.h); every rule mirrors overlayd.encap.ether / .vxlan. */
#include "vxlan.h"

#include <string.h>

#include "packet.h"

static const unsigned char broadcast[MAC_LEN] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

/* ether.is_ipv6: frame f[0:n] is handled as IPv6 (EtherType 0x86DD, IPv6 enabled). */
static int frame_is_ipv6(const unsigned char *f, size_t n, int enabled)
{
    return enabled && n >= ETH_HDR_LEN && f[12] == 0x86 && f[13] == 0xDD;
}

/* ether._ip_payload_check: why frame f[0:n] does not carry a usable IP packet (IPv6 when v6, else IPv4),
 * or V_OK. Then the packet's version is the one asked for, so table.c's own dispatch on it agrees. */
static int ip_payload_check(const unsigned char *f, size_t n, int v6)
{
    if (n < ETH_HDR_LEN)
        return V_TRUNCATED;
    if (v6)
        return ipv6_check(f + ETH_HDR_LEN, n - ETH_HDR_LEN);
    if (f[12] != 0x08 || f[13] != 0x00)
        return V_NOT_IPV4;
    return ipv4_check(f + ETH_HDR_LEN, n - ETH_HDR_LEN);
}

int vxlan_outbound(const peer_table_t *t, const unsigned char *f, size_t n, const route_t **route)
{
    int v = ip_payload_check(f, n, frame_is_ipv6(f, n, t->has6));
    if (v != V_OK)
        return v;
    const route_t *r;
    v = table_outbound(t, f + ETH_HDR_LEN, n - ETH_HDR_LEN, 0, &r);
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

/* ether._partial_field: the protocol, L4 offset and length, and the offset (from p) of the TCP/UDP
 * checksum field of the checked IP packet p[0:n], when that field holds what a kernel with checksum
 * offload writes there: the folded pseudo-header sum (IPv6's for IPv6), not 0. 0 for fragments,
 * other protocols (IPv6: TCP or UDP right behind the fixed header), short L4 headers and any other
 * value. */
static int partial_field(const unsigned char *p, size_t n, unsigned *proto_out, unsigned *l4, unsigned *l4len,
                         unsigned *at)
{
    int v6 = (p[0] >> 4) == 6;
    unsigned proto = v6 ? p[6] : p[9], min_len, offset;
    if (proto == PROTO_TCP) {
        min_len = 20;
        offset = 16;
    } else if (proto == PROTO_UDP) {
        min_len = 8;
        offset = 6;
    } else {
        return 0;
    }
    if (!v6 && ((p[6] & 0x3F) || p[7]))  /* MF or a fragment offset */
        return 0;
    size_t ihl = v6 ? IPV6_HDR_LEN : (p[0] & 0x0Fu) * 4u, total = v6 ? IPV6_HDR_LEN + be16(p + 4) : be16(p + 2);
    if (total > n || ihl > total || total - ihl < min_len)  /* the checks hold the first two */
        return 0;
    unsigned len = (unsigned)(total - ihl), field = be16(p + ihl + offset);
    uint64_t pseudo = v6 ? csum_add(0, p + 8, 32) + proto + len : pseudo_sum(p, len);
    if (field != csum_fold(pseudo) || field == 0)
        return 0;
    *proto_out = proto;
    *l4 = (unsigned)ihl;
    *l4len = len;
    *at = (unsigned)ihl + offset;
    return 1;
}

int complete_partial_checksum(unsigned char *p, size_t n)
{
    unsigned proto, l4, l4len, at;
    if (!partial_field(p, n, &proto, &l4, &l4len, &at))
        return 0;
    uint64_t body = csum_add(0, p + l4, l4len);
    if (csum_fold(be16(p + at) + body) == 0xFFFF)  /* valid as it is */
        return 0;
    unsigned full = ~csum_fold(body) & 0xFFFFu;
    if (proto == PROTO_UDP && full == 0)
        full = 0xFFFF;  /* RFC 768: a computed 0 is sent as all ones */
    put_be16(p + at, full);
    return 1;
}

int vxlan_inbound(const peer_table_t *t, const unsigned char *d, size_t n, int has_sender, addr6_t sender,
                  uint32_t vni, const unsigned char *own_mac, uint32_t subnet, uint32_t mask, const addr6_t *subnet6)
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
    int v = ip_payload_check(f, len, frame_is_ipv6(f, len, subnet6 != NULL));
    if (v != V_OK)
        return v;
    if (memcmp(f, own_mac, MAC_LEN) != 0 && memcmp(f, broadcast, MAC_LEN) != 0)
        return V_NOT_FOR_US;
    const route_t *owner;
    v = table_admit_ip(t, f + ETH_HDR_LEN, len - ETH_HDR_LEN, sender, subnet, mask, subnet6, &owner);
    if (v != V_OK)
        return v;
    if (owner->has_mac && memcmp(f + MAC_LEN, owner->vtep_mac, MAC_LEN) != 0)
        return V_WRONG_SOURCE_MAC;
    return V_OK;
}

int vxlan_tap_frame(unsigned char *f, size_t n, unsigned mtu, vnet_hdr_t *h)
{
    unsigned char *p = f + ETH_HDR_LEN;  /* checked by vxlan_inbound: an IP packet, its length <= its bytes */
    *h = (vnet_hdr_t){0};
    if (((p[0] >> 4) == 6 ? IPV6_HDR_LEN + be16(p + 4) : be16(p + 2)) <= mtu) {
        complete_partial_checksum(p, n - ETH_HDR_LEN);
        return V_OK;
    }
    unsigned proto, l4, l4len, at;  /* ether.cut_superpacket: TCP with the partial checksum mark, else a drop */
    int cut = partial_field(p, n - ETH_HDR_LEN, &proto, &l4, &l4len, &at) && proto == PROTO_TCP;
    return cut && gso_wire_superpacket(p, mtu, ETH_HDR_LEN, h) == 0 ? V_OK : V_BAD_IP_HEADER;
}
