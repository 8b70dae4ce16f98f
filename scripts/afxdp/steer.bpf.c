// SPDX-License-Identifier: GPL-2.0
/* The AF_XDP experiment's XDP program (scripts/bench-afxdp): IPv4 UDP datagrams to the tunnel's
 * port go to the AF_XDP socket bound to the receiving queue; everything else goes on to the
 * kernel's stack as usual. Built at run time with Debian's clang against libbpf's headers. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef TUNNEL_PORT
#define TUNNEL_PORT 8472
#endif

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u32);
} sockets SEC(".maps");

SEC("xdp")
int steer(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    struct udphdr *udp = (void *)(ip + 1);

    if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5
        || ip->protocol != IPPROTO_UDP || udp->dest != bpf_htons(TUNNEL_PORT))
        return XDP_PASS;
    return bpf_redirect_map(&sockets, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "GPL";
