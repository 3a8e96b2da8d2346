"""Small helpers shared by the JSON API views: auth, body parsing, errors."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import register_converter
from django.views.defaults import page_not_found

MAX_JSON_BODY_BYTES = 16 * 1024
MAX_DB_ID = 2**63 - 1  # the largest value of a 64-bit (big)integer primary key

# URLs answered with JSON errors: the API, the recording file endpoints
# (/recordings/<id>/audio, /download and /captions.vtt) and the avatars; the recording
# pages themselves (/recordings/, /recordings/<id>/) get the HTML 404 page.
_JSON_PATHS = re.compile(r"^/api/|^/recordings/[^/]*/(audio|download|captions\.vtt)$|^/avatars/")


class ApiError(Exception):
    """An error to answer as ``{"error": message}`` with HTTP ``status`` (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def json_error(message: str, status: int = 400) -> JsonResponse:
    """A JSON error response ``{"error": message}``."""
    return JsonResponse({"error": message}, status=status)


def text_is_clean(text: str) -> bool:
    """Whether ``text`` is safe to store and show: no control characters, no lone surrogates.

    Control characters (Unicode category Cc: NUL, tab, newline, escape, ...) have no place
    in one-line user text, and PostgreSQL refuses NUL outright; a lone surrogate (Cs,
    e.g. from the JSON escape ``"\\ud800"``) cannot be encoded as UTF-8 at all.
    """
    return not any(unicodedata.category(char) in ("Cc", "Cs") for char in text)


UNCLEAN_TEXT_MESSAGE = "Remove control characters and invalid Unicode characters."


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The request body parsed as a JSON object.

    Raises:
        ApiError: 413 for bodies over 16 KiB, 400 for invalid JSON or a non-object.
    """
    if len(request.body) > MAX_JSON_BODY_BYTES:
        raise ApiError("Request body too large.", status=413)
    try:
        data = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError("Request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ApiError("Request body must be a JSON object.")
    return data


def api_view(
    methods: tuple[str, ...],
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Decorate a JSON API view: 401 JSON when signed out, 405 for other methods,
    and :class:`ApiError` turned into its JSON response. CSRF stays enforced by
    Django's middleware for unsafe methods.
    """

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return json_error("Sign in first.", status=401)
            if request.method not in methods:
                response = json_error(f"Method {request.method} not allowed.", status=405)
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return json_error(str(exc), status=exc.status)

        return wrapper

    return decorator


class DbIdConverter:
    """Path converter ``<id:name>``: a database id, i.e. decimal digits up to 2**63 - 1.

    Django's ``<int:>`` passes any number of digits on, and a 30-digit id then fails
    inside the database driver (SQLite's OverflowError: a 500). Refusing it here makes
    the URL not match, so the client gets a 404.
    """

    regex = "[0-9]+"

    def to_python(self, value: str) -> int:
        """The id as an int; ValueError (no match, 404) past ``MAX_DB_ID``."""
        if len(value.lstrip("0")) > len(str(MAX_DB_ID)) or int(value) > MAX_DB_ID:
            raise ValueError(f"id out of range: {value[:30]}")
        return int(value)

    def to_url(self, value: int) -> str:
        """The id as it appears in a URL."""
        return str(value)


register_converter(DbIdConverter, "id")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """The project's 404 handler: JSON ``{"error"}`` under the JSON URLs, else the page."""
    if _JSON_PATHS.match(request.path):
        return json_error("Not found.", status=404)
    return page_not_found(request, exception)
