"""overlayd's CNI plugin (``type: overlayd``), a meta-plugin in the style of flannel's.

Design note
-----------
The plugin owns no network plumbing itself. On ADD it reads the node's lease from
``subnet.env`` (written by the daemon), renders a config for a *delegate* plugin
(Debian's ``bridge`` with ``host-local`` IPAM by default, overridable through
``delegate``) and runs that plugin with the same environment. The rendered config
is saved under ``dataDir`` as ``<containerid>-<ifname>.json`` *before* the delegate
runs, so DEL and CHECK replay exactly what ADD used even when subnet.env has
changed or is gone (daemon down or node re-leased). A failed ADD is undone with a
best-effort delegate DEL (so a veth the bridge made before failing does not stay
behind) and the saved file is removed. DEL of an unknown container succeeds silently, as the
spec requires.

Services (issue 22): a pod that names services (``services`` in the network config or in
its ``runtimeConfig``, or ``OVERLAYD_SERVICES=web,api`` in CNI_ARGS) joins them. The plugin
stays etcd-free: after a successful ADD it writes the pod's IPv4 address and the service
names to the daemon's endpoint spool (``endpointsDir``, default
``/run/overlayd/endpoints``), which the daemon publishes; DEL removes the entry (see
:mod:`overlayd.service.spool`). The bridge gets ``hairpinMode`` so that a pod reaching
itself through its service is bridged back to it.

Only the delegate's result (or a CNI error object) is ever written to stdout;
every failure becomes ``{"cniVersion", "code", "msg", "details"}`` and exit 1.
Everything that needs no I/O (config parsing, delegate rendering, result
formatting) is a plain function so it can be unit tested without root.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from . import subnetenv
from .atomicfile import write_atomic
from .errors import ConfigError, OverlayError, ServiceError
from .service import spool

SPEC_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
PLUGIN_TYPE = "overlayd"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/overlayd"

# Error codes from the CNI spec ("Error" section); 999 is "anything else".
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_OTHER = 999

_ENV_NEEDED = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")
REQUIRED_ENV = {
    "ADD": _ENV_NEEDED,
    "CHECK": _ENV_NEEDED,
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),  # CNI_NETNS may be gone; CNI_PATH checked on use
}
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # fullmatch: "$" would allow a final "\n"
_DELEGATE_FIXED = ("cniVersion", "name")


class CniError(OverlayError):
    """A failure reported to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


@dataclasses.dataclass(frozen=True)
class NetConf:
    """Our network config, as received on stdin."""

    cni_version: str
    name: str
    subnet_file: str = DEFAULT_SUBNET_FILE
    data_dir: str = DEFAULT_DATA_DIR
    delegate: dict[str, Any] = dataclasses.field(default_factory=dict)
    prev_result: dict[str, Any] | None = None
    services: tuple[str, ...] = ()  # services the pod joins (config and runtimeConfig)
    endpoints_dir: str = spool.DEFAULT_DIR


@dataclasses.dataclass(frozen=True)
class Invocation:
    """The CNI_* environment of one call (CNI_NETNS and CNI_ARGS only pass through)."""

    command: str
    container_id: str
    ifname: str
    cni_path: tuple[str, ...]


# --- pure functions ---------------------------------------------------------


def parse_env(environ: Mapping[str, str]) -> Invocation:
    """Validate the CNI_* variables needed by CNI_COMMAND (code 4 when not)."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(ERR_INVALID_ENV, "CNI_COMMAND is not set")
    if command not in REQUIRED_ENV:
        raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    missing = [name for name in REQUIRED_ENV[command] if not environ.get(name)]
    if missing:
        raise CniError(ERR_INVALID_ENV, f"required environment variables missing: {', '.join(missing)}")
    container_id = environ["CNI_CONTAINERID"]
    if not _CONTAINER_ID.fullmatch(container_id):
        raise CniError(ERR_INVALID_ENV, f"invalid CNI_CONTAINERID: {container_id!r}",
                       "letters, digits, '_', '.' and '-' only")
    ifname = environ["CNI_IFNAME"]
    if len(ifname) > 15 or ifname in (".", "..") or any(c in ifname for c in "/: \t\n"):
        raise CniError(ERR_INVALID_ENV, f"invalid CNI_IFNAME: {ifname!r}")
    cni_path = tuple(d for d in environ.get("CNI_PATH", "").split(":") if d)
    return Invocation(command, container_id, ifname, cni_path)


def decode(raw: bytes | str, what: str) -> Any:
    """``raw`` as JSON; code 6 naming ``what`` when it is not (also when nested too deeply
    for the decoder, which raises RecursionError rather than ValueError)."""
    try:
        return json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        raise CniError(ERR_DECODE, f"cannot decode {what}", str(exc)) from None
    except RecursionError:
        raise CniError(ERR_DECODE, f"cannot decode {what}", "JSON nested too deeply") from None


def parse_netconf(raw: bytes | str) -> NetConf:
    """Decode and validate our network config (codes 1, 2, 6 and 7)."""
    data = decode(raw, "network config from stdin")
    if not isinstance(data, dict):
        raise CniError(ERR_DECODE, "network config is not a JSON object")
    version = data.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ERR_INVALID_CONFIG, "network config: cniVersion is missing")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"unsupported cniVersion {version}",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    if data.get("type") != PLUGIN_TYPE:
        raise CniError(ERR_INVALID_CONFIG, f"network config: type must be {PLUGIN_TYPE!r}")
    name = _string(data, "name", None)
    if not name:
        raise CniError(ERR_INVALID_CONFIG, "network config: name is missing")
    delegate = data.get("delegate", {})
    if not isinstance(delegate, dict):
        raise CniError(ERR_INVALID_CONFIG, "network config: delegate must be an object")
    if "ipam" in delegate and not isinstance(delegate["ipam"], dict):
        raise CniError(ERR_INVALID_CONFIG, "network config: delegate.ipam must be an object")
    fixed = [key for key in _DELEGATE_FIXED if key in delegate]
    if fixed:
        raise CniError(ERR_UNSUPPORTED_FIELD, f"network config: delegate.{fixed[0]} cannot be set",
                       "the delegate always uses our cniVersion and name")
    prev_result = data.get("prevResult")
    if prev_result is not None and not isinstance(prev_result, dict):
        raise CniError(ERR_INVALID_CONFIG, "network config: prevResult must be an object")
    runtime = data.get("runtimeConfig", {})
    if not isinstance(runtime, dict):
        raise CniError(ERR_INVALID_CONFIG, "network config: runtimeConfig must be an object")
    services = ()
    for where, value in (("services", data.get("services")), ("runtimeConfig.services", runtime.get("services"))):
        if value is not None:
            services += _services(value, f"network config: {where}")
    return NetConf(version, name, _string(data, "subnetFile", DEFAULT_SUBNET_FILE),
                   _string(data, "dataDir", DEFAULT_DATA_DIR), delegate, prev_result,
                   tuple(dict.fromkeys(services)), _string(data, "endpointsDir", spool.DEFAULT_DIR))


def _services(value: Any, where: str) -> tuple[str, ...]:
    try:
        return spool.parse_services(value, where)
    except ServiceError as exc:
        raise CniError(ERR_INVALID_CONFIG, str(exc)) from None


def args_services(cni_args: str) -> tuple[str, ...]:
    """The services named in CNI_ARGS (``K=V;...``) by ``OVERLAYD_SERVICES=web,api``."""
    pairs = dict(item.partition("=")[::2] for item in cni_args.split(";") if item)
    value = pairs.get("OVERLAYD_SERVICES")
    return () if value is None else _services(value, "CNI_ARGS: OVERLAYD_SERVICES")


def pod_ipv4(result: Mapping[str, Any]):
    """The pod's IPv4 address in a delegate's ADD result (``ips``, CNI 0.3.0 and later)."""
    for entry in result.get("ips") or ():
        try:
            address = ipaddress.ip_interface(entry["address"]).ip
        except (KeyError, TypeError, ValueError):
            continue
        if address.version == 4:
            return address
    raise CniError(ERR_OTHER, "cannot join services: the delegate's result has no IPv4 address")


def _string(data: dict[str, Any], key: str, default: str | None) -> str | None:
    value = data.get(key, default)
    if value is not None and not isinstance(value, str):
        raise CniError(ERR_INVALID_CONFIG, f"network config: {key} must be a string")
    return value


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``override``; nested objects are merged, not replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build_delegate(conf: NetConf, env: subnetenv.SubnetEnv) -> dict[str, Any]:
    """The delegate's config: a bridge on cni0 over the node's subnets, plus overrides.

    The pod's default route points at cni0 (``isDefaultGateway``, one per family
    the pod gets an address of): egress to the world (masqueraded by the node)
    and replies to node addresses (host-gw peers, the underlay) need it. When the
    daemon masquerades (FLANNEL_IPMASQ=true) the bridge must not. Each cluster
    network's route names its gateway (the subnet's first address, host-local's
    default and cni0's address) although the bridge would fill it in: plugins
    before 1.3.0 (Debian ships 1.1.1) fail CHECK on a route without "gw"
    (containernetworking/plugins#886).

    Dual stack: host-local gives one address per range set. The first family
    (IPv4 when the node has it) stays in host-local's one-range shorthand
    (``subnet``), which host-local puts before ``ranges``, so an
    ``ipam.rangeStart`` override keeps applying to it; the IPv6 subnet of a
    dual-stack node is the one extra range set. flannel's plugin writes every
    family into ``ranges``; the pod ends up with the same two addresses.
    """
    families = [(network, subnet) for network, subnet in ((env.network, env.subnet), (env.network6, env.subnet6))
                if network is not None]
    ipam: dict[str, Any] = {"type": "host-local", "subnet": str(families[0][1])}
    if len(families) > 1:
        ipam["ranges"] = [[{"subnet": str(subnet)}] for _, subnet in families[1:]]
    ipam["routes"] = [{"dst": str(network), "gw": str(subnet.network_address + 1)} for network, subnet in families]
    ipam["dataDir"] = os.path.join(conf.data_dir, "ipam")
    default = {
        "cniVersion": conf.cni_version,
        "name": conf.name,
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "isDefaultGateway": True,
        "hairpinMode": True,  # a pod reaching itself through a service (issue 22)
        "ipMasq": not env.ipmasq,
        "mtu": env.mtu,
        "ipam": ipam,
    }
    return merge(default, conf.delegate)


def saved_conf_path(data_dir: str, container_id: str, ifname: str) -> str:
    """Where ADD keeps the delegate config for DEL and CHECK."""
    return os.path.join(data_dir, f"{container_id}-{ifname}.json")


def error_result(err: CniError, cni_version: str = SPEC_VERSION) -> dict[str, Any]:
    """The spec's error object for ``err``."""
    return {"cniVersion": cni_version, "code": err.code, "msg": err.msg, "details": err.details}


def error_version(raw: bytes | str) -> str:
    """The cniVersion to answer an error in: the caller's when usable, else ours."""
    try:
        version = json.loads(raw).get("cniVersion")
    except (ValueError, AttributeError, RecursionError):
        return SPEC_VERSION
    return version if version in SUPPORTED_VERSIONS else SPEC_VERSION


def version_result() -> dict[str, Any]:
    """The answer to CNI_COMMAND=VERSION."""
    return {"cniVersion": SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def dump(obj: Mapping[str, Any]) -> bytes:
    """JSON bytes as written to stdout or to a delegate's stdin."""
    return json.dumps(obj).encode() + b"\n"


# --- I/O ---------------------------------------------------------------------


def load_subnet_env(path: str) -> subnetenv.SubnetEnv:
    """The daemon's subnet.env; code 11 while it does not exist yet."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise CniError(ERR_TRY_AGAIN_LATER, f"{path} does not exist",
                       "is overlayd running on this node?") from None
    except OSError as exc:
        raise CniError(ERR_IO, f"cannot read {path}", str(exc)) from None
    try:
        return subnetenv.parse(text)
    except ConfigError as exc:
        raise CniError(ERR_INVALID_CONFIG, str(exc), path) from None


def save_conf(path: str, conf: Mapping[str, Any]) -> None:
    """Write the delegate config atomically (temporary file, then rename)."""
    try:
        write_atomic(path, dump(conf).decode(), mode=0o600)
    except OSError as exc:
        raise CniError(ERR_IO, f"cannot save delegate config {path}", str(exc)) from None


def load_conf(path: str) -> dict[str, Any] | None:
    """The delegate config ADD saved, or None when there is none."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CniError(ERR_IO, f"cannot read delegate config {path}", str(exc)) from None
    conf = decode(raw, f"delegate config {path}")
    if not isinstance(conf, dict) or not isinstance(conf.get("type"), str):
        raise CniError(ERR_DECODE, f"delegate config {path} has no type")
    return conf


def remove_conf(path: str) -> None:
    """Forget a saved delegate config; already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CniError(ERR_IO, f"cannot remove delegate config {path}", str(exc)) from None


def find_plugin(plugin_type: str, cni_path: tuple[str, ...]) -> str:
    """The executable for ``plugin_type`` in the CNI_PATH directories."""
    if not cni_path:
        raise CniError(ERR_INVALID_ENV, "required environment variables missing: CNI_PATH")
    if not isinstance(plugin_type, str) or not plugin_type or "/" in plugin_type:
        raise CniError(ERR_INVALID_CONFIG, f"invalid delegate type {plugin_type!r}")
    for directory in cni_path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(ERR_OTHER, f"failed to find plugin {plugin_type!r} in path {list(cni_path)}")


def invoke(inv: Invocation, environ: Mapping[str, str], conf: Mapping[str, Any]) -> tuple[int, bytes]:
    """Run the delegate for ``inv.command``; its exit code and stdout.

    Its stderr goes straight to ours. A failure without an error object on
    stdout gets one of ours.
    """
    plugin = find_plugin(conf["type"], inv.cni_path)
    env = dict(environ, CNI_COMMAND=inv.command)
    try:
        proc = subprocess.run([plugin], input=dump(conf), env=env, stdout=subprocess.PIPE, check=False)
    except OSError as exc:
        raise CniError(ERR_OTHER, f"cannot run delegate {plugin}", str(exc)) from None
    code = proc.returncode if proc.returncode >= 0 else 1  # negative: killed by a signal
    if code != 0 and not proc.stdout.strip():
        raise CniError(ERR_OTHER, f"delegate {conf['type']} failed with status {proc.returncode}")
    return code, proc.stdout


def cmd_add(inv: Invocation, environ: Mapping[str, str], conf: NetConf) -> tuple[int, bytes]:
    """ADD: render and save the delegate config, then let the delegate do the work; a pod
    that names services is put in the endpoint spool."""
    services = tuple(dict.fromkeys(conf.services + args_services(environ.get("CNI_ARGS", ""))))
    delegate = build_delegate(conf, load_subnet_env(conf.subnet_file))
    find_plugin(delegate["type"], inv.cni_path)  # fail before leaving a file behind
    path = saved_conf_path(conf.data_dir, inv.container_id, inv.ifname)
    save_conf(path, delegate)
    code = None
    try:
        code, out = invoke(inv, environ, delegate)
        if code == 0 and services:
            _join(conf, inv, services, decode(out, "delegate result"))
    except CniError:
        if code == 0:
            _undo_failed_add(inv, environ, delegate)
        remove_conf(path)
        raise
    if code != 0:
        _undo_failed_add(inv, environ, delegate)
        remove_conf(path)
    return code, out


def _join(conf: NetConf, inv: Invocation, services: tuple[str, ...], result: Any) -> None:
    """Write the pod's spool entry: its IPv4 address and the services it joins."""
    if not isinstance(result, dict):
        raise CniError(ERR_DECODE, "delegate result is not a JSON object")
    entry = spool.Entry(pod_ipv4(result), services)
    try:
        spool.write_entry(spool.entry_path(conf.endpoints_dir, inv.container_id, inv.ifname), entry)
    except OSError as exc:
        raise CniError(ERR_IO, f"cannot write the endpoint spool entry in {conf.endpoints_dir}", str(exc)) from None


def _undo_failed_add(inv: Invocation, environ: Mapping[str, str], delegate: Mapping[str, Any]) -> None:
    """Best-effort delegate DEL after a failed ADD, so no veth or IP outlives our saved file."""
    try:
        invoke(dataclasses.replace(inv, command="DEL"), environ, delegate)
    except CniError as err:
        print(f"overlayd-cni: cleanup after failed ADD: {err.msg}", file=sys.stderr)


def cmd_del(inv: Invocation, environ: Mapping[str, str], conf: NetConf) -> tuple[int, bytes]:
    """DEL: leave the services (the spool entry goes), replay the saved config; nothing saved
    means nothing to delete."""
    try:
        spool.remove_entry(spool.entry_path(conf.endpoints_dir, inv.container_id, inv.ifname))
    except OSError as exc:
        raise CniError(ERR_IO, f"cannot remove the endpoint spool entry in {conf.endpoints_dir}", str(exc)) from None
    path = saved_conf_path(conf.data_dir, inv.container_id, inv.ifname)
    delegate = load_conf(path)
    if delegate is None:
        return 0, b""
    code, out = invoke(inv, environ, delegate)
    if code == 0:
        remove_conf(path)
    return code, out


def cmd_check(inv: Invocation, environ: Mapping[str, str], conf: NetConf) -> tuple[int, bytes]:
    """CHECK: replay the saved config with the runtime's prevResult."""
    path = saved_conf_path(conf.data_dir, inv.container_id, inv.ifname)
    delegate = load_conf(path)
    if delegate is None:
        raise CniError(ERR_UNKNOWN_CONTAINER, f"no saved delegate config for {inv.container_id}/{inv.ifname}")
    if conf.prev_result is not None:
        delegate["prevResult"] = conf.prev_result
    return invoke(inv, environ, delegate)


COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}


def run(environ: Mapping[str, str], stdin: Any) -> tuple[int, bytes]:
    """One plugin call: the exit code and what to write to stdout."""
    if environ.get("CNI_COMMAND") == "VERSION":
        return 0, dump(version_result())
    raw = stdin.read()
    try:
        inv = parse_env(environ)
        return COMMANDS[inv.command](inv, environ, parse_netconf(raw))
    except CniError as err:
        return 1, dump(error_result(err, error_version(raw)))


def main() -> None:
    """Console entry point ``overlayd-cni``."""
    try:
        code, out = run(os.environ, sys.stdin.buffer)
    except Exception as exc:  # never a traceback: the runtime only understands JSON
        print(f"overlayd-cni: internal error: {exc!r}", file=sys.stderr)
        code, out = 1, dump(error_result(CniError(ERR_OTHER, "internal error", repr(exc))))
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
