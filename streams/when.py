"""The one date-and-time format Hearth shows: ``"Sat 21 Nov, 19:30"``.

Every time on the recordings pages and in default recording titles comes from
:func:`when_label`, in the site's time zone (``settings.TIME_ZONE``); the pages'
scripts show the labels the API sends and never format times themselves, so a
title and the list beside it always agree. Day and month names are English and
fixed here (``strftime``'s ``%a``/``%b`` follow the process locale).
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def when_label(moment: datetime) -> str:
    """``moment`` as ``"Sat 21 Nov, 19:30"`` in the site's time zone.

    Args:
        moment: An aware datetime (a naive one is taken as being in the site's zone).
    """
    if timezone.is_aware(moment):
        moment = timezone.localtime(moment)
    return f"{_DAYS[moment.weekday()]} {moment.day} {_MONTHS[moment.month - 1]}, {moment:%H:%M}"


def default_title(username: str, started_at: datetime) -> str:
    """A recording's title until its owner renames it: ``"alice · Sat 21 Nov, 19:30"``."""
    return f"{username} · {when_label(started_at)}"[:120]
