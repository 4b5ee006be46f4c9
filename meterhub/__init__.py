"""meterhub: the shared kernel (wire contract, quantities, protocol codecs, settings) and CLI.

The parts live beside this package: ``gateway``, ``collector``, ``billing``, ``firmware_sim``.
They share code only through here, so data flows one way and no part reaches into another.
"""

__version__ = "0.1.0"
