"""Read-only queries about live sessions and recordings (HackSoftware style)."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from streams.models import LiveSession, Recording
from users.models import User
from users.selectors import friend_ids, friendship_exists


def live_session_stale_cutoff() -> datetime:
    """Heartbeats older than this (now − ``HEARTH["SESSION_STALE_S"]``) mean a dead owner."""
    return timezone.now() - timedelta(seconds=settings.HEARTH["SESSION_STALE_S"])


def _fresh_live() -> QuerySet[LiveSession]:
    """Live sessions whose owner process stamped them recently."""
    return LiveSession.objects.filter(
        ended_at__isnull=True, heartbeat_at__gte=live_session_stale_cutoff()
    )


def live_session_active_for(*, user: User) -> LiveSession | None:
    """``user``'s own live session, if one is live and its process is alive."""
    return _fresh_live().filter(broadcaster=user).first()


def live_session_visible_get(*, user: User, session_id: int) -> LiveSession | None:
    """The live session ``session_id`` if ``user`` may listen to it, else None.

    Only accepted friends of the broadcaster may listen; a broadcaster may not
    listen to their own session (they hear themselves locally).
    """
    session = _fresh_live().select_related("broadcaster").filter(id=session_id).first()
    if session is None or not friendship_exists(user_a=user, user_b=session.broadcaster_id):
        return None
    return session


def live_session_list_for_friends(*, user: User) -> list[LiveSession]:
    """Live sessions of ``user``'s friends, newest first."""
    return list(
        _fresh_live()
        .filter(broadcaster_id__in=friend_ids(user=user))
        .select_related("broadcaster")
        .order_by("-started_at")
    )


def live_session_by_broadcaster(*, user_ids: set[int]) -> dict[int, LiveSession]:
    """Map broadcaster id → their live session, for the ids in ``user_ids`` that are live."""
    return {s.broadcaster_id: s for s in _fresh_live().filter(broadcaster_id__in=user_ids)}


def live_session_stale_list(*, broadcaster_id: int | None = None) -> list[LiveSession]:
    """Sessions still marked live whose owner process stopped stamping them.

    Only ``broadcaster_id``'s when given.
    """
    stale = LiveSession.objects.filter(
        ended_at__isnull=True, heartbeat_at__lt=live_session_stale_cutoff()
    )
    if broadcaster_id is not None:
        stale = stale.filter(broadcaster_id=broadcaster_id)
    return list(stale)


def recording_list_visible(*, user: User) -> QuerySet[Recording]:
    """Recordings ``user`` may list and play: their own and their friends', newest first."""
    return (
        Recording.objects.filter(Q(owner=user) | Q(owner_id__in=friend_ids(user=user)))
        .select_related("owner")
        .order_by("-started_at", "-id")
    )


def recording_visible_get(*, user: User, recording_id: int) -> Recording | None:
    """Recording ``recording_id`` if ``user`` owns it or is the owner's friend, else None."""
    return recording_list_visible(user=user).filter(id=recording_id).first()


def recording_bytes_used(*, user_id: int) -> int:
    """Bytes of ``user_id``'s recordings (their stored ``size_bytes``; 0 while live)."""
    total = Recording.objects.filter(owner_id=user_id).aggregate(total=Sum("size_bytes"))["total"]
    return int(total or 0)


def media_free_bytes() -> int:
    """Free bytes on the filesystem of ``MEDIA_ROOT`` (or its nearest existing parent)."""
    path = Path(settings.MEDIA_ROOT).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def live_session_limit_exceeded(*, broadcaster_id: int, live_bytes: int) -> str | None:
    """Which recording limit a live broadcast has reached, or None.

    ``live_bytes`` is the size of the live recording's file so far. Returns
    ``"limit_quota"`` when it and the user's other recordings reach
    ``HEARTH["RECORDING_QUOTA_BYTES"]``, ``"limit_disk"`` when ``MEDIA_ROOT``'s free
    space is below ``HEARTH["MIN_FREE_DISK_BYTES"]``.
    """
    limits = settings.HEARTH
    if recording_bytes_used(user_id=broadcaster_id) + live_bytes >= limits["RECORDING_QUOTA_BYTES"]:
        return "limit_quota"
    if media_free_bytes() < limits["MIN_FREE_DISK_BYTES"]:
        return "limit_disk"
    return None
