/*
 * Packet facts shared by the C fast path's parts: the drop verdicts (the
 * values of overlayd.encap.drops.Drop), the IPv4 check (overlayd.encap.ipv4)
 * and the Internet checksum. Pure functions, no Python, no I/O.
 */
#ifndef OVERLAYD_PACKET_H
#define OVERLAYD_PACKET_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum verdict {
    V_OK = 0, V_TRUNCATED, V_NOT_IPV4, V_BAD_IP_HEADER, V_NO_LEASE, V_UNKNOWN_SENDER, V_WRONG_SOURCE_PORT,
    V_NOT_OUR_SUBNET, V_TO_BROADCAST_ADDRESS, V_SPOOFED_SOURCE, V_WRONG_SOURCE_MAC, V_BAD_VXLAN, V_WRONG_VNI,
    V_NOT_FOR_US, V_TOO_BIG,
    V_COUNT
};

/* The values of overlayd.encap.drops.Drop, by verdict (NULL for V_OK). */
extern const char *const reason_names[V_COUNT];

#define PROTO_TCP 6
#define PROTO_UDP 17

/* The 2-byte big-endian value at p. */
static inline unsigned be16(const unsigned char *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

static inline void put_be16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

/* The 4-byte big-endian value at p. */
static inline uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put_be32(unsigned char *p, uint32_t v)
{
    put_be16(p, v >> 16);
    put_be16(p + 2, v & 0xFFFF);
}

/* ipv4.check: why p[0:n] is not a usable IPv4 packet, or V_OK. */
static inline int ipv4_check(const unsigned char *p, size_t n)
{
    if (n < 20)
        return (n > 0 && (p[0] >> 4) != 4) ? V_NOT_IPV4 : V_TRUNCATED;
    if ((p[0] >> 4) != 4)
        return V_NOT_IPV4;
    unsigned ihl = (p[0] & 0x0Fu) * 4u, total = be16(p + 2);
    if (ihl < 20 || total < ihl)
        return V_BAD_IP_HEADER;
    if (total > n)
        return V_TRUNCATED;
    return V_OK;
}

#define IPV6_HDR_LEN 40

/* ipv6.check: why p[0:n] is not a usable IPv6 packet (fixed header; not a jumbogram), or V_OK. */
static inline int ipv6_check(const unsigned char *p, size_t n)
{
    if (n > 0 && (p[0] >> 4) != 6)
        return V_NOT_IPV4;
    if (n < IPV6_HDR_LEN)
        return V_TRUNCATED;
    unsigned payload = be16(p + 4);
    if (payload == 0 && p[6] == 0)  /* a jumbogram: payload length 0, a Hop-by-Hop header */
        return V_BAD_IP_HEADER;
    if (IPV6_HDR_LEN + payload > n)
        return V_TRUNCATED;
    return V_OK;
}

/* udp.is_ipv6: p[0:n] is handled as IPv6 (version 6, IPv6 enabled). */
static inline int is_ipv6(const unsigned char *p, size_t n, int enabled)
{
    return enabled && n > 0 && (p[0] >> 4) == 6;
}

/* The ones'-complement sum of p[0:n] added to sum, not folded (odd n: padded with a zero byte).
 * Four bytes per step, in the host's byte order: the ones'-complement sum does not depend on byte
 * order once the folded result is swapped back (RFC 1071), and 2^16 = 1 modulo 0xFFFF lets 32-bit
 * words fold like pairs of 16-bit ones. The result is the same number modulo 0xFFFF, and zero only
 * when every byte is: folding gives what the 16-bit loop gave. */
static inline uint64_t csum_add(uint64_t sum, const unsigned char *p, size_t n)
{
    uint64_t host = 0;
    for (; n >= 4; p += 4, n -= 4) {
        uint32_t w;
        memcpy(&w, p, sizeof(w));
        host += w;
    }
    while (host >> 16)
        host = (host & 0xFFFF) + (host >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    host = ((host & 0xFF) << 8) | (host >> 8);
#endif
    sum += host;
    for (; n >= 2; p += 2, n -= 2)
        sum += be16(p);
    if (n)
        sum += (unsigned)p[0] << 8;
    return sum;
}

/* sum folded to 16 bits (not complemented). */
static inline unsigned csum_fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (unsigned)sum;
}

/* The TCP/UDP pseudo-header sum of an IPv4 packet p for an L4 length of l4len, not folded. */
static inline uint64_t pseudo_sum(const unsigned char *p, unsigned l4len)
{
    return csum_add(0, p + 12, 8) + p[9] + l4len;
}

#endif
