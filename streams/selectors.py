"""Read-only queries about live sessions and recordings (HackSoftware style)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from streams.models import LiveSession, MediaWorker, Recording, UploadJob
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


def live_session_own_get(*, user: User, session_id: int) -> LiveSession | None:
    """``user``'s own session ``session_id`` (live or ended), else None."""
    return LiveSession.objects.filter(id=session_id, broadcaster=user).first()


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RecordingCursorError(ValueError):
    """A ``before`` cursor that does not parse (str() is user-facing)."""


def recording_cursor(recording: Recording) -> str:
    """The opaque cursor of ``recording`` in the newest-first list:
    ``"<started_at in µs since the epoch>.<id>"``."""
    micros = (recording.started_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{recording.id}"


def _cursor_parse(cursor: str) -> tuple[datetime, int]:
    micros, dot, rec_id = cursor.partition(".")
    if not dot or not micros.isdigit() or not rec_id.isdigit() or len(cursor) > 40:
        raise RecordingCursorError("Bad page cursor.")
    try:
        return _EPOCH + timedelta(microseconds=int(micros)), int(rec_id)
    except OverflowError as exc:
        raise RecordingCursorError("Bad page cursor.") from exc


def recording_page(
    *, user: User, owner_id: int | None = None, before: str | None = None, limit: int = 20
) -> tuple[list[Recording], str | None]:
    """One page of the recordings ``user`` may see, newest first.

    Args:
        owner_id: Only this user's recordings (``user`` or one of their friends;
            anyone else's gives an empty page).
        before: A cursor from :func:`recording_cursor` (the last item of the previous
            page): only recordings after it in the list.
        limit: At most this many (1 or more).

    Returns:
        The recordings (without their ``peaks``) and the cursor of the next page, or
        None when this is the last.

    Raises:
        RecordingCursorError: ``before`` does not parse.
    """
    recordings = recording_list_visible(user=user).defer("peaks")
    if owner_id is not None:
        recordings = recordings.filter(owner_id=owner_id)
    if before:
        started_at, rec_id = _cursor_parse(before)
        recordings = recordings.filter(
            Q(started_at__lt=started_at) | Q(started_at=started_at, id__lt=rec_id)
        )
    page = list(recordings[: max(1, limit) + 1])
    more = len(page) > limit
    page = page[:limit]
    return page, (recording_cursor(page[-1]) if more and page else None)


def live_session_ended_visible_get(*, user: User, session_id: int) -> LiveSession | None:
    """Ended session ``session_id`` if ``user`` is its broadcaster or their friend, else None."""
    session = (
        LiveSession.objects.select_related("broadcaster")
        .filter(id=session_id, ended_at__isnull=False)
        .first()
    )
    if session is None:
        return None
    if session.broadcaster_id != user.id and not friendship_exists(
        user_a=user, user_b=session.broadcaster_id
    ):
        return None
    return session


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


def media_worker_stale_cutoff() -> datetime:
    """Worker stamps older than this (now − ``HEARTH["WORKER_STALE_S"]``) mean a dead worker."""
    return timezone.now() - timedelta(seconds=settings.HEARTH["WORKER_STALE_S"])


def media_worker_candidates(*, exclude: list[str] | None = None) -> list[MediaWorker]:
    """Live media workers with room for a broadcast, least loaded first.

    Load is ``sessions / capacity``; ties go to the emptier worker, then the one
    stamped last. Workers whose channel is in ``exclude`` (already tried) are left out.
    """
    workers = MediaWorker.objects.filter(heartbeat_at__gte=media_worker_stale_cutoff())
    if exclude:
        workers = workers.exclude(channel_name__in=exclude)
    room = [w for w in workers if w.sessions < w.capacity]
    # Ties go to the freshest stamp: after a crash and a quick restart, the dead
    # worker's row (still within WORKER_STALE_S) loses to its successor's.
    return sorted(
        room, key=lambda w: (w.sessions / w.capacity, w.sessions, -w.heartbeat_at.timestamp())
    )


def media_workers_alive() -> int:
    """How many media workers stamped themselves within ``WORKER_STALE_S``."""
    return MediaWorker.objects.filter(heartbeat_at__gte=media_worker_stale_cutoff()).count()


def listeners_allowed(*, broadcaster_id: int, listeners: dict[str, int]) -> set[str]:
    """Which of a broadcast's listeners may still receive it.

    ``listeners`` maps each listener's key (its page's channel name) to its user id.
    A listener stays allowed while its user is an active friend of the broadcaster
    and its page is still connected (its presence row exists: a page that logged
    out or closed removed it). Returns the allowed keys.
    """
    from users.models import PresenceConnection

    if not listeners:
        return set()
    friends = friend_ids(user=broadcaster_id)
    active = set(User.objects.filter(id__in=friends, is_active=True).values_list("id", flat=True))
    connected = set(
        PresenceConnection.objects.filter(channel_name__in=list(listeners)).values_list(
            "channel_name", flat=True
        )
    )
    return {key for key, uid in listeners.items() if uid in active and key in connected}


def pages_gone(*, channel_names: list[str]) -> set[str]:
    """Which of these page channels have no presence row (the page closed or logged out)."""
    from users.models import PresenceConnection

    present = set(
        PresenceConnection.objects.filter(channel_name__in=channel_names).values_list(
            "channel_name", flat=True
        )
    )
    return set(channel_names) - present


def live_session_is_live(*, session_id: int) -> bool:
    """Whether session ``session_id`` exists and has not ended."""
    return LiveSession.objects.filter(id=session_id, ended_at__isnull=True).exists()


def recording_id_of_session(*, session_id: int) -> int | None:
    """The id of session ``session_id``'s recording, if it has one."""
    return Recording.objects.filter(session_id=session_id).values_list("id", flat=True).first()


def recording_of_session(*, session_id: int) -> Recording | None:
    """The recording a session left, if it was kept (None: too short, empty, deleted)."""
    return Recording.objects.filter(session_id=session_id).first()


def upload_own_get(*, user: User, job_id: int) -> UploadJob | None:
    """Upload job ``job_id`` if ``user`` made it (anyone else: None)."""
    return UploadJob.objects.filter(id=job_id, owner=user).first()


def upload_list_changed(*, since: datetime) -> list[UploadJob]:
    """Upload jobs changed after ``since`` (their ``updated_at``), oldest change first."""
    return list(UploadJob.objects.filter(updated_at__gt=since).order_by("updated_at", "id"))


def upload_latest_unfinished(*, user: User) -> UploadJob | None:
    """``user``'s newest upload job still queued or running, if any (the upload page
    follows it again after the user came back)."""
    return (
        UploadJob.objects.filter(owner=user, status__in=[UploadJob.QUEUED, UploadJob.RUNNING])
        .order_by("-created_at", "-id")
        .first()
    )
