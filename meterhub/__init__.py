"""meterhub: the shared kernel (wire contract, quantities, protocol codecs, settings, logs,
migration runner).

The parts live beside this package: ``gateway``, ``collector``, ``billing``, ``firmware_sim``,
``web``; the ``launcher`` package owns the ``meterhub`` command. Parts share code only through
here, and this package imports none of them, so data flows one way and no part reaches into
another.
"""

__version__ = "0.1.0"
