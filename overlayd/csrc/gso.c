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

/* The headers-and-payload sizes of a TCP packet p, or -1 when it is not one we can segment. */
static int tcp_layout(const unsigned char *p, unsigned *hlen, unsigned *payload)
{
    unsigned ihl = ihl_of(p), total = be16(p + 2);
    if (p[9] != PROTO_TCP || (be16(p + 6) & 0x3FFF) != 0 || ihl + 20 > total)
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
    unsigned total = be16(p + 2);
    if (h->gso_type == GSO_NONE) {
        if (!(h->flags & VNET_F_NEEDS_CSUM))
            return 1;
        unsigned at = (unsigned)h->csum_start + h->csum_offset;
        if (h->csum_start < ihl_of(p) || at + 2 > total)
            return -V_BAD_IP_HEADER;
        unsigned c = ~csum_fold(csum_add(0, p + h->csum_start, total - h->csum_start)) & 0xFFFF;
        put_be16(p + at, c == 0 && p[9] == PROTO_UDP ? 0xFFFF : c);
        return 1;
    }
    unsigned hlen, payload;
    if ((h->gso_type & ~GSO_ECN) != GSO_TCPV4 || h->gso_size == 0 || tcp_layout(p, &hlen, &payload) < 0)
        return -V_BAD_IP_HEADER;
    return payload == 0 ? 1 : (int)((payload + h->gso_size - 1) / h->gso_size);
}

size_t gso_segment(const vnet_hdr_t *h, const unsigned char *p, int i, int count, unsigned char *out,
                   const unsigned char **data, size_t *data_len)
{
    unsigned hlen, payload, ihl = ihl_of(p);
    tcp_layout(p, &hlen, &payload);
    unsigned mss = h->gso_size;
    unsigned from = (unsigned)i * mss, len = payload - from < mss ? payload - from : mss;
    *data = p + hlen + from;
    *data_len = len;
    memcpy(out, p, hlen);
    put_be16(out + 2, hlen + len);
    put_be16(out + 4, (be16(p + 4) + (unsigned)i) & 0xFFFF);
    ip_csum_set(out);
    unsigned char *tcp = out + ihl;
    put_be32(tcp + 4, be32(p + ihl + 4) + from);
    if (i != count - 1)
        tcp[13] &= (unsigned char)~(TCP_FIN | TCP_PSH);
    if (i != 0)
        tcp[13] &= (unsigned char)~TCP_CWR;
    put_be16(tcp + 16, 0);
    /* the TCP header's length is a multiple of 4: the payload's sum joins it as it stands */
    uint64_t sum = csum_add(pseudo_sum(out, hlen - ihl + len), tcp, hlen - ihl);
    put_be16(tcp + 16, ~csum_fold(csum_add(sum, *data, len)) & 0xFFFF);
    return hlen;
}

/* Whether p[0:n] may join a run: a plain IPv4 TCP segment with data, flags ACK
 * or ACK|PSH, its IP checksum right, and its TCP checksum too unless verified
 * (it came in a UDP_GRO buffer: see gro_run); UDP checksum 0 protected nothing. */
static int gro_candidate(const unsigned char *p, size_t n, int verified)
{
    unsigned hlen, payload;
    if (n < 40 || p[0] != 0x45 || be16(p + 2) != n || tcp_layout(p, &hlen, &payload) < 0 || payload == 0)
        return 0;
    unsigned flags = p[20 + 13];
    if ((flags & ~TCP_PSH) != TCP_ACK || csum_fold(csum_add(0, p, 20)) != 0xFFFF)
        return 0;
    return verified || csum_fold(csum_add(pseudo_sum(p, (unsigned)n - 20), p + 20, n - 20)) == 0xFFFF;
}

/* Whether q continues the run whose first packet is head and last is last (both candidates). */
static int gro_extends(const unsigned char *head, const unsigned char *last, size_t last_n, const unsigned char *q,
                       size_t q_n, size_t run_bytes)
{
    unsigned thl = thl_of(head + 20), mss = be16(head + 2) - 20 - thl;
    unsigned last_payload = (unsigned)last_n - 20 - thl, q_payload = (unsigned)q_n - 20 - thl;
    const unsigned char *ht = head + 20, *lt = last + 20, *qt = q + 20;
    return !(lt[13] & TCP_PSH) && last_payload == mss && thl_of(qt) == thl && q_payload <= mss &&
           run_bytes + q_payload <= SUPER_MAX &&
           head[1] == q[1] && head[8] == q[8] && (head[6] & 0x40) == (q[6] & 0x40) &&  /* TOS, TTL, DF */
           memcmp(head + 12, q + 12, 8) == 0 && memcmp(ht, qt, 4) == 0 &&            /* addresses, ports */
           memcmp(ht + 8, qt + 8, 4) == 0 && memcmp(ht + 14, qt + 14, 2) == 0 &&    /* ACK, window */
           memcmp(ht + 20, qt + 20, thl - 20) == 0 &&                                 /* options */
           be32(qt + 4) == be32(lt + 4) + last_payload;
}

int gro_run(unsigned char *const *pkts, const size_t *lens, const unsigned char *verified, int n, size_t l2)
{
    if (n < 2 || !gro_candidate(pkts[0], lens[0], verified[0]))
        return 1;
    int count = 1;
    size_t bytes = lens[0];
    while (count < n && count < GRO_MAX_SEGS && memcmp(pkts[count] - l2, pkts[0] - l2, l2) == 0 &&
           gro_candidate(pkts[count], lens[count], verified[count]) &&
           gro_extends(pkts[0], pkts[count - 1], lens[count - 1], pkts[count], lens[count], bytes)) {
        bytes += lens[count] - gro_payload_offset(pkts[count]);
        count++;
    }
    return count;
}

size_t gro_payload_offset(const unsigned char *p)
{
    return ihl_of(p) + thl_of(p + ihl_of(p));
}

size_t gro_header(unsigned char *const *pkts, const size_t *lens, int count, size_t l2, unsigned char *out)
{
    const unsigned char *head = pkts[0];
    unsigned hlen = (unsigned)gro_payload_offset(head), total = hlen;
    for (int i = 0; i < count; i++)
        total += (unsigned)(lens[i] - hlen);
    vnet_hdr_t h = {VNET_F_NEEDS_CSUM, GSO_TCPV4, (uint16_t)(l2 + hlen), (uint16_t)(lens[0] - hlen),
                    (uint16_t)(l2 + 20), 16};
    vnet_put(out, &h);
    memcpy(out + VNET_HDR_LEN, head - l2, l2);
    unsigned char *p = out + VNET_HDR_LEN + l2;
    memcpy(p, head, hlen);
    put_be16(p + 2, total);
    ip_csum_set(p);
    p[20 + 13] |= pkts[count - 1][20 + 13] & TCP_PSH;
    put_be16(p + 20 + 16, csum_fold(pseudo_sum(p, total - 20)));
    return VNET_HDR_LEN + l2 + hlen;
}

int gso_wire_superpacket(const unsigned char *p, unsigned mtu, unsigned l2, vnet_hdr_t *h)
{
    unsigned hlen, payload, ihl = ihl_of(p);
    /* the header checksum too: written whole, a bad one is the pod's kernel's drop; cutting (Python) rewrites it */
    if (tcp_layout(p, &hlen, &payload) < 0 || mtu <= hlen || csum_fold(csum_add(0, p, ihl)) != 0xFFFF)
        return -1;
    /* the sender's TCP marked a superpacket with CWR as SKB_GSO_TCP_ECN: the kernel's own tun does the same */
    *h = (vnet_hdr_t){VNET_F_NEEDS_CSUM, (uint8_t)(GSO_TCPV4 | (p[ihl + 13] & TCP_CWR ? GSO_ECN : 0)),
                      (uint16_t)(l2 + hlen), (uint16_t)(mtu - hlen), (uint16_t)(l2 + ihl), 16};
    return 0;
}
