"""Small helpers shared by the JSON API views: auth, body parsing, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

MAX_JSON_BODY_BYTES = 16 * 1024


class ApiError(Exception):
    """An error to answer as ``{"error": message}`` with HTTP ``status`` (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def json_error(message: str, status: int = 400) -> JsonResponse:
    """A JSON error response ``{"error": message}``."""
    return JsonResponse({"error": message}, status=status)


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
