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

Drift repair: :func:`ensure` lists the live table (``nft list table``) and
re-applies only when it differs from ours. nft prints a table back in the
very text we feed it (tabs and blank lines aside: compared line by line,
stripped), so the comparison needs no stored baseline and also catches a
rule an operator added to our table. Should a future nft print it otherwise,
the symptom is one needless re-apply per period, which the end-to-end test
that watches ``nft monitor`` on an untouched node would catch.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

from ..errors import PlumbingError

TABLE = "overlayd"
# create-then-delete: the delete cannot fail when the table is absent (removes it, or
# clears the way for a new one in the same atomic nft script)
_DROP_TABLE = f"table ip {TABLE}\ndelete table ip {TABLE}\n"


def ruleset(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, masquerade: bool) -> str:
    """The nft script that (re)creates our table (pure, so it is unit-tested)."""
    return _DROP_TABLE + table(network, subnet, masquerade)  # replaced as a whole, atomically


def table(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, masquerade: bool) -> str:
    """Our table as nft prints it (``nft list table ip overlayd``), indentation aside."""
    lines = [
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


def _run(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    nft = shutil.which("nft")
    if nft is None:
        raise PlumbingError("nft not found (install Debian's nftables package)")
    try:
        return subprocess.run([nft, *args], input=script, text=True, capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise PlumbingError("nft did not answer within 30 s") from None


def _nft(script: str) -> None:
    result = _run("-f", "-", script=script)
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["unknown error"])[0]
        raise PlumbingError(f"nft failed: {first}")


def listing() -> str | None:
    """Our live table as ``nft list table`` prints it, or None when there is none."""
    result = _run("list", "table", "ip", TABLE)
    return result.stdout if result.returncode == 0 else None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def apply(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, masquerade: bool) -> None:
    """Install (or replace) our table for this node."""
    _nft(ruleset(network, subnet, masquerade))


def ensure(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, masquerade: bool) -> str | None:
    """Our table is installed as wanted; re-applied only if the live one is missing or differs.

    Returns what was wrong ("nft table ip overlayd was missing"), or None when nothing was.
    """
    live = listing()
    if live is not None and _lines(live) == _lines(table(network, subnet, masquerade)):
        return None
    apply(network, subnet, masquerade)
    return f"nft table ip {TABLE} was {'different' if live is not None else 'missing'}"


def remove() -> None:
    """Delete our table if it exists."""
    _nft(_DROP_TABLE)
