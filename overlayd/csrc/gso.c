/* Superpackets: TSO segmentation on send, GRO-style coalescing on receive (see gso.h). */
#include "gso.h"

#include <string.h>

#include "packet.h"

#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80

void vnet_parse(const unsigned char *b, vnet_hdr_t *h)
{
    h->flags = b[0];
    h->gso_type = b[1];
    memcpy(&h->hdr_len, b + 2, 2);
    memcpy(&h->gso_size, b + 4, 2);
    memcpy(&h->csum_start, b + 6, 2);
    memcpy(&h->csum_offset, b + 8, 2);
}

void vnet_put(unsigned char *b, const vnet_hdr_t *h)
{
    b[0] = h->flags;
    b[1] = h->gso_type;
    memcpy(b + 2, &h->hdr_len, 2);
    memcpy(b + 4, &h->gso_size, 2);
    memcpy(b + 6, &h->csum_start, 2);
    memcpy(b + 8, &h->csum_offset, 2);
}

void vnet_strip_l2(vnet_hdr_t *h, unsigned l2)
{
    h->csum_start = h->csum_start >= l2 ? (uint16_t)(h->csum_start - l2) : 0;
}

static unsigned ihl_of(const unsigned char *p)
{
    return (p[0] & 0x0Fu) * 4u;
}

/* gso._is_v6 and the version-dependent facts of a checked packet p (IPv6: its fixed header alone). */
static int is_v6(const unsigned char *p)
{
    return (p[0] >> 4) == 6;
}

static unsigned iphl_of(const unsigned char *p)
{
    return is_v6(p) ? IPV6_HDR_LEN : ihl_of(p);
}

static unsigned total_of(const unsigned char *p)
{
    return is_v6(p) ? IPV6_HDR_LEN + be16(p + 4) : be16(p + 2);
}

static unsigned proto_of(const unsigned char *p)
{
    return is_v6(p) ? p[6] : p[9];
}

static unsigned tso_type_of(const unsigned char *p)
{
    return is_v6(p) ? GSO_TCPV6 : GSO_TCPV4;
}

/* The TCP/UDP pseudo-header sum (IPv4's, or IPv6's of RFC 8200 8.1) of packet p for l4len bytes of
 * L4 (< 65536), not folded. */
static uint64_t l4_pseudo_sum(const unsigned char *p, unsigned l4len)
{
    return is_v6(p) ? csum_add(0, p + 8, 32) + p[6] + l4len : pseudo_sum(p, l4len);
}

int gso_check(const unsigned char *p, size_t n)
{
    return n > 0 && is_v6(p) ? ipv6_check(p, n) : ipv4_check(p, n);
}

static unsigned thl_of(const unsigned char *tcp)
{
    return (tcp[12] >> 4) * 4u;
}

/* The IPv4 header checksum of p, stored. */
static void ip_csum_set(unsigned char *p)
{
    put_be16(p + 10, 0);
    put_be16(p + 10, ~csum_fold(csum_add(0, p, ihl_of(p))) & 0xFFFF);
}

/* The headers-and-payload sizes of a checked TCP packet p, or -1 when it is not one we can segment
 * (TCP right behind the IP header, not an IPv4 fragment). */
static int tcp_layout(const unsigned char *p, unsigned *hlen, unsigned *payload)
{
    unsigned ihl = iphl_of(p), total = total_of(p);
    if (proto_of(p) != PROTO_TCP || ihl + 20 > total || (!is_v6(p) && (be16(p + 6) & 0x3FFF) != 0))
        return -1;
    unsigned thl = thl_of(p + ihl);
    if (thl < 20 || ihl + thl > total)
        return -1;
    *hlen = ihl + thl;
    *payload = total - *hlen;
    return 0;
}

int gso_prepare(const vnet_hdr_t *h, unsigned char *p, size_t n)
{
    unsigned total = total_of(p);
    if (h->gso_type == GSO_NONE) {
        if (!(h->flags & VNET_F_NEEDS_CSUM))
            return 1;
        unsigned at = (unsigned)h->csum_start + h->csum_offset;
        if (h->csum_start < iphl_of(p) || at + 2 > total)
            return -V_BAD_IP_HEADER;
        unsigned c = ~csum_fold(csum_add(0, p + h->csum_start, total - h->csum_start)) & 0xFFFF;
        put_be16(p + at, c == 0 && proto_of(p) == PROTO_UDP ? 0xFFFF : c);
        return 1;
    }
    unsigned hlen, payload;
    if ((h->gso_type & ~GSO_ECN) != tso_type_of(p) || h->gso_size == 0 || tcp_layout(p, &hlen, &payload) < 0)
        return -V_BAD_IP_HEADER;
    return payload == 0 ? 1 : (int)((payload + h->gso_size - 1) / h->gso_size);
}

size_t gso_segment(const vnet_hdr_t *h, const unsigned char *p, int i, int count, unsigned char *out,
                   const unsigned char **data, size_t *data_len)
{
    unsigned hlen, payload, ihl = iphl_of(p);
    tcp_layout(p, &hlen, &payload);
    unsigned mss = h->gso_size;
    unsigned from = (unsigned)i * mss, len = payload - from < mss ? payload - from : mss;
    *data = p + hlen + from;
    *data_len = len;
    memcpy(out, p, hlen);
    if (is_v6(p)) {
        put_be16(out + 4, hlen - ihl + len);
    } else {
        put_be16(out + 2, hlen + len);
        put_be16(out + 4, (be16(p + 4) + (unsigned)i) & 0xFFFF);
        ip_csum_set(out);
    }
    unsigned char *tcp = out + ihl;
    put_be32(tcp + 4, be32(p + ihl + 4) + from);
    if (i != count - 1)
        tcp[13] &= (unsigned char)~(TCP_FIN | TCP_PSH);
    if (i != 0)
        tcp[13] &= (unsigned char)~TCP_CWR;
    put_be16(tcp + 16, 0);
    /* the TCP header's length is a multiple of 4: the payload's sum joins it as it stands */
    uint64_t sum = csum_add(l4_pseudo_sum(out, hlen - ihl + len), tcp, hlen - ihl);
    put_be16(tcp + 16, ~csum_fold(csum_add(sum, *data, len)) & 0xFFFF);
    return hlen;
}

/* gso._candidate: the GSO type of the runs p[0:n] may join, GSO_NONE when it goes alone: a plain TCP
 * segment with data (IPv4 without options, or IPv6 with TCP right behind the fixed header), flags
 * ACK or ACK|PSH; or when udp a UDP datagram with data right behind the IP header (not an IPv4
 * fragment), its UDP length the packet's, its checksum not 0. Its IPv4 header checksum must be right,
 * and its L4 checksum too unless verified (it came in a UDP_GRO buffer: see gro_run); UDP checksum 0
 * on the wire protected nothing. */
static int gro_candidate(const unsigned char *p, size_t n, int verified, int udp)
{
    if (n > 0 && is_v6(p)) {
        if (n < IPV6_HDR_LEN + UDP_HDR_LEN || total_of(p) != n)
            return GSO_NONE;
    } else if (n < 20 + UDP_HDR_LEN || p[0] != 0x45 || be16(p + 2) != n || csum_fold(csum_add(0, p, 20)) != 0xFFFF) {
        return GSO_NONE;
    }
    unsigned ihl = iphl_of(p), hlen, payload;
    const unsigned char *l4 = p + ihl;
    int kind;
    if (proto_of(p) == PROTO_UDP) {
        if (!udp || n - ihl == UDP_HDR_LEN || be16(l4 + 4) != n - ihl || be16(l4 + 6) == 0 ||
            (!is_v6(p) && (be16(p + 6) & 0x3FFF) != 0))
            return GSO_NONE;
        kind = GSO_UDP_L4;
    } else {
        if (tcp_layout(p, &hlen, &payload) < 0 || payload == 0 || (l4[13] & ~TCP_PSH) != TCP_ACK)
            return GSO_NONE;
        kind = (int)tso_type_of(p);
    }
    return verified || csum_fold(csum_add(l4_pseudo_sum(p, (unsigned)n - ihl), l4, n - ihl)) == 0xFFFF ? kind
                                                                                                   : GSO_NONE;
}

/* The IP and L4 header bytes of a candidate. */
static unsigned headers_len(const unsigned char *p)
{
    return iphl_of(p) + (proto_of(p) == PROTO_UDP ? UDP_HDR_LEN : thl_of(p + iphl_of(p)));
}

/* gso._same_ip: the IP fields GRO compares (IPv4 TOS, TTL, DF, addresses; IPv6 the version/traffic
 * class/flow label word, next header, hop limit, addresses) of two candidates. */
static int gro_same_ip(const unsigned char *head, const unsigned char *q)
{
    if (is_v6(head))
        return memcmp(head, q, 4) == 0 && memcmp(head + 6, q + 6, IPV6_HDR_LEN - 6) == 0;
    return !is_v6(q) && head[1] == q[1] && head[8] == q[8] && (head[6] & 0x40) == (q[6] & 0x40) &&
           memcmp(head + 12, q + 12, 8) == 0;
}

/* Whether candidate q, of the run's GSO type, continues the run whose first packet is head and last
 * is last (run_bytes long). */
static int gro_extends(const unsigned char *head, size_t head_n, const unsigned char *last, size_t last_n,
                       const unsigned char *q, size_t q_n, size_t run_bytes)
{
    unsigned ihl = iphl_of(head), hlen = headers_len(head), mss = (unsigned)head_n - hlen;
    unsigned last_payload = (unsigned)last_n - hlen, q_payload = (unsigned)q_n - headers_len(q);
    const unsigned char *ht = head + ihl, *lt = last + ihl, *qt = q + ihl;
    if (!gro_same_ip(head, q) || memcmp(ht, qt, 4) != 0 || last_payload != mss || q_payload > mss ||
        run_bytes + q_payload > SUPER_MAX)  /* same ports, full segments */
        return 0;
    if (proto_of(head) == PROTO_UDP)  /* the kernel's segments count the IPv4 ID up from the first's */
        return is_v6(head) || be16(q + 4) == ((be16(last + 4) + 1) & 0xFFFF);
    unsigned thl = hlen - ihl;
    return !(lt[13] & TCP_PSH) && thl_of(qt) == thl &&
           memcmp(ht + 8, qt + 8, 4) == 0 && memcmp(ht + 14, qt + 14, 2) == 0 &&    /* ACK, window */
           memcmp(ht + 20, qt + 20, thl - 20) == 0 &&                                 /* options */
           be32(qt + 4) == be32(lt + 4) + last_payload;
}

int gro_run(unsigned char *const *pkts, const size_t *lens, const unsigned char *verified, int n, size_t l2,
            int udp)
{
    int kind = n < 2 ? GSO_NONE : gro_candidate(pkts[0], lens[0], verified[0], udp);
    if (kind == GSO_NONE)
        return 1;
    int count = 1;
    size_t bytes = lens[0];
    while (count < n && count < GRO_MAX_SEGS && memcmp(pkts[count] - l2, pkts[0] - l2, l2) == 0 &&
           gro_candidate(pkts[count], lens[count], verified[count], udp) == kind &&
           gro_extends(pkts[0], lens[0], pkts[count - 1], lens[count - 1], pkts[count], lens[count], bytes)) {
        bytes += lens[count] - gro_payload_offset(pkts[count]);
        count++;
    }
    return count;
}

size_t gro_payload_offset(const unsigned char *p)
{
    return headers_len(p);
}

size_t gro_header(unsigned char *const *pkts, const size_t *lens, int count, size_t l2, unsigned char *out)
{
    const unsigned char *head = pkts[0];
    unsigned hlen = (unsigned)gro_payload_offset(head), total = hlen, ihl = iphl_of(head);
    for (int i = 0; i < count; i++)
        total += (unsigned)(lens[i] - hlen);
    int udp = proto_of(head) == PROTO_UDP;
    vnet_hdr_t h = {VNET_F_NEEDS_CSUM, (uint8_t)(udp ? GSO_UDP_L4 : tso_type_of(head)), (uint16_t)(l2 + hlen),
                    (uint16_t)(lens[0] - hlen), (uint16_t)(l2 + ihl), udp ? 6 : 16};
    vnet_put(out, &h);
    memcpy(out + VNET_HDR_LEN, head - l2, l2);
    unsigned char *p = out + VNET_HDR_LEN + l2;
    memcpy(p, head, hlen);
    if (is_v6(p)) {
        put_be16(p + 4, total - ihl);
    } else {
        put_be16(p + 2, total);
        ip_csum_set(p);
    }
    if (udp) {
        put_be16(p + ihl + 4, total - ihl);
        put_be16(p + ihl + 6, csum_fold(l4_pseudo_sum(p, total - ihl)));
    } else {
        p[ihl + 13] |= pkts[count - 1][ihl + 13] & TCP_PSH;
        put_be16(p + ihl + 16, csum_fold(l4_pseudo_sum(p, total - ihl)));
    }
    return VNET_HDR_LEN + l2 + hlen;
}

int gso_wire_superpacket(const unsigned char *p, unsigned mtu, unsigned l2, vnet_hdr_t *h)
{
    unsigned hlen, payload, ihl = iphl_of(p);
    /* the header checksum too: written whole, a bad one is the pod's kernel's drop; cutting (Python) rewrites it */
    if (tcp_layout(p, &hlen, &payload) < 0 || mtu <= hlen || (!is_v6(p) && csum_fold(csum_add(0, p, ihl)) != 0xFFFF))
        return -1;
    /* the sender's TCP marked a superpacket with CWR as SKB_GSO_TCP_ECN: the kernel's own tun does the same */
    *h = (vnet_hdr_t){VNET_F_NEEDS_CSUM, (uint8_t)(tso_type_of(p) | (p[ihl + 13] & TCP_CWR ? GSO_ECN : 0)),
                      (uint16_t)(l2 + hlen), (uint16_t)(mtu - hlen), (uint16_t)(l2 + ihl), 16};
    return 0;
}
