"""Wire protocol codecs shared by the gateway (master side) and firmware_sim (meter side)."""
