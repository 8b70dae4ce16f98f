"""The udp backend carries IPv6 (issue 17 point 3): two namespaces, each an overlayd node running the
udp backend on a dual-stack network (real tun0, real UDP sockets over an IPv4 veth underlay), on the
Python data plane, the C engine, and one of each. Pings cross in both families; tun0 carries its IPv6
subnet's ::/128 and the IPv6 Network's route; an unleased IPv6 destination is answered."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from overlayd.dataplane import fast

from .test_hostgw_ipv6 import BACKEND_PRELUDE
from .vethpair import veth_pair

pytestmark = pytest.mark.root

# argv: datapath, own number, peer number, "serve" (run until stdin closes) or "ping", the underlay's IP version
# ("6only": an IPv6-only network, EnableIPv4 false, over the IPv6 underlay)
SCRIPT = BACKEND_PRELUDE + textwrap.dedent('''
    import sys
    from overlayd.backend.udp import UdpBackend

    datapath, own, other, mode, version = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]

    only6 = version == "6only"

    def public(n):
        """A node's (PublicIP, PublicIPv6): one underlay family per node, IPv6 when it has no PublicIP."""
        if version == "4":
            return ipaddress.IPv4Address(f"198.18.0.{n}"), None
        return None, ipaddress.IPv6Address(f"2001:db8::{n}")

    def lease(n, attrs):
        subnet6 = ipaddress.IPv6Network(f"fd00:10:244:{n}::/64")
        return Lease(subnet6 if only6 else ipaddress.IPv4Network(f"10.244.{n}.0/24"), attrs, subnet6=subnet6)

    async def ping(*argv):
        proc = await asyncio.create_subprocess_exec("ping", "-c1", "-w5", *argv, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)
        return await proc.wait()

    async def main():
        raw = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56",
               "Backend": {"Type": "udp"}}
        config = parse_config({**raw, "EnableIPv4": False} if only6 else raw)
        ip4, ip6 = public(own)
        underlay = Underlay("eth0", ip4, 1500, public_ip6=ip6)
        backend = UdpBackend(config, underlay, NodeOptions(datapath=datapath))
        await backend.preflight()
        await backend.setup(lease(own, backend.lease_attrs()))
        ip4, ip6 = public(other)
        await backend.apply(Batch(added=[lease(other, LeaseAttrs(ip4, "udp", public_ip6=ip6))]))
        seen = {"device": json.loads(sh("ip", "-j", "addr", "show", "tun0"))[0],
                "routes6": sh("ip", "-6", "route", "show", "dev", "tun0")}
        seen["socket"] = backend.sock.getsockname()[0]
        run = asyncio.create_task(backend.run())
        if mode == "serve":
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.read)
        else:
            seen["ping6"] = await ping("-6", "-I", f"fd00:10:244:{own}::", f"fd00:10:244:{other}::")
            seen["ping4"] = 0 if only6 else await ping("-4", "-I", f"10.244.{own}.0", f"10.244.{other}.0")
            seen["ping6_big"] = await ping("-6", "-s", "1300", "-M", "do", "-I", f"fd00:10:244:{own}::",
                                           f"fd00:10:244:{other}::")
            seen["nobody"] = (await asyncio.create_subprocess_exec(
                "ping", "-6", "-c1", "-w2", "-I", f"fd00:10:244:{own}::", "fd00:10:244:9::1",
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)).stdout
            seen["nobody"] = (await seen["nobody"].read()).decode()
        await finish(backend, run, seen)

    asyncio.run(main())
''')


@pytest.fixture
def two_nodes():
    """Namespaces A (198.18.0.11) and B (198.18.0.12) joined by a veth pair, eth0 in both."""
    with veth_pair("udp6") as pair:
        yield pair


@pytest.mark.parametrize("datapaths,underlay", [(("python", "python"), "4"), (("c", "c"), "4"), (("c", "python"), "4"),
                                               (("python", "python"), "6"), (("c", "c"), "6"), (("c", "python"), "6"),
                                               (("python", "python"), "6only"), (("c", "c"), "6only")])
def test_ipv6_crosses_tun0_between_two_udp_nodes(two_nodes, datapaths, underlay):
    """Both inner families over one underlay family: IPv4, or IPv6 for nodes without a PublicIP."""
    if "c" in datapaths and not fast.available():
        pytest.skip("the C fast path is not built")
    a, b = two_nodes
    serve = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", SCRIPT, datapaths[1], "12", "11",
                              "serve", underlay], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert serve.stdout.readline() == "ready\n", serve.stderr.read()
        res = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", SCRIPT, datapaths[0], "11", "12",
                              "ping", underlay], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    finally:
        out, err = serve.communicate(timeout=60)
    assert serve.returncode == 0, err
    seen, served = json.loads(res.stdout), json.loads(out)
    addrs = {f"{x['local']}/{x['prefixlen']}" for x in seen["device"]["addr_info"]}
    assert "fd00:10:244:11::/128" in addrs and ("10.244.11.0/32" in addrs) == (underlay != "6only")
    assert "fd00:10:244::/56" in seen["routes6"]
    assert seen["socket"] == ("198.18.0.11" if underlay == "4" else "2001:db8::11")
    assert (seen["ping6"], seen["ping4"], seen["ping6_big"]) == (0, 0, 0)
    assert "From fd00:10:244:11::1" in seen["nobody"] and "unreachable" in seen["nobody"].lower()  # our gateway
    assert seen["stats"].get("drop_no_lease", 0) >= 1
    pings = 2 if underlay == "6only" else 3  # each node wrote each ping it got to its tun0 and answered it
    assert served["stats"]["dev_tx_packets"] >= pings and served["stats"]["tx_packets"] >= pings
