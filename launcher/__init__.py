"""launcher: the ``meterhub`` command, the demo and the embedded services.

It sits above every part so the kernel (``meterhub/``) need not: it wires the parts' command
lines together, starts an embedded broker or PostgreSQL when no URL is given, and runs the
whole system in one process for the demo. Nothing imports it but tests and benches.
"""
