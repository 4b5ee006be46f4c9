"""Protocol drivers: each joins a codec (meterhub.protocols) to a transport."""
