"""Services and endpoints: the model, its validation and its etcd codec (issue 22).

Key layout, beside flannel's ``<prefix>/config`` and ``<prefix>/subnets/``::

    <prefix>/services/web                                  a service
    <prefix>/endpoints/web/10.244.3.0-24/10.244.3.5        an endpoint: service, owner, pod IP
    <prefix>/endpoints/web/10.244.3.0-24/10.244.3.5:8080   ... with a port of its own

The owner is the node whose lease's subnet holds the pod IP, spelled as its lease key
(``10.244.3.0-24``); the endpoint key is put with that node's etcd lease, so a dead node's
endpoints vanish with its lease. A service value::

    {"ClusterIP": "10.96.0.10",
     "Ports": [{"Port": 80, "TargetPort": 8080, "Protocol": "TCP", "NodePort": 30080}],
     "ExternalTrafficPolicy": "Cluster", "SessionAffinity": "ClientIP",
     "SessionAffinityTimeout": 10800, "HealthCheckPath": "/healthz"}

(the last three are optional), an endpoint value ``{"Ready": true}`` (with
``"Source": "cni"`` when its node's daemon manages it, see :mod:`.spool`). An endpoint without
a port of its own serves every port of its service at that port's TargetPort; one with a
port serves a single-port service there.

Both subtrees sort next to each other: everything between ``<prefix>/endpoints/`` and the
end of ``<prefix>/services/`` is read in one listing (one revision) and followed by one
watch (:func:`watch_range`); a key in between that is neither is ignored.

Every constructor validates: a :class:`Service` or :class:`Endpoint` that exists is valid,
and what is wrong is one :class:`~overlayd.errors.ServiceError` line.

Pure code: no I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from typing import Any

from ..errors import ServiceError
from ..netconf import ServiceRange

TCP, UDP = "TCP", "UDP"
PROTOCOLS = (TCP, UDP)
CLUSTER, LOCAL = "Cluster", "Local"  # externalTrafficPolicy
NO_AFFINITY, CLIENT_IP = "None", "ClientIP"  # sessionAffinity
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, Kubernetes' default (3 h)
MAX_AFFINITY_TIMEOUT = 86400  # Kubernetes' limit (1 day)
MAX_NAME = 63
# a DNS-1035 label, as a Kubernetes service name: it also makes safe nft chain names
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_PATH = re.compile(r"/[!-~]{0,199}")  # an HTTP path: printable ASCII, no space
_PORT_SPEC = re.compile(r"(\d+)(?::(\d+))?(?:/([A-Za-z]+))?")

Address = ipaddress.IPv4Address


def check_name(name: Any, what: str = "service name") -> str:
    """``name`` if it is a valid service name (a DNS-1035 label: lower-case letters, digits
    and '-', starting with a letter, at most 63 characters)."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise ServiceError(f"{what} {_show(name)}: use lower-case letters, digits and '-', starting "
                           f"with a letter, at most {MAX_NAME} characters")
    return name


def _show(value: Any, limit: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ServiceError(f"{what} must be a port number 1-65535, got {_show(value)}")
    return value


@dataclasses.dataclass(frozen=True)
class ServicePort:
    """One port of a service: ``port`` on the ClusterIP (and ``node_port`` on every node's
    addresses, if any) forwarded to ``target_port`` on an endpoint. ``node_port`` 0 asks
    the store to allocate one (only before the service is created)."""

    port: int
    target_port: int
    protocol: str = TCP
    node_port: int | None = None

    def __post_init__(self):
        _port(self.port, "port")
        _port(self.target_port, f"port {self.port}: targetPort")
        if self.protocol not in PROTOCOLS:
            raise ServiceError(f"port {self.port}: protocol must be TCP or UDP, got {_show(self.protocol)}")
        if self.node_port is not None and self.node_port != 0:
            _port(self.node_port, f"port {self.port}: nodePort")

    @property
    def proto(self) -> str:
        """``tcp`` or ``udp``, as nft and the command line spell it."""
        return self.protocol.lower()

    def spec(self) -> str:
        """The command line's form: ``80:8080/tcp``."""
        return f"{self.port}:{self.target_port}/{self.proto}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Port": self.port, "TargetPort": self.target_port, "Protocol": self.protocol}
        if self.node_port is not None:
            out["NodePort"] = self.node_port
        return out


def parse_port(spec: str, node_port: int | None = None) -> ServicePort:
    """``PORT[:TARGETPORT][/tcp|/udp]`` (the command line's ``--port``) as a :class:`ServicePort`;
    the target port defaults to the port, the protocol to TCP."""
    match = _PORT_SPEC.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise ServiceError(f"port {_show(spec)}: expected PORT[:TARGETPORT][/tcp|/udp], e.g. 80:8080/tcp")
    port, target, proto = match.groups()
    return ServicePort(int(port), int(target or port), (proto or TCP).upper(), node_port)


@dataclasses.dataclass(frozen=True)
class Service:
    """A service: a name, a ClusterIP (None until the store allocates one) and its ports.

    ``external_traffic_policy`` Local sends NodePort traffic only to this node's endpoints
    and keeps the client's address; ``session_affinity`` ClientIP sends a client's new
    connections to the endpoint it used last, for ``affinity_timeout`` seconds;
    ``health_path`` makes the endpoints' health check an HTTP GET of that path (else a TCP
    connect). ``revision`` is the etcd key's last modification (not part of equality).
    """

    name: str
    cluster_ip: Address | None
    ports: tuple[ServicePort, ...]
    external_traffic_policy: str = CLUSTER
    session_affinity: str = NO_AFFINITY
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    health_path: str | None = None
    revision: int = dataclasses.field(default=0, compare=False)

    def __post_init__(self):
        check_name(self.name)
        where = f"service {self.name}"
        if self.cluster_ip is not None and not isinstance(self.cluster_ip, Address):
            raise ServiceError(f"{where}: ClusterIP must be an IPv4 address, got {_show(str(self.cluster_ip))}")
        if not self.ports:
            raise ServiceError(f"{where}: needs at least one port")
        seen, node_ports = set(), set()
        for p in self.ports:
            if (p.port, p.protocol) in seen:
                raise ServiceError(f"{where}: port {p.port}/{p.proto} given twice")
            seen.add((p.port, p.protocol))
            if p.node_port:
                if (p.node_port, p.protocol) in node_ports:
                    raise ServiceError(f"{where}: nodePort {p.node_port}/{p.proto} given twice")
                node_ports.add((p.node_port, p.protocol))
        if self.external_traffic_policy not in (CLUSTER, LOCAL):
            raise ServiceError(f"{where}: externalTrafficPolicy must be Cluster or Local, got "
                               f"{_show(self.external_traffic_policy)}")
        if self.external_traffic_policy == LOCAL and all(p.node_port is None for p in self.ports):
            raise ServiceError(f"{where}: externalTrafficPolicy Local needs a NodePort (it is about "
                               "traffic from outside the cluster)")
        if self.session_affinity not in (NO_AFFINITY, CLIENT_IP):
            raise ServiceError(f"{where}: sessionAffinity must be None or ClientIP, got "
                               f"{_show(self.session_affinity)}")
        timeout = self.affinity_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_AFFINITY_TIMEOUT:
            raise ServiceError(f"{where}: sessionAffinityTimeout must be 1-{MAX_AFFINITY_TIMEOUT} seconds, "
                               f"got {_show(timeout)}")
        if self.health_path is not None and (not isinstance(self.health_path, str)
                                             or not _PATH.fullmatch(self.health_path)):
            raise ServiceError(f"{where}: health check path must start with '/' and be printable "
                               f"ASCII without spaces (at most 200 characters), got {_show(self.health_path)}")

    @property
    def affinity(self) -> bool:
        """Whether a client sticks to its endpoint (sessionAffinity ClientIP)."""
        return self.session_affinity == CLIENT_IP

    @property
    def local(self) -> bool:
        """Whether external traffic goes to this node's endpoints only (externalTrafficPolicy Local)."""
        return self.external_traffic_policy == LOCAL

    def check_range(self, services: ServiceRange) -> None:
        """:class:`ServiceError` unless the ClusterIP and NodePorts lie in the config's ranges."""
        if self.cluster_ip is not None and not services.first_ip <= self.cluster_ip <= services.last_ip:
            raise ServiceError(f"service {self.name}: ClusterIP {self.cluster_ip} is not a host address of "
                               f"ServiceNetwork {services.network}")
        for p in self.ports:
            if p.node_port and not services.node_port_min <= p.node_port <= services.node_port_max:
                raise ServiceError(f"service {self.name}: nodePort {p.node_port} is outside NodePortRange "
                                   f"{services.node_port_min}-{services.node_port_max}")

    def to_json(self) -> dict[str, Any]:
        """The etcd value as a JSON object (defaults left out, except the traffic policy)."""
        out: dict[str, Any] = {"ClusterIP": str(self.cluster_ip) if self.cluster_ip else None,
                               "Ports": [p.to_json() for p in self.ports],
                               "ExternalTrafficPolicy": self.external_traffic_policy,
                               "SessionAffinity": self.session_affinity}
        if self.affinity:
            out["SessionAffinityTimeout"] = self.affinity_timeout
        if self.health_path is not None:
            out["HealthCheckPath"] = self.health_path
        return out

    def encode(self) -> bytes:
        """The etcd value; only a service with its ClusterIP and NodePorts allocated is stored."""
        if self.cluster_ip is None or any(p.node_port == 0 for p in self.ports):
            raise ValueError(f"service {self.name} is not allocated yet")
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def decode(cls, name: str, raw: bytes | str, revision: int = 0) -> "Service":
        """Parse an etcd value; :class:`ServiceError` (one line) if it is not a valid service."""
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise TypeError("not a JSON object")
            ports = obj.get("Ports")
            if not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports):
                raise TypeError("Ports must be a list of objects")
            ip = obj.get("ClusterIP")
            if not isinstance(ip, str):
                raise TypeError("ClusterIP must be a string")
            return cls(
                name, Address(ip),
                tuple(ServicePort(p.get("Port"), p.get("TargetPort", p.get("Port")), p.get("Protocol", TCP),
                                  p.get("NodePort")) for p in ports),
                obj.get("ExternalTrafficPolicy", CLUSTER), obj.get("SessionAffinity", NO_AFFINITY),
                obj.get("SessionAffinityTimeout", DEFAULT_AFFINITY_TIMEOUT), obj.get("HealthCheckPath"),
                revision)
        except (ValueError, TypeError, RecursionError) as exc:
            raise ServiceError(f"service {name}: malformed value ({exc})") from None


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A pod behind a service: ``ip`` (and ``port``, None for each service port's
    TargetPort), owned by the node whose lease is on ``node`` (a subnet holding ``ip``).

    ``handle`` is the etcd lease the key is bound to (its node's; 0 for none), ``revision``
    the key's last modification, ``source`` who manages it (``"cni"``: the owner's daemon,
    from the CNI plugin's spool; None: an operator); none of them is part of equality.
    """

    service: str
    node: ipaddress.IPv4Network
    ip: Address
    port: int | None = None
    ready: bool = True
    handle: int = dataclasses.field(default=0, compare=False)
    revision: int = dataclasses.field(default=0, compare=False)
    source: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        check_name(self.service)
        if not isinstance(self.ip, Address):
            raise ServiceError(f"endpoint {_show(str(self.ip))}: must be an IPv4 address")
        if self.port is not None:
            _port(self.port, f"endpoint {self.ip}: port")
        if self.ip not in self.node:
            raise ServiceError(f"endpoint {self.ip} is not in its node's subnet {self.node}")
        if not isinstance(self.ready, bool):
            raise ServiceError(f"endpoint {self.address}: Ready must be true or false")
        if self.source is not None and not isinstance(self.source, str):
            raise ServiceError(f"endpoint {self.address}: Source must be a string")

    @property
    def address(self) -> str:
        """``10.244.3.5`` or ``10.244.3.5:8080``, as in its key and on the command line."""
        return str(self.ip) if self.port is None else f"{self.ip}:{self.port}"

    def target(self, port: ServicePort) -> int:
        """The port this endpoint serves ``port`` on."""
        return self.port or port.target_port

    def same_place(self, other: "Endpoint") -> bool:
        """Whether ``other`` has this endpoint's key (service, node, address)."""
        return (self.service, self.node, self.ip, self.port) == (other.service, other.node, other.ip, other.port)

    def encode(self) -> bytes:
        return json.dumps({"Ready": self.ready, **({"Source": self.source} if self.source else {})}).encode()


def parse_address(text: str) -> tuple[Address, int | None]:
    """``IP[:PORT]`` (the command line's endpoint) as ``(ip, port or None)``."""
    host, colon, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        ip = Address(host)
    except ValueError:
        raise ServiceError(f"endpoint {_show(text)}: expected an IPv4 address with an optional "
                           ":PORT, e.g. 10.244.3.5:8080") from None
    if colon and not port.isdecimal():
        raise ServiceError(f"endpoint {_show(text)}: the port must be a number 1-65535")
    return ip, _port(int(port), f"endpoint {text}: port") if colon else None


# --- keys ----------------------------------------------------------------------------


def services_prefix(prefix: str) -> str:
    """``<prefix>/services/``: one key per service."""
    return f"{prefix.rstrip('/')}/services/"


def endpoints_prefix(prefix: str, service: str | None = None) -> str:
    """``<prefix>/endpoints/`` (with ``service``: that service's endpoints, ``.../web/``)."""
    head = f"{prefix.rstrip('/')}/endpoints/"
    return head if service is None else f"{head}{service}/"


def service_key(prefix: str, name: str) -> str:
    return services_prefix(prefix) + name


def node_name(subnet: ipaddress.IPv4Network) -> str:
    """A node as an endpoint key names it: its lease's subnet, ``10.244.3.0-24``."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def endpoint_key(prefix: str, ep: Endpoint) -> str:
    return f"{endpoints_prefix(prefix, ep.service)}{node_name(ep.node)}/{ep.address}"


def watch_range(prefix: str) -> tuple[str, str]:
    """``[start, end)`` covering both subtrees (see the module note): listed and watched as one."""
    services = services_prefix(prefix)
    return endpoints_prefix(prefix), services[:-1] + chr(ord(services[-1]) + 1)


@dataclasses.dataclass(frozen=True)
class Change:
    """One key of the range as listed or watched: a service or an endpoint, ``value`` None
    when deleted (or when it no longer decodes, which ``error`` then says)."""

    key: str
    value: Service | Endpoint | None
    revision: int
    error: str | None = None


def decode(prefix: str, key: str | bytes, value: bytes | None, revision: int, handle: int = 0) -> Change | None:
    """The :class:`Change` for an etcd key of the range and its value (None: deleted); None
    for a key that is neither a service nor an endpoint key. A value or key that does not
    decode is a deletion with its ``error``, as the lease watch treats a garbled lease."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    try:
        if key.startswith(services_prefix(prefix)):
            name = key[len(services_prefix(prefix)):]
            obj = None if value is None else Service.decode(check_name(name), value, revision)
        elif key.startswith(endpoints_prefix(prefix)):
            obj = _endpoint(key[len(endpoints_prefix(prefix)):], value, revision, handle)
        else:
            return None
    except ServiceError as exc:
        return Change(key, None, revision, str(exc))
    return Change(key, obj, revision)


def _endpoint(rest: str, value: bytes | None, revision: int, handle: int) -> Endpoint | None:
    parts = rest.split("/")
    if len(parts) != 3:
        raise ServiceError(f"not an endpoint key: .../endpoints/{rest}")
    service, node, address = parts
    addr, dash, length = node.partition("-")
    try:
        subnet = ipaddress.IPv4Network(f"{addr}/{length}") if dash and length.isdecimal() else None
    except ValueError:
        subnet = None
    if subnet is None or node_name(subnet) != node:
        raise ServiceError(f"endpoint key .../{rest}: {node!r} is not a node's subnet such as 10.244.3.0-24")
    ip, port = parse_address(address)
    if value is None:
        return None
    try:
        obj = json.loads(value)
        ready, source = obj.get("Ready", True), obj.get("Source")
    except (ValueError, AttributeError, RecursionError):
        raise ServiceError(f"endpoint {address} of {service}: malformed value") from None
    return Endpoint(check_name(service), subnet, ip, port, ready, handle, revision, source)
