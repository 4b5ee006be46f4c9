"""The web part: a versioned JSON API (``/api/v1``, OpenAPI at ``/api/v1/openapi.json``),
live telemetry over Server-Sent Events, and the page engineers and operators use.

Public face: :func:`create_app`, :func:`start_server` (serve inside a running event loop, as
the demo does), :func:`ensure_demo_user`; the CLI is in ``web.cli``. Everything else is
machinery.
"""

from web._http import DoorSettings, WebSettings
from web.app import create_app
from web.server import WebServer, start_server
from web.users import ensure_demo_user

__all__ = ["DoorSettings", "WebServer", "WebSettings", "create_app", "ensure_demo_user",
           "start_server"]
