"""The registry of backends: ``Backend.Type`` -> the module that implements it (issue 18 §2).

A backend is one module that declares a :class:`BackendSpec` as ``SPEC``: its type name,
its settings and their validation, its encapsulation overhead and the class to create.
:data:`MODULES` lists those modules, and it is the only place a backend is named: the
network config (:mod:`overlayd.netconf`) asks :func:`spec` which settings a type takes and
how to validate them, and :func:`overlayd.backend.create_backend` asks it what to create.

The modules are imported on first use, not with this one: they import :mod:`overlayd.netconf`
(and the plumbing), which imports this module lazily for the same reason.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..netconf import BackendConfig
    from .base import Backend, NodeOptions

#: the backend modules, in the order messages list their types
MODULES = ("overlayd.backend.udp", "overlayd.backend.vxlan", "overlayd.backend.hostgw",
           "overlayd.backend.wireguard")

#: every backend flannel registers (``pkg/backend/*``) or once registered (the retired cloud ones):
#: those no module here implements are refused by name ("a flannel backend not supported by overlayd")
FLANNEL_BACKENDS = ("udp", "vxlan", "host-gw", "wireguard", "ipip", "ipsec", "alloc", "extension",
                    "tencent-vpc", "ali-vpc", "aws-vpc", "gce")


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """What a backend module declares (its ``SPEC``).

    ``parse(raw, notes)`` validates the ``Backend`` object ``raw`` of a config of this type (its
    field names already spelled as in ``keys``, none outside ``keys``) and returns its
    :class:`~overlayd.netconf.BackendConfig`, raising a one-line ConfigError naming
    ``Backend.<field>``; fields accepted without effect go to ``notes``. It is pure.
    ``implementation(options)`` is the :class:`~overlayd.backend.base.Backend` class for this
    node (vxlan has two, by ``options.vxlan_impl``), created as ``cls(config, underlay, options)``.
    ``devices`` matches (whole) the names of the devices it makes that outlive the daemon, which
    a node whose network switched to another backend removes at start (:func:`leftovers`).
    """

    name: str  # Backend.Type (lowercase) and the leases' BackendType
    keys: frozenset[str]  # the fields its Backend object may have, "Type" included
    overhead: int  # bytes of encapsulation: the overlay MTU is Backend.MTU (else the underlay's) minus this
    parse: Callable[[dict, list[str]], "BackendConfig"]
    implementation: Callable[["NodeOptions"], type["Backend"]]
    devices: str = ""  # a regular expression; "": none outlives the daemon


@functools.cache
def _load(modules: tuple[str, ...]) -> dict[str, BackendSpec]:
    specs: dict[str, BackendSpec] = {}
    for module in modules:
        declared = importlib.import_module(module).SPEC
        if declared.name in specs or declared.name != declared.name.lower() or "Type" not in declared.keys:
            raise RuntimeError(f"{module}: SPEC {declared.name!r} is taken, not lowercase, or lacks 'Type'")
        specs[declared.name] = declared
    return specs


def specs() -> dict[str, BackendSpec]:
    """Type name -> spec, for every module in :data:`MODULES` (imported on the first call)."""
    return _load(MODULES)


def spec(name: str) -> BackendSpec | None:
    """The spec of backend type ``name`` (lowercase), or None when no module implements it."""
    return specs().get(name)


def names() -> tuple[str, ...]:
    """The backend types overlayd implements, in :data:`MODULES` order."""
    return tuple(specs())


def all_keys() -> frozenset[str]:
    """Every field any backend's ``Backend`` object may have (to spell them before the type is known)."""
    return frozenset().union(*(each.keys for each in specs().values()))


def flannel_only() -> tuple[str, ...]:
    """flannel's backends that no module here implements."""
    return tuple(name for name in FLANNEL_BACKENDS if name not in specs())


def leftovers(links: list[str], current: str) -> list[tuple[str, str]]:
    """The links among ``links`` (device names) that another backend than ``current`` makes and
    leaves behind, each with that backend's name: a node that switched backends removes them (a
    kernel VXLAN device held the tunnel's UDP port against the udp backend on the same Port)."""
    patterns = [(name, re.compile(each.devices)) for name, each in specs().items()
                if name != current and each.devices]
    return [(link, owner) for link in links for owner, pattern in patterns if pattern.fullmatch(link)]
