/*
 * The userspace VXLAN backend's framing in C: the twins of
 * overlayd.encap.ether (tap_outbound, tap_inbound, complete_partial_checksum)
 * and overlayd.encap.vxlan (the RFC 7348 header). Pure functions, no I/O.
 */
#ifndef OVERLAYD_VXLAN_H
#define OVERLAYD_VXLAN_H

#include <stddef.h>
#include <stdint.h>

#include "gso.h"
#include "table.h"

#define VXLAN_HDR_LEN 8     /* flags, 24 reserved bits, 24-bit VNI, 8 reserved bits */
#define VXLAN_FLAG_I 0x08
#define ETH_HDR_LEN 14
#define MAC_LEN 6

/* ether.tap_outbound for the frame f[0:n] (IPv6 ones where the table has an IPv6 mask): V_OK with
 * *route set, or the drop. */
int vxlan_outbound(const peer_table_t *t, const unsigned char *f, size_t n, const route_t **route);

/* Frame f (V_OK from vxlan_outbound, r its route) as the UDP payload: the VXLAN header for vni is
 * written in the VXLAN_HDR_LEN bytes before f (the caller's headroom) and the destination MAC
 * rewritten to r's VtepMAC. Returns f - VXLAN_HDR_LEN. */
unsigned char *vxlan_encapsulate(unsigned char *f, const route_t *r, uint32_t vni);

/* VxlanCodec.inbound's checks for the datagram d[0:n] from sender (has_sender 0: no usable
 * address): V_OK when the frame at d + VXLAN_HDR_LEN, n - VXLAN_HDR_LEN may be written (see
 * vxlan_tap_frame), or the drop. IPv6 frames (EtherType 0x86DD) are taken for our IPv6 subnet
 * *subnet6 (NULL: none, they are not_ipv4), as ether.tap_inbound takes them (issue 17). */
int vxlan_inbound(const peer_table_t *t, const unsigned char *d, size_t n, int has_sender, addr6_t sender,
                  uint32_t vni, const unsigned char *own_mac, uint32_t subnet, uint32_t mask, const addr6_t *subnet6);

/* ether.tap_inbound's last step, given the tap's mtu: what the tap gets for the frame f[0:n] that
 * vxlan_inbound accepted. An IP packet that fits mtu: V_OK, *h empty, a partial inner checksum
 * completed in place (a plain tap passes PKT_MAX: everything fits). A larger one (only a vnet_hdr tap
 * passes its MTU): V_OK with *h the GSO header of a kernel VTEP's TCP superpacket
 * (gso_wire_superpacket; f untouched, its checksum left partial as h says: the kernel cuts it into the
 * segments ether.cut_superpacket makes), else V_BAD_IP_HEADER (as in Python). */
int vxlan_tap_frame(unsigned char *f, size_t n, unsigned mtu, vnet_hdr_t *h);

/* ether.complete_partial_checksum for the checked IPv4 or IPv6 packet p[0:n]: 1 when it completed the
 * checksum in place, 0 when it left p alone. */
int complete_partial_checksum(unsigned char *p, size_t n);

#endif
