"""Firewall rules in nftables: FORWARD accept for the Network, and pod egress masquerading.

Our rules live in a table of our own per IP family, ``ip overlayd`` and
(with IPv6 pods) ``ip6 overlayd``, each replaced as a whole in one ``nft -f
-`` transaction (so a re-run never duplicates a rule and an operator's own
tables are never touched). We drive the ``nft`` tool rather
than a Python binding: it is in Debian's nftables package on every node,
its input is the same text an operator would read with ``nft list table ip
overlayd``, and it needs no extra wheel.

The masquerade rules are flannel's, in nftables form, the same for both
families (flannel's IPv6 rules are its IPv4 ones with the IPv6 Network):

- pod -> pod anywhere in the Network: keep the pod address (return);
- pod -> multicast (224.0.0.0/4, ff00::/8): untouched;
- pod -> outside the Network: masquerade to the node's address;
- outside the Network (the host itself) -> a remote pod: masquerade, so the
  reply comes back through the overlay.

FORWARD accept: in nftables an ``accept`` only ends the chain it is in, so a
drop policy in another table (Docker's, a host firewall's) still wins; our
chain makes overlayd's traffic explicit for br_netfilter setups and is a
no-op where nothing else filters.

Drift repair: :func:`ensure` lists the live table (``nft list table``) and
re-applies only when it differs from ours; :func:`ensure_absent` drops the
table of a family the node has no pods of (IPv6 turned off) if one is there. nft prints a table back in the
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
#: nft's family (and address match keyword) and the multicast range, per IP version
FAMILY = {4: "ip", 6: "ip6"}
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _drop_table(version: int) -> str:
    # create-then-delete: the delete cannot fail when the table is absent (removes it, or
    # clears the way for a new one in the same atomic nft script)
    return f"table {FAMILY[version]} {TABLE}\ndelete table {FAMILY[version]} {TABLE}\n"


def ruleset(network: Network, subnet: Network, masquerade: bool) -> str:
    """The nft script that (re)creates our table for ``network``'s family (pure, so it is unit-tested)."""
    return _drop_table(network.version) + table(network, subnet, masquerade)  # replaced as a whole, atomically


def table(network: Network, subnet: Network, masquerade: bool) -> str:
    """Our table for ``network``'s family as nft prints it (``nft list table ip overlayd``, or
    ``ip6``), indentation aside."""
    ip = FAMILY[network.version]
    lines = [
        f"table {ip} {TABLE} {{",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f"    {ip} saddr {network} accept",
        f"    {ip} daddr {network} accept",
        "  }",
    ]
    if masquerade:
        lines += [
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f"    {ip} saddr {network} {ip} daddr {network} return",
            f"    {ip} saddr {network} {ip} daddr {MULTICAST[network.version]} return",
            f"    {ip} saddr {network} {ip} daddr != {network} masquerade fully-random",
            f"    {ip} saddr != {network} {ip} daddr {subnet} return",
            f"    {ip} saddr != {network} {ip} daddr {network} masquerade fully-random",
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


def listing(version: int = 4) -> str | None:
    """Our live table of IP ``version`` as ``nft list table`` prints it, or None when there is none."""
    return list_table(FAMILY[version], TABLE)


def list_table(family: str, name: str) -> str | None:
    """``nft list table FAMILY NAME`` (numeric ports), or None when there is no such table."""
    result = _run("list", "table", family, name)
    return result.stdout if result.returncode == 0 else None


def run_script(script: str) -> None:
    """Run an nft script (``nft -f -``) as one atomic transaction; :class:`PlumbingError`
    with nft's first error line when it fails (then nothing of it is applied)."""
    _nft(script)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def apply(network: Network, subnet: Network, masquerade: bool) -> None:
    """Install (or replace) our table of ``network``'s family for this node."""
    _nft(ruleset(network, subnet, masquerade))


def ensure(network: Network, subnet: Network, masquerade: bool) -> str | None:
    """Our table of ``network``'s family is installed as wanted; re-applied only if the live one
    is missing or differs (one call per family the node has pods of).

    Returns what was wrong ("nft table ip overlayd was missing"), or None when nothing was.
    """
    live = listing(network.version)
    if live is not None and _lines(live) == _lines(table(network, subnet, masquerade)):
        return None
    apply(network, subnet, masquerade)
    return f"nft table {FAMILY[network.version]} {TABLE} was {'different' if live is not None else 'missing'}"


def ensure_absent(version: int) -> str | None:
    """No table of ours for IP ``version`` (a family the node no longer has pods of, after the
    config turned it off); deleted only if there is one, so drift repair may call it every pass.

    Returns what was wrong ("nft table ip6 overlayd was extra (removed)"), or None.
    """
    if listing(version) is None:
        return None
    remove((version,))
    return f"nft table {FAMILY[version]} {TABLE} was extra (removed)"


def remove(versions: tuple[int, ...] = (4, 6)) -> None:
    """Delete our tables of these IP versions (by default both) if they exist."""
    _nft("".join(_drop_table(version) for version in versions))
