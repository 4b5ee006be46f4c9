"""Modbus meters: register maps as data, the meter-side RTU/TCP codec used by firmware_sim,
and the master's RTU reply framing (``rtu.ReplyFramer``: which bytes answer, how many more).

The gateway builds and decodes PDUs through pymodbus (gateway.drivers.modbus); keeping an
independent codec here lets the two implementations check each other.
"""

from meterhub.protocols.modbus.registermap import (
    RegisterMap,
    RegisterMapError,
    load_map,
    load_maps,
    plan_reads,
)

__all__ = ["RegisterMap", "RegisterMapError", "load_map", "load_maps", "plan_reads"]
