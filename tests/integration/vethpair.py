"""Two throwaway network namespaces joined by a veth pair, the underlay of the two-node tests."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator


def ip(*argv: str) -> None:
    """Run ``ip ARGV``, failing the test when it fails."""
    subprocess.run(["ip", *argv], check=True)


@contextlib.contextmanager
def veth_pair(tag: str) -> Iterator[tuple[str, str]]:
    """Namespaces A and B (names from ``tag``, unique per call), joined by a veth pair named ``eth0`` on
    both sides, up with lo: A has 198.18.0.11/24 and 2001:db8::11/64, B .12 and ::12 (IPv6 without
    DAD, usable at once). Both namespaces are deleted on exit, whatever happened."""
    a, b = (f"ovt-{tag}{side}-{secrets.token_hex(3)}" for side in "ab")
    made = []
    try:
        for name in (a, b):
            ip("netns", "add", name)
            made.append(name)
        ip("link", "add", f"ovt-{tag}", "netns", a, "type", "veth", "peer", "name", f"ovt-{tag}p", "netns", b)
        for name, link, n in ((a, f"ovt-{tag}", 11), (b, f"ovt-{tag}p", 12)):
            ip("-n", name, "link", "set", link, "name", "eth0")
            ip("-n", name, "addr", "add", f"198.18.0.{n}/24", "dev", "eth0")
            ip("-n", name, "addr", "add", f"2001:db8::{n}/64", "dev", "eth0", "nodad")
            ip("-n", name, "link", "set", "eth0", "up")
            ip("-n", name, "link", "set", "lo", "up")
        yield a, b
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)
