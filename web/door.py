"""Who is at the door and whether to let a request in: the client's address, whether it came
over HTTPS, and the cross-site checks on requests that change something.

Proxy headers (``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host``) are
believed only when the peer is a proxy declared trusted in the settings; from anyone else they
are whatever a client chose to write.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

from meterhub.i18n import _
from web.errors import ApiError, Forbidden

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SAME_SITE_FETCH = frozenset({"same-origin", "none"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsupportedMediaType(ApiError):
    status = 415


def trusted_networks(proxies: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or networks (``10.0.0.0/8``) of the proxies in front of the web."""
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in proxies if p.strip())


def _trusted(address: str | None, proxies: tuple[Network, ...]) -> bool:
    if not address or not proxies:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(request: web.Request, proxies: tuple[Network, ...]) -> str:
    """The peer address, or, behind trusted proxies, the nearest address in
    ``X-Forwarded-For`` that is not one of them (the ones further left a client can forge)."""
    peer = request.remote or ""
    if not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")]
    for hop in reversed([h for h in hops if h]):
        if not _trusted(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage from the proxy chain: do not let it pick the key
    return peer


def is_https(request: web.Request, proxies: tuple[Network, ...]) -> bool:
    """Served over TLS here, or a trusted proxy says the client used HTTPS."""
    if request.secure:
        return True
    if _trusted(request.remote, proxies):
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return proto == "https"
    return False


def own_origin(request: web.Request, proxies: tuple[Network, ...]) -> str:
    """The origin the page was served from, as a browser writes it in ``Origin``."""
    host = request.host
    if _trusted(request.remote, proxies):
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    scheme = "https" if is_https(request, proxies) else "http"
    return f"{scheme}://{host}".lower()


def check_json_content_type(request: web.Request, with_cookie: bool) -> None:
    """A state-changing request carries JSON: HTML forms (``text/plain``,
    ``application/x-www-form-urlencoded``, ``multipart/form-data``) are refused with 415.
    Browser (cookie) requests need the header even without a body; an API client may send a
    bodyless request (a DELETE) without it."""
    if request.method not in STATE_CHANGING:
        return
    has_body = (bool(request.content_length) or "Content-Type" in request.headers
                or "chunked" in request.headers.get("Transfer-Encoding", "").lower())
    if not (has_body or with_cookie):
        return
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            _("{method} needs 'Content-Type: application/json' (got {got!r})",
              method=request.method, got=request.headers.get("Content-Type", "none")))


def check_same_site(request: web.Request, proxies: tuple[Network, ...]) -> None:
    """A cookie-authenticated state-changing request must come from our own page: a
    matching ``Origin``, or failing that ``Sec-Fetch-Site: same-origin`` (or ``none``: typed
    by the user). Neither header present: refused, since every current browser sends one."""
    if request.method not in STATE_CHANGING:
        return
    origin = request.headers.get("Origin")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if origin is not None:
        want = own_origin(request, proxies)
        if origin.lower().rstrip("/") != want:
            raise Forbidden(_("cross-site request refused: Origin {origin!r} is not {want!r}",
                              origin=origin, want=want))
        return
    if fetch_site is not None:
        if fetch_site.lower() not in SAME_SITE_FETCH:
            raise Forbidden(_("cross-site request refused: Sec-Fetch-Site is {site!r}",
                              site=fetch_site))
        return
    raise Forbidden(_("cross-site request refused: a request made with the session cookie "
                      "needs an Origin or Sec-Fetch-Site header (browsers send them); API "
                      "clients use 'Authorization: Bearer <token>'"))
