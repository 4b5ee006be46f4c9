"""Fixtures of the gateway tests (helpers live in gwhelp.py)."""

from gwhelp import sim_bus

__all__ = ["sim_bus"]
