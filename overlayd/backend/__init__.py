"""Backends by name: ``Backend.Type`` in the network config selects one."""

from __future__ import annotations

from ..errors import ConfigError
from ..netconf import NetworkConfig
from .base import Backend, NodeOptions, Underlay


def backend_class(config: NetworkConfig, options: NodeOptions) -> type[Backend]:
    """The class implementing ``config.backend.type`` (imported lazily)."""
    btype = config.backend.type
    if btype == "udp":
        from .udp import UdpBackend
        return UdpBackend
    if btype == "vxlan":
        if options.vxlan_impl == "kernel":
            from .vxlan import KernelVxlanBackend
            return KernelVxlanBackend
        from .vxlan_user import UserVxlanBackend
        return UserVxlanBackend
    if btype == "host-gw":
        from .hostgw import HostGwBackend
        return HostGwBackend
    raise ConfigError(f"Backend.Type: no backend named {btype!r}")


def create_backend(config: NetworkConfig, underlay: Underlay, options: NodeOptions) -> Backend:
    """Instantiate the configured backend."""
    return backend_class(config, options)(config, underlay, options)
