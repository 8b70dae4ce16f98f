"""Firewall rules in nftables: FORWARD accept for the Network, and pod egress masquerading.

Our rules live in one table of our own, ``ip overlayd``, replaced as a whole
in one ``nft -f -`` transaction (so a re-run never duplicates a rule and an
operator's own tables are never touched). We drive the ``nft`` tool rather
than a Python binding: it is in Debian's nftables package on every node,
its input is the same text an operator would read with ``nft list table ip
overlayd``, and it needs no extra wheel.

The masquerade rules are flannel's, in nftables form:

- pod -> pod anywhere in the Network: keep the pod address (return);
- pod -> multicast: untouched;
- pod -> outside the Network: masquerade to the node's address;
- outside the Network (the host itself) -> a remote pod: masquerade, so the
  reply comes back through the overlay.

FORWARD accept: in nftables an ``accept`` only ends the chain it is in, so a
drop policy in another table (Docker's, a host firewall's) still wins; our
chain makes overlayd's traffic explicit for br_netfilter setups and is a
no-op where nothing else filters.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

from ..errors import PlumbingError

TABLE = "overlayd"


def ruleset(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, masquerade: bool) -> str:
    """The nft script that (re)creates our table (pure, so it is unit-tested)."""
    lines = [
        f"table ip {TABLE}",          # make sure it exists so the delete below cannot fail
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f"    ip saddr {network} accept",
        f"    ip daddr {network} accept",
        "  }",
    ]
    if masquerade:
        lines += [
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f"    ip saddr {network} ip daddr {network} return",
            f"    ip saddr {network} ip daddr 224.0.0.0/4 return",
            f"    ip saddr {network} ip daddr != {network} masquerade fully-random",
            f"    ip saddr != {network} ip daddr {subnet} return",
            f"    ip saddr != {network} ip daddr {network} masquerade fully-random",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _nft(script: str) -> None:
    nft = shutil.which("nft")
    if nft is None:
        raise PlumbingError("nft not found (install Debian's nftables package)")
    try:
        result = subprocess.run([nft, "-f", "-"], input=script, text=True, capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise PlumbingError("nft did not answer within 30 s") from None
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["unknown error"])[0]
        raise PlumbingError(f"nft failed: {first}")


def apply(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, masquerade: bool) -> None:
    """Install (or replace) our table for this node."""
    _nft(ruleset(network, subnet, masquerade))


def remove() -> None:
    """Delete our table if it exists."""
    _nft(f"table ip {TABLE}\ndelete table ip {TABLE}\n")
