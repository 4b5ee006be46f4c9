"""Fixtures of the gateway tests (helpers live in gateway_helpers.py)."""

from gateway_helpers import sim_bus

__all__ = ["sim_bus"]
