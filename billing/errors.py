"""The root of billing's own errors, so callers (CLI, web API) can tell a refused request
from a bug."""


class BillingError(ValueError):
    """A billing request that cannot be done as asked; the message says why."""
