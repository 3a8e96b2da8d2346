"""Rate limits, counted in Django's cache by django-ratelimit.

Each limit's rate (django-ratelimit's ``"count/period"``, e.g. ``"10/m"``) is read
from ``settings.HEARTH`` when it is checked, so a deployment (or a test) can change it.
The cache is ``CACHES["default"]``: Redis when ``REDIS_URL`` is set, so a limit holds
across daphne processes; per process otherwise.

HTTP views use :func:`request_limited` (keyed by the request's IP or user);
the WebSocket consumer, which has no ``HttpRequest``, uses :func:`user_limited`,
which gives django-ratelimit's ``get_usage`` the user's id as the key directly.
Every refusal counts in ``hearth_ratelimit_hits_total`` (by group).
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest
from django_ratelimit.core import get_usage, is_ratelimited

from project.metrics import ratelimit_hit_count

RATE_LIMITED_MESSAGE = "Too many attempts. Wait a little and try again."


def request_limited(request: HttpRequest, *, group: str, key: str, rate_setting: str) -> bool:
    """Count this request against ``group`` and say whether it is over the limit.

    Args:
        request: the HTTP request being served.
        group: the name of the limit (counters are kept per group).
        key: django-ratelimit's key: ``"ip"`` or ``"user"``.
        rate_setting: the ``settings.HEARTH`` entry holding the rate.
    """
    limited = is_ratelimited(
        request,
        group=group,
        key=key,
        rate=settings.HEARTH[rate_setting],
        increment=True,
    )
    if limited:
        ratelimit_hit_count(group)
    return limited


def user_limited(*, user_id: int, group: str, rate_setting: str) -> bool:
    """Count one attempt by user ``user_id`` against ``group``; True when over the limit.

    Synchronous (a cache round trip, Redis when configured): call it from async code
    through ``sync_to_async``. ``get_usage`` needs no request for a callable key and
    any method, so the key is the user's id, shared by all of the user's sockets.
    """
    usage = get_usage(
        None,
        group=group,
        key=lambda _group, _request: f"user:{user_id}",
        rate=settings.HEARTH[rate_setting],
        increment=True,
    )
    limited = bool(usage and usage["should_limit"])
    if limited:
        ratelimit_hit_count(group)
    return limited
