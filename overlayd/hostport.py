"""``host:port`` as URLs and gRPC targets spell it: an IPv6 literal in brackets.

``2001:db8::2:2379`` is one IPv6 address; ``[2001:db8::2]:2379`` is that
address and port 2379 (RFC 3986's IP-literal). Pure.
"""

from __future__ import annotations


def host_port(host: str, port: int) -> str:
    """``"198.18.0.2:2379"``, ``"etcd:2379"``, ``"[2001:db8::2]:2379"`` (``host`` without brackets,
    as :func:`urllib.parse.urlsplit`'s ``hostname`` gives it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
