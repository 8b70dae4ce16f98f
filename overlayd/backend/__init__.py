"""Backends by name: ``Backend.Type`` in the network config selects one, through the
registry (:mod:`overlayd.backend.registry`); nothing here names a backend."""

from __future__ import annotations

from ..errors import ConfigError
from ..netconf import NetworkConfig
from . import registry
from .base import Backend, NodeOptions, Underlay


def backend_class(config: NetworkConfig, options: NodeOptions) -> type[Backend]:
    """The class implementing ``config.backend.type`` on this node (its module imported lazily)."""
    spec = registry.spec(config.backend.type)
    if spec is None:
        raise ConfigError(f"Backend.Type: no backend named {config.backend.type!r}")
    return spec.implementation(options)


def create_backend(config: NetworkConfig, underlay: Underlay, options: NodeOptions) -> Backend:
    """Instantiate the configured backend."""
    return backend_class(config, options)(config, underlay, options)
