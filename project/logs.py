"""Logging: one-line JSON records (``LOG_FORMAT=json``) carrying session and user ids,
and filters that keep SDP, IP addresses and login names out of every record.

``settings.LOGGING`` is :func:`logging_config`. Every record that reaches the console
handler passes two filters:

* :class:`LogContextFilter` adds ``session_id`` and ``user_id`` (``None`` when not
  known) from context variables. The WebSocket consumer sets them for the duration of
  each message it handles (``project.metrics.ConsumerMetricsMixin``), the media server
  for a room's work (:func:`log_context_set`), and :class:`LogContextMiddleware` the
  user for an HTTP request; asyncio tasks started meanwhile inherit them, so a room's
  background tasks log with its ids.
* :class:`LogRedactFilter` replaces SDP text and IP addresses in the message and the
  traceback: a second line of defence behind code that never logs them.

Ids are the only identifiers logged: no usernames, e-mail addresses, titles, SDP or
client addresses. django-axes' own log lines name the username and address of a failed
login; ``AXES_CLIENT_STR_CALLABLE`` is :func:`axes_client_str`, which logs a keyed
pseudonym instead.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS = ("text", "json")
"""Values of the ``LOG_FORMAT`` environment variable."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = ("levelname", "name", "message", "session_id", "user_id")
"""Fields of every JSON record, besides ``timestamp`` (ISO 8601, UTC) and, for a
record with an exception, ``exc_info``; extra fields a library passes are kept."""

_session_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "hearth_log_session_id", default=None
)
_user_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "hearth_log_user_id", default=None
)

_UNSET: Any = object()
SESSION_KEY = "_auth_user_id"  # django.contrib.auth.SESSION_KEY (not imported: settings use this)


@dataclass(frozen=True)
class LogContextTokens:
    """What :func:`log_context_set` changed, for :func:`log_context_reset`."""

    tokens: tuple[contextvars.Token[int | None], ...]


def _as_id(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def log_context_set(*, session_id: object = _UNSET, user_id: object = _UNSET) -> LogContextTokens:
    """Log later records of this context (and of tasks it starts) with these ids.

    Only the ids given change; anything but a positive int is stored as ``None``
    (unknown). Lasts until :func:`log_context_reset` with the returned tokens, or the
    end of the current asyncio task (a task runs in a copy of its creator's context).
    """
    tokens = []
    if session_id is not _UNSET:
        tokens.append(_session_id.set(_as_id(session_id)))
    if user_id is not _UNSET:
        tokens.append(_user_id.set(_as_id(user_id)))
    return LogContextTokens(tuple(tokens))


def log_context_reset(tokens: LogContextTokens) -> None:
    """Undo the :func:`log_context_set` call that returned ``tokens`` (same context)."""
    for token in reversed(tokens.tokens):
        token.var.reset(token)


def log_context() -> dict[str, int | None]:
    """The ids records of this context are logged with: ``{"session_id", "user_id"}``."""
    return {"session_id": _session_id.get(), "user_id": _user_id.get()}


def _session_user_id(value: object) -> int | None:
    try:
        return _as_id(int(str(value)))
    except ValueError:
        return None


class LogContextMiddleware:
    """Logs each HTTP request's records with the signed-in ``user_id`` (after
    ``SessionMiddleware``). The id is the session's own (``_auth_user_id``), read without
    loading the user; a request without a session cookie costs nothing. Records Django
    writes after the middleware stack returned (``django.request``) carry no id."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        """Handle the request within its log context."""
        if self._is_async:
            return self._acall(request)
        session = getattr(request, "session", None)
        user_id = session.get(SESSION_KEY) if session is not None else None
        tokens = log_context_set(user_id=_session_user_id(user_id))
        try:
            return self.get_response(request)
        finally:
            log_context_reset(tokens)

    async def _acall(self, request: Any) -> Any:
        session = getattr(request, "session", None)
        user_id = await session.aget(SESSION_KEY) if session is not None else None
        tokens = log_context_set(user_id=_session_user_id(user_id))
        try:
            return await self.get_response(request)
        finally:
            log_context_reset(tokens)


class LogContextFilter(logging.Filter):
    """Adds ``session_id`` and ``user_id`` from the log context to every record
    (ids a caller passed in ``extra=`` win). Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Set the record's ids; True."""
        for key, value in log_context().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


_SDP_BLOB = re.compile(r"v=0(?:\\r|\\n|\r|\n).*", re.DOTALL)
_SDP_LINE = re.compile(
    r"a=(?:candidate|ice-ufrag|ice-pwd|fingerprint|ssrc|msid|setup|mid)[^\r\n'\"]*"
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
SDP_WITHHELD = "<SDP withheld>"
IP_WITHHELD = "<ip>"


def _ip_replace(match: re.Match[str]) -> str:
    text = match.group()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return text  # "12:30:45", "1.2.3.4.5": not an address
    return IP_WITHHELD


def redact(text: str) -> str:
    """``text`` with SDP (from a ``v=0`` line on, and ICE/DTLS attribute lines) and IPv4
    and IPv6 addresses replaced by placeholders."""
    if "v=0" in text:
        text = _SDP_BLOB.sub(SDP_WITHHELD, text)
    if "a=" in text:
        text = _SDP_LINE.sub(SDP_WITHHELD, text)
    if "." in text:
        text = _IPV4.sub(_ip_replace, text)
    if ":" in text:
        text = _IPV6.sub(_ip_replace, text)
    return text


class LogRedactFilter(logging.Filter):
    """Replaces SDP text and IP addresses in a record's message (see :func:`redact`): the
    message is formatted here (``msg % args``) and stored back. Tracebacks are redacted
    by the formatters (:class:`RedactingFormatter`, :func:`json_formatter`), leaving
    the record's ``exc_info`` to other handlers. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record's message in place; True."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class RedactingFormatter(logging.Formatter):
    """The text formatter: a traceback or stack in a record is :func:`redact`-ed."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as text; a traceback another handler cached is formatted afresh."""
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatException(self, ei: Any) -> str:
        """The traceback, redacted."""
        return redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        """The stack, redacted."""
        return redact(super().formatStack(stack_info))


class RedactingJsonFormatter(JsonFormatter):
    """The JSON formatter: a traceback or stack in a record is :func:`redact`-ed."""

    def formatException(self, ei: Any) -> Any:
        """The traceback (a string, or lines with ``exc_info_as_array``), redacted."""
        formatted = super().formatException(ei)
        if isinstance(formatted, list):
            return [redact(line) for line in formatted]
        return redact(formatted)

    def formatStack(self, stack_info: str) -> Any:
        """The stack, redacted."""
        formatted = super().formatStack(stack_info)
        if isinstance(formatted, list):
            return [redact(line) for line in formatted]
        return redact(formatted)


def json_formatter() -> logging.Formatter:
    """The JSON formatter of ``LOG_FORMAT=json``: one object per line with ``timestamp``,
    ``level``, ``logger``, ``message``, ``session_id``, ``user_id`` (and ``exc_info``).

    The ``request`` object Django's request loggers attach is left out (its other
    extra fields, e.g. ``status_code``, are kept).
    """
    return RedactingJsonFormatter(
        list(JSON_FIELDS),
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
        reserved_attrs=[*RESERVED_ATTRS, "request"],
    )


def logging_config(log_format: str, *, hearth_level: str = "INFO") -> dict[str, Any]:
    """``settings.LOGGING`` for ``LOG_FORMAT`` ``"text"`` (one human-readable line per
    record) or ``"json"``: console output, Hearth's loggers (``hearth.*``) at
    ``hearth_level``, everything else at WARNING.

    Raises:
        ValueError: ``log_format`` is neither ``"text"`` nor ``"json"``.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be 'text' or 'json', not {log_format!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "project.logs.LogContextFilter"},
            "redact": {"()": "project.logs.LogRedactFilter"},
        },
        "formatters": {
            "text": {"()": "project.logs.RedactingFormatter", "format": TEXT_FORMAT},
            "json": {"()": "project.logs.json_formatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["context", "redact"],
            }
        },
        "root": {"handlers": ["console"], "level": "WARNING"},
        "loggers": {
            "hearth": {"level": hearth_level},
            "aioice": {"level": "WARNING"},
            "aiortc": {"level": "WARNING"},
        },
    }


def axes_client_str(
    username: str | None,
    ip_address: str | None,
    user_agent: str | None,
    path_info: str | tuple[str, ...] | list[str] | None,
    request: Any,
) -> str:
    """django-axes' ``AXES_CLIENT_STR_CALLABLE``: how its log lines name a client.

    Axes' default names the username and IP address of every failed login. This gives
    ``client=<12 hex digits> path=<path>``: an HMAC (keyed with ``SECRET_KEY``) of the
    username and address, so an operator can tell repeated attempts of one client
    apart from many clients' without the logs holding either.
    """
    from django.conf import settings

    key = hashlib.sha256(b"hearth-axes-log:" + settings.SECRET_KEY.encode()).digest()
    subject = f"{username or ''}\x00{ip_address or ''}".encode("utf-8", "replace")
    pseudonym = hmac.new(key, subject, hashlib.sha256).hexdigest()[:12]
    if isinstance(path_info, (tuple, list)):
        path_info = path_info[0] if path_info else ""
    return f"client={pseudonym} path={path_info or ''}"
