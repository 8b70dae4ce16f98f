/*
 * Superpackets on the tun (IFF_VNET_HDR + TUNSETOFFLOAD): segmenting what the
 * kernel hands us (TSO) and coalescing what we hand it (GRO; UDP runs too,
 * where the device takes UDP GSO writes). The twins of
 * overlayd/encap/gso.py, held to the same results by the parity tests. Pure:
 * no Python, no I/O. IPv4 and IPv6 (issue 17) alike: every function below
 * dispatches on the version nibble (TCP right behind IPv6's fixed header,
 * GSO_TCPV6; see gso.py).
 */
#ifndef OVERLAYD_GSO_H
#define OVERLAYD_GSO_H

#include <stddef.h>
#include <stdint.h>

#define VNET_HDR_LEN 10
#define VNET_F_NEEDS_CSUM 1
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define UDP_HDR_LEN 8
#define GSO_ECN 0x80
#define SUPER_MAX 65535   /* bytes in a coalesced packet, at most (the IP total length) */
#define GRO_MAX_SEGS 64   /* segments in a coalesced packet, at most: the writer's iovec array
                             holds that many (small segments from the wire must not overflow it) */
#define GRO_L2_MAX 14     /* link-layer bytes in front of a packet, at most (a tap's Ethernet header) */
#define GRO_HDR_MAX (VNET_HDR_LEN + GRO_L2_MAX + 40 + 60)  /* IPv6's fixed header or IPv4's, TCP's */

/* struct virtio_net_hdr, in the host's byte order (a legacy tun's). */
typedef struct {
    uint8_t flags, gso_type;
    uint16_t hdr_len, gso_size, csum_start, csum_offset;
} vnet_hdr_t;

void vnet_parse(const unsigned char *b, vnet_hdr_t *h);
void vnet_put(unsigned char *b, const vnet_hdr_t *h);
/* h, read in front of a frame whose IP packet starts l2 bytes in (a tap's), made the header of that
 * IP packet: csum_start counts from the frame's start. A start inside the l2 bytes becomes 0, which
 * gso_prepare refuses like any start inside the IP header. (hdr_len is not used on this side.) */
void vnet_strip_l2(vnet_hdr_t *h, unsigned l2);

/* gso.check: ipv6_check for a version-6 p[0:n], else ipv4_check. */
int gso_check(const unsigned char *p, size_t n);
/* Send side, for a checked (gso_check) packet p[0:n] read with header h. Returns the
 * number of segments it becomes (>= 1; 1 when h asks for no segmentation, after
 * completing a partial checksum in place) or minus the drop verdict. */
int gso_prepare(const vnet_hdr_t *h, unsigned char *p, size_t n);
/* Segment i of the count gso_prepare gave for p: its IP and TCP headers are
 * written to out (room for GSO_HDR_MAX bytes) and their length returned; its
 * payload is left where it is, *data_len bytes at *data inside p (a sender
 * points an iovec at them: the kernel copies each byte once). */
#define GSO_HDR_MAX (60 + 60)
size_t gso_segment(const vnet_hdr_t *h, const unsigned char *p, int i, int count, unsigned char *out,
                   const unsigned char **data, size_t *data_len);

/* Receive side: how many of the n packets pkts[0:n] (lengths lens) starting at
 * pkts[0] form one coalescible run (1: pkts[0] goes alone). On a tap each
 * packet is the IP part of a frame: the l2 bytes before it (at most
 * GRO_L2_MAX, 0 on a tun) are its Ethernet header, which must be pkts[0]'s
 * too (the kernel's GRO compares it as well). verified[i] != 0: packet i came
 * in a UDP_GRO buffer, so its TCP checksum is not checked again: the kernel's
 * UDP GRO merges only datagrams whose non-zero UDP checksum it validated
 * (udp4_gro_receive, udp_gro_receive_segment), and that covers the whole
 * inner packet: the bytes are as the sender sent them. Whether the sender's
 * TCP checksum was right is then its own business, as for any peer that
 * could compute a right one (nothing is lost to a hostile one; the
 * coalesced write is NEEDS_CSUM, so the pod's kernel will not check it).
 * A lone datagram may have had checksum 0: it is checked. With udp, runs of
 * UDP datagrams too (gso.coalesce's udp: written as one UDP_L4 GSO write). */
int gro_run(unsigned char *const *pkts, const size_t *lens, const unsigned char *verified, int n, size_t l2,
            int udp);
/* The virtio header, the l2 bytes before pkts[0] and the IP+TCP (or UDP) headers of the
 * superpacket joining the count packets of a run, written to out (GRO_HDR_MAX
 * bytes); returns their length. csum_start and hdr_len count the l2 bytes.
 * The payloads follow: pkts[i] + gro_payload_offset(pkts[i]). */
size_t gro_header(unsigned char *const *pkts, const size_t *lens, int count, size_t l2, unsigned char *out);
size_t gro_payload_offset(const unsigned char *p);

/* A superpacket from the wire: a kernel VTEP with transmit offload sends a
 * whole TCP GSO skb in one VXLAN datagram (its IP total length beyond the
 * MTU, the TCP checksum partial: the field holds the pseudo-header sum, which
 * the caller has checked). The header to write the checked packet p (l2
 * bytes of frame before it) to a vnet_hdr device of mtu as one GSO write, the
 * kernel cutting it into MSS-sized segments that fit mtu when it forwards it:
 * 0 with *h set, or -1 when p is no such packet (not TCP, a fragment, a wrong
 * IPv4 header checksum, no room for data in mtu; IPv6 alike, GSO_TCPV6). The Python twin is
 * gso.tso_header with ether.cut_superpacket's IP checksum test (gso_size and
 * offsets alike); the GSO write is cut by the kernel into its segments. */
int gso_wire_superpacket(const unsigned char *p, unsigned mtu, unsigned l2, vnet_hdr_t *h);

#endif
