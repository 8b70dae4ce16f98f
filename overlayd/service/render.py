"""Services and endpoints -> one nftables table of our own, ``table ip overlayd-svc``. Pure.

The layout is kube-proxy's nftables mode (1.33), trimmed to what overlayd offers::

    prerouting, output (nat, dstnat)  -> jump services
    services:  ip daddr . meta l4proto . th dport vmap @service-ips
               ip daddr @node-addresses meta l4proto . th dport vmap @service-nodeports
    svc-web-tcp-80:   traffic from outside the pod Network is marked for masquerade;
                      a client with affinity goes back to its endpoint; else
                      numgen random mod N vmap { 0 : goto ep-..., ... }
    ext-web-tcp-80:   NodePort. Cluster: mark for masquerade, goto svc-...;
                      Local: pods of this node goto svc-..., others to this node's
                      endpoints only (no masquerade: the client's address is kept), or drop
    ep-web-tcp-80-10.244.3.5-8080:  hairpin (the pod itself) marked for masquerade,
                      affinity noted (``update @aff-...``), dnat to the pod
    postrouting (nat, srcnat): masquerade what is marked
    filter-input/forward/output: a service (or NodePort) without a ready endpoint is
                      rejected at once instead of timing out

One lookup per packet finds the service (the verdict maps), whatever the number of
services; only the chosen service's chain and one endpoint's chain run. That is the point of
kube-proxy's nftables mode against its iptables mode, which walks a chain per service.

Only the first packet of a connection reaches these NAT chains: conntrack carries the rest,
so an endpoint that stops being ready keeps its established connections and gets no new
ones once the table no longer names it.

The ruleset is a :class:`Ruleset` (sets and chains by name) so that the applier can move the
kernel from one to the next with the smallest script (:func:`update_script`): a change
touches only the chains and map elements it must, in one atomic ``nft -f`` transaction, and
the affinity sets (filled by the packet path) outlive changes to other services. Drift is
found by parsing ``nft list table`` back into a :class:`Ruleset` (:func:`parse_listing`) and
comparing (:func:`same`), dynamic sets' elements aside.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable

from .model import Endpoint, Service, ServicePort

FAMILY = "ip"
TABLE = "overlayd-svc"
MASQ_MARK = 0x4000  # kube-proxy's masquerade bit: leaves the low bits (fwmark users) alone
_MARK = f"0x{MASQ_MARK:08x}"
DYNAMIC_SIZE = 65535  # nft's default size of a dynamic set, written out as it lists it

_NAT = "type nat hook {hook} priority {priority}; policy accept;"
_FILTER = "type filter hook {hook} priority filter; policy accept;"
_BY_IP = "ip daddr . meta l4proto . th dport vmap @{map}"
_BY_NODE = "ip daddr @node-addresses meta l4proto . th dport vmap @{map}"


@dataclasses.dataclass(frozen=True)
class NodeView:
    """What the renderer needs to know about this node: the pod ``network`` (traffic from
    outside it is masqueraded), its own ``subnet`` (its endpoints are local) and the
    ``addresses`` NodePorts answer on."""

    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network
    addresses: tuple[ipaddress.IPv4Address, ...] = ()


@dataclasses.dataclass(frozen=True)
class NftSet:
    """A named set or map: its declaration lines (as nft lists them), its elements (as nft
    lists them), and whether the packet path fills it (affinity: elements not ours)."""

    kind: str  # "set" or "map"
    decl: tuple[str, ...]
    elements: frozenset[str] = frozenset()
    dynamic: bool = False

    def declaration(self) -> str:
        return "; ".join(self.decl) + ";"


@dataclasses.dataclass(frozen=True)
class Ruleset:
    """Our table: sets and chains by name; a chain is its lines (a base chain's first line
    is its ``type ... hook ...;`` declaration)."""

    sets: dict[str, NftSet]
    chains: dict[str, tuple[str, ...]]


def nft_duration(seconds: int) -> str:
    """``seconds`` as nft lists a timeout: ``3h``, ``1m30s``, ``1d``."""
    parts, left = [], seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _sid(service: Service, port: ServicePort) -> str:
    # unambiguous: a service name has no '.', and proto and port are the last two parts
    return f"{service.name}-{port.proto}-{port.port}"


def _targets(endpoints: Iterable[Endpoint], port: ServicePort, node: NodeView) -> list[tuple[str, int, bool]]:
    """The ready endpoints of ``port``: ``(ip, target port, local)``, sorted, no duplicates."""
    seen = {(ep.ip, ep.target(port)): ep.node == node.subnet for ep in endpoints if ep.ready}
    return [(str(ip), target, local) for (ip, target), local in sorted(seen.items())]


def render(services: Iterable[Service], endpoints: Iterable[Endpoint], node: NodeView) -> Ruleset:
    """The table for these services and endpoints on ``node``."""
    by_service: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        by_service.setdefault(ep.service, []).append(ep)
    elements: dict[str, set[str]] = {name: set() for name in (
        "service-ips", "service-nodeports", "no-endpoints", "no-endpoint-nodeports")}
    sets: dict[str, NftSet] = {}
    chains: dict[str, tuple[str, ...]] = {}
    for service in sorted(services, key=lambda s: s.name):
        for port in service.ports:
            sid = _sid(service, port)
            key = f"{service.cluster_ip} . {port.proto} . {port.port}"
            targets = _targets(by_service.get(service.name, ()), port, node)
            if not targets:
                elements["no-endpoints"].add(f"{key} : goto reject-chain")
                if port.node_port:
                    elements["no-endpoint-nodeports"].add(f"{port.proto} . {port.node_port} : goto reject-chain")
                continue
            elements["service-ips"].add(f"{key} : goto svc-{sid}")
            eids = []
            for ip, target, _ in targets:
                eid = f"{sid}-{ip}-{target}"
                eids.append(eid)
                chains[f"ep-{eid}"] = (
                    f"ip saddr {ip} jump mark-for-masquerade",  # hairpin: the pod reaching itself
                    *((f"update @aff-{eid} {{ ip saddr }}",) if service.affinity else ()),
                    f"meta l4proto {port.proto} dnat to {ip}:{target}",
                )
                if service.affinity:
                    sets[f"aff-{eid}"] = NftSet("set", (
                        "type ipv4_addr", f"size {DYNAMIC_SIZE}", "flags dynamic,timeout",
                        f"timeout {nft_duration(service.affinity_timeout)}"), dynamic=True)
            chains[f"svc-{sid}"] = (f"ip saddr != {node.network} jump mark-for-masquerade",
                                    *_pick(service, eids))
            if port.node_port:
                elements["service-nodeports"].add(f"{port.proto} . {port.node_port} : goto ext-{sid}")
                if service.local:
                    local = [eid for eid, (_, _, here) in zip(eids, targets) if here]
                    chains[f"ext-{sid}"] = (f"ip saddr {node.network} goto svc-{sid}",
                                            *(_pick(service, local) if local else ("drop",)))
                else:
                    chains[f"ext-{sid}"] = ("jump mark-for-masquerade", f"goto svc-{sid}")
    verdicts = {"service-ips": "ipv4_addr . inet_proto . inet_service : verdict",
                "no-endpoints": "ipv4_addr . inet_proto . inet_service : verdict",
                "service-nodeports": "inet_proto . inet_service : verdict",
                "no-endpoint-nodeports": "inet_proto . inet_service : verdict"}
    fixed_sets = {"node-addresses": NftSet("set", ("type ipv4_addr",), frozenset(map(str, node.addresses)))}
    fixed_sets.update({name: NftSet("map", (f"type {kind}",), frozenset(elements[name]))
                       for name, kind in verdicts.items()})
    fixed_chains = {
        "prerouting": (_NAT.format(hook="prerouting", priority="dstnat"), "jump services"),
        "output": (_NAT.format(hook="output", priority="-100"), "jump services"),
        "postrouting": (_NAT.format(hook="postrouting", priority="srcnat"),
                        f"meta mark & {_MARK} == {_MARK} meta mark set meta mark ^ {_MARK} masquerade fully-random"),
        "filter-input": (_FILTER.format(hook="input"), _BY_NODE.format(map="no-endpoint-nodeports")),
        "filter-forward": (_FILTER.format(hook="forward"), _BY_IP.format(map="no-endpoints")),
        "filter-output": (_FILTER.format(hook="output"), _BY_IP.format(map="no-endpoints"),
                          _BY_NODE.format(map="no-endpoint-nodeports")),
        "services": (_BY_IP.format(map="service-ips"), _BY_NODE.format(map="service-nodeports")),
        "mark-for-masquerade": (f"meta mark set meta mark | {_MARK}",),
        "reject-chain": ("reject",),
    }
    return Ruleset({**fixed_sets, **sets}, {**fixed_chains, **chains})


def _pick(service: Service, eids: list[str]) -> tuple[str, ...]:
    """The rules that send a new connection to one of ``eids``: back to the endpoint a client
    used last (affinity), else one at random."""
    sticky = tuple(f"ip saddr @aff-{eid} goto ep-{eid}" for eid in eids) if service.affinity else ()
    choices = ", ".join(f"{i} : goto ep-{eid}" for i, eid in enumerate(eids))
    return (*sticky, f"numgen random mod {len(eids)} vmap {{ {choices} }}")


# --- nft text --------------------------------------------------------------------------

_HEAD = f"table {FAMILY} {TABLE}"


def table_text(rs: Ruleset) -> str:
    """The table as an nft script block (what ``nft list table`` prints, modulo layout)."""
    lines = [f"{_HEAD} {{"]
    for name, s in rs.sets.items():
        lines += [f"\t{s.kind} {name} {{", *(f"\t\t{line}" for line in s.decl)]
        if s.elements and not s.dynamic:
            lines.append(f"\t\telements = {{ {', '.join(sorted(s.elements))} }}")
        lines.append("\t}")
    for name, body in rs.chains.items():
        lines += [f"\tchain {name} {{", *(f"\t\t{line}" for line in body), "\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def removal_script() -> str:
    """Delete our table (a no-op when there is none: created first, then deleted)."""
    return f"{_HEAD}\ndelete {_HEAD}\n"


def full_script(rs: Ruleset) -> str:
    """Replace our table by ``rs`` as a whole, atomically."""
    return removal_script() + table_text(rs)


def _key(element: str) -> str:
    return element.split(" : ", 1)[0]


def update_script(old: Ruleset, new: Ruleset) -> str:
    """The nft script that turns the live table ``old`` into ``new`` touching only what
    differs ("" when nothing does); the full replacement when a base chain or a set's
    declaration changes (never for services coming and going)."""
    base = lambda rs: {n: b for n, b in rs.chains.items() if b and b[0].startswith("type ")}  # noqa: E731
    if base(old) != base(new) or any(old.sets[n].decl != s.decl or old.sets[n].kind != s.kind
                                     for n, s in new.sets.items() if n in old.sets):
        return full_script(new)
    t = f"{FAMILY} {TABLE}"
    adds, fills, elements, drops = [], [], [], []
    for name, s in new.sets.items():
        if name not in old.sets:
            adds.append(f"add {s.kind} {t} {name} {{ {s.declaration()} }}")
    for name in new.chains:
        if name not in old.chains:
            adds.append(f"add chain {t} {name}")
    for name, body in new.chains.items():
        if old.chains.get(name) != body:
            if name in old.chains:
                fills.append(f"flush chain {t} {name}")
            fills += [f"add rule {t} {name} {rule}" for rule in body]
    for name, s in new.sets.items():
        if s.dynamic:
            continue
        before = {_key(e): e for e in (old.sets[name].elements if name in old.sets else ())}
        after = {_key(e): e for e in s.elements}
        gone = sorted(k for k, e in before.items() if after.get(k) != e)
        come = sorted(e for k, e in after.items() if before.get(k) != e)
        if gone:
            elements.append(f"delete element {t} {name} {{ {', '.join(gone)} }}")
        if come:
            elements.append(f"add element {t} {name} {{ {', '.join(come)} }}")
    removed = [name for name in old.chains if name not in new.chains]
    drops += [f"flush chain {t} {name}" for name in removed]  # their jumps to each other first
    drops += [f"delete chain {t} {name}" for name in removed]
    drops += [f"delete {s.kind} {t} {name}" for name, s in old.sets.items() if name not in new.sets]
    lines = adds + fills + elements + drops
    return "\n".join(lines) + "\n" if lines else ""


def parse_listing(text: str) -> Ruleset:
    """``nft list table ip overlayd-svc`` back into a :class:`Ruleset` (dynamic sets' elements,
    which the packet path fills with expiry times, are left out)."""
    sets: dict[str, NftSet] = {}
    chains: dict[str, tuple[str, ...]] = {}
    lines = iter(line.strip() for line in text.splitlines())
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind not in ("set", "map", "chain") or not rest.endswith("{"):
            continue
        name = rest[:-1].strip()
        body, elements = [], []
        for inner in lines:
            if inner == "}":
                break
            if inner.startswith("elements = {"):
                chunk = inner[len("elements = {"):]
                while not chunk.rstrip().endswith("}"):
                    chunk += " " + next(lines)
                elements = [e.strip() for e in chunk.rstrip()[:-1].split(",") if e.strip()]
            elif inner:
                body.append(inner)
        if kind == "chain":
            chains[name] = tuple(body)
        else:
            dynamic = any(line.startswith("flags") and "dynamic" in line for line in body)
            sets[name] = NftSet(kind, tuple(body), frozenset() if dynamic else frozenset(elements), dynamic)
    return Ruleset(sets, chains)


def same(live: Ruleset, want: Ruleset) -> bool:
    """Whether the live table is ``want`` (dynamic sets' elements aside)."""
    return live.chains == want.chains and live.sets == want.sets
