"""A backend module for tests/unit/test_backend_registry.py: declared here, registered by adding
this module to :data:`overlayd.backend.registry.MODULES`, and nowhere else."""

from __future__ import annotations

from overlayd.backend.base import Backend
from overlayd.backend.registry import BackendSpec
from overlayd.netconf import BackendConfig, _int_field, _mtu_field

TYPE = "toy"
OVERHEAD = 12


class ToySettings(dict):
    """The toy's own settings, given back as its Backend fields."""

    def to_json(self) -> dict:
        return dict(self)


class ToyBackend(Backend):
    """Does nothing, but is a Backend."""

    type_name = TYPE

    async def setup(self, lease):
        self.lease = lease

    async def apply(self, batch):
        pass

    def peer_subnets(self):
        return []


def parse(raw: dict, notes: list[str]) -> BackendConfig:
    depth = _int_field(raw, "Depth", "Backend.", 1, 9, 3)
    if "Depth" in raw:
        notes.append("Backend.Depth: toys have no depth")
    return BackendConfig(type=TYPE, mtu=_mtu_field(raw, OVERHEAD), settings=ToySettings(Depth=depth))


SPEC = BackendSpec(TYPE, frozenset({"Type", "Depth", "MTU"}), OVERHEAD, parse, lambda options: ToyBackend)
