"""Same-origin check for WebSocket handshakes: scheme, host and port must all match.

Browsers send cookies with a WebSocket handshake from any page, so the ``Origin``
header is what tells the site's own pages from others. Channels'
``AllowedHostsOriginValidator`` compares the host only: a page on another port of
the same host (``http://127.0.0.1:9999``), or served over another scheme, passes.
Here an origin is accepted only if it is the site's own, i.e. the handshake's
``Host`` under the connection's scheme (``ws`` → ``http``, ``wss`` → ``https``, or
``https`` when ``SECURE_PROXY_SSL_HEADER`` says a TLS proxy is in front), or an entry
of ``CSRF_TRUSTED_ORIGINS`` (where ``https://*.example.org`` covers subdomains).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host

from project.metrics import ws_refused_count

logger = logging.getLogger("hearth.ws")

Origin = tuple[str, str, int]
"""(scheme, host, port), lower-case, with the scheme's default port filled in."""

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_parse(value: str, *, strict: bool = True) -> Origin | None:
    """``value`` as an http(s) origin, or ``None`` (``"null"``, other schemes, junk).

    ``strict`` also refuses a path, query, fragment or user info, none of which a
    browser's ``Origin`` header carries; settings entries may end in ``/``.
    """
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:  # a port that is not a number or out of range
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in DEFAULT_PORTS or not host:
        return None
    extras = parts.query or parts.fragment or "@" in parts.netloc
    if strict and (extras or parts.path):
        return None
    return scheme, host, DEFAULT_PORTS[scheme] if port is None else port


def _headers(scope: dict[str, Any], name: bytes) -> list[str]:
    return [value.decode("latin1") for key, value in scope.get("headers", []) if key == name]


def _allowed_hosts() -> list[str]:
    if settings.DEBUG and not settings.ALLOWED_HOSTS:  # as Django's HttpRequest.get_host
        return [".localhost", "127.0.0.1", "[::1]"]
    return list(settings.ALLOWED_HOSTS)


def _site_scheme(scope: dict[str, Any]) -> str:
    if scope.get("scheme", "ws") in ("wss", "https"):
        return "https"
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:  # ("HTTP_X_FORWARDED_PROTO", "https"): trusted only when configured
        meta_name, secure_value = proxy
        name = meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1")
        values = _headers(scope, name)
        if values and values[-1].split(",", 1)[0].strip() == secure_value:
            return "https"
    return "http"


def site_origins(scope: dict[str, Any]) -> set[Origin]:
    """The origins of the site this handshake was addressed to (empty: none valid).

    The ``Host`` header must be present once (RFC 6455 §4.1 requires it, and every
    browser sends it) and pass ``ALLOWED_HOSTS``, as for any Django request; a
    handshake without one has no site origin and is refused.
    """
    scheme = _site_scheme(scope)
    hosts = _headers(scope, b"host")
    if len(hosts) != 1:
        return set()
    domain, _ = split_domain_port(hosts[0])
    if not domain or not validate_host(domain, _allowed_hosts()):
        return set()
    origin = origin_parse(f"{scheme}://{hosts[0]}")
    return {origin} if origin is not None else set()


def trusted_origin_match(origin: Origin, entries: Iterable[str]) -> bool:
    """Whether ``origin`` is one of ``CSRF_TRUSTED_ORIGINS``-style ``entries``."""
    scheme, host, port = origin
    for entry in entries:
        trusted = origin_parse(entry, strict=False)
        if trusted is None or trusted[0] != scheme or trusted[2] != port:
            continue
        if trusted[1] == host or (
            trusted[1].startswith("*.") and is_same_domain(host, trusted[1][1:])
        ):
            return True
    return False


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the handshake's single ``Origin`` is the site's own or a trusted one."""
    values = _headers(scope, b"origin")
    origin = origin_parse(values[0]) if len(values) == 1 else None
    if origin is None:
        return False
    return origin in site_origins(scope) or trusted_origin_match(
        origin, settings.CSRF_TRUSTED_ORIGINS
    )


class SiteOriginValidator:
    """ASGI middleware: refuse WebSocket handshakes whose Origin is not the site's."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """Pass an allowed handshake on; close any other before it is accepted."""
        if scope["type"] != "websocket":
            raise ValueError("SiteOriginValidator serves WebSocket connections only.")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        ws_refused_count("origin")
        logger.info(
            "WebSocket Origin %r refused for Host %r",
            _headers(scope, b"origin"),
            _headers(scope, b"host"),
        )
        await websocket_refuse(receive, send)
        return None


async def websocket_refuse(receive: Any, send: Any) -> None:
    """Reject a WebSocket handshake at the ASGI level and return at once.

    Sending ``websocket.close`` in answer to ``websocket.connect`` rejects the
    handshake (ASGI spec, WebSocket "Close - send"; daphne answers HTTP 403). Unlike
    channels' ``WebsocketDenier``, no consumer runs and no channel-layer channel is
    made: a refused socket holds no receive on Redis, however many a client opens.
    """
    message = await receive()
    if message.get("type") == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})  # policy violation
