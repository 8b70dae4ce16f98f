"""The network-namespace lab: an isolated multi-node overlay on one machine.

Used by ``scripts/lab`` and by the end-to-end tests (one implementation).
"""
