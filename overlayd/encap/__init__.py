"""Pure packet code: framing, peer lookup and drop verdicts. No sockets, no clocks.

Every function here takes bytes and returns bytes (or a :class:`~.drops.Drop`
saying why not), so the data plane loop, the C fast path's parity tests and
the unit vectors all exercise exactly the same decisions.
"""
