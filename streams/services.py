"""Writes for live sessions and recordings (HackSoftware style).

Real-time events go out after the commit: friends get ``live`` and
``recordings.changed`` through their user groups, listeners of a session get
``session.ended`` through ``session_group(session_id)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from streams.models import LiveSession, Recording
from streams.processors.factory import audio_chain_settings
from streams.recording import RecordingInfo, WavFileError, wav_repair
from streams.selectors import live_session_stale_cutoff, live_session_stale_list
from users.events import users_notify
from users.models import User
from users.selectors import friend_ids

logger = logging.getLogger("hearth.streams")


class LiveSessionError(Exception):
    """A go-live or stop that breaks a rule; ``code`` is machine-readable, str() user-facing."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class RecordingError(Exception):
    """A recording action that cannot be done; str() is user-facing.

    ``status`` is the HTTP status the API answers with: 404 (no such recording of
    yours), 400 (bad input) or 409 (not possible in the recording's state).
    """

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def session_group(session_id: int) -> str:
    """Channel-layer group of the broadcaster's and listeners' pages of a session."""
    return f"session.{session_id}"


def _session_event(session_id: int, event: str, data: dict[str, object]) -> None:
    layer = get_channel_layer()
    message = {"type": "hearth.event", "event": event, "data": data}

    def send() -> None:
        try:
            async_to_sync(layer.group_send)(session_group(session_id), message)
        except Exception:
            logger.exception("could not send %s to session %s", event, session_id)

    transaction.on_commit(send)


def _owner_and_friends(user: User | int) -> set[int]:
    user_id = user if isinstance(user, int) else user.id
    return friend_ids(user=user_id) | {user_id}


def _notify_recordings_changed(owner: User | int) -> None:
    users_notify(user_ids=_owner_and_friends(owner), event="recordings.changed", data={})


def _notify_live(session: LiveSession, *, live: bool) -> None:
    users_notify(
        user_ids=_owner_and_friends(session.broadcaster_id),
        event="live",
        data={
            "user_id": session.broadcaster_id,
            "username": session.broadcaster.username,
            "live": live,
            "session_id": session.id,
            "started_at": session.started_at.isoformat(),
        },
    )


def recording_path(recording: Recording) -> Path:
    """Absolute path of ``recording``'s WAV file under ``MEDIA_ROOT``."""
    return Path(settings.MEDIA_ROOT) / recording.file.name


@transaction.atomic
def live_session_start(
    *, broadcaster: User, denoise: bool, owner_channel: str, title: str = ""
) -> tuple[LiveSession, Recording]:
    """Open a live session for ``broadcaster`` and the recording row it writes to.

    A session of the same user whose process died (stale heartbeat) is ended first.

    Raises:
        LiveSessionError: code ``already_live`` if the user is live elsewhere.
    """
    User.objects.select_for_update().filter(id=broadcaster.id).first()  # serialise go-lives
    cutoff = live_session_stale_cutoff()
    for stale in LiveSession.objects.filter(broadcaster=broadcaster, ended_at__isnull=True):
        if stale.heartbeat_at >= cutoff:
            raise LiveSessionError(
                "You are already live in another tab or device. Stop that broadcast first.",
                code="already_live",
            )
        _session_end(stale, reason="lost", info=None)
    now = timezone.now()
    try:
        with transaction.atomic():
            session = LiveSession.objects.create(
                broadcaster=broadcaster,
                title=title[:120],
                denoise=denoise,
                owner_channel=owner_channel,
                heartbeat_at=now,
            )
    except IntegrityError as exc:  # a concurrent go-live won the race
        raise LiveSessionError(
            "You are already live in another tab or device.", code="already_live"
        ) from exc
    stamp = timezone.localtime(now).strftime("%Y%m%d-%H%M%S")
    recording = Recording.objects.create(
        owner=broadcaster,
        session=session,
        title=(title or f"{broadcaster.username} live, {timezone.localtime(now):%d %b %Y %H:%M}")[
            :120
        ],
        file=f"recordings/{broadcaster.id}/{stamp}-session{session.id}.wav",
        processing=audio_chain_settings(denoise=denoise),
        started_at=now,
    )
    _notify_live(session, live=True)
    return session, recording


def live_session_heartbeat(*, session_ids: list[int]) -> set[int]:
    """Stamp the given sessions as alive now; returns the ids that are still live.

    An id missing from the result was ended elsewhere: its owner should stop it.
    """
    if not session_ids:
        return set()
    live = LiveSession.objects.filter(id__in=session_ids, ended_at__isnull=True)
    live.update(heartbeat_at=timezone.now())
    return set(live.values_list("id", flat=True))


def _session_end(
    session: LiveSession, *, reason: str, info: RecordingInfo | None
) -> Recording | None:
    now = timezone.now()
    session.ended_at = now
    session.end_reason = reason[:40]
    session.save(update_fields=["ended_at", "end_reason"])
    recording = Recording.objects.filter(session=session).first()
    if recording is not None:
        if info is None:
            path = recording_path(recording)
            try:
                info = wav_repair(path) if path.exists() else None
            except (WavFileError, OSError):
                # Died before the header was written: nothing playable to keep.
                logger.warning("recording %s is unreadable; dropping it", path)
                info = None
        if info is None or info.frames == 0:
            # Nothing was ever recorded (the peer never connected): keep no empty entry.
            recording_path(recording).unlink(missing_ok=True)
            recording.delete()
            recording = None
        else:
            recording.ended_at = now
            recording.duration_s = info.duration_s
            recording.size_bytes = info.size_bytes
            recording.save(update_fields=["ended_at", "duration_s", "size_bytes"])
    _notify_live(session, live=False)
    _session_event(
        session.id,
        "session.ended",
        {
            "session_id": session.id,
            "reason": session.end_reason,
            "recording_id": recording.id if recording else None,
        },
    )
    _notify_recordings_changed(session.broadcaster_id)
    return recording


@transaction.atomic
def live_session_end(
    *, session_id: int, reason: str, info: RecordingInfo | None = None
) -> Recording | None:
    """End live session ``session_id`` and finalise its recording row.

    ``info`` is the finalised WAV's figures from the recorder; when None the file is
    repaired and measured from disk. A recording with no audio is deleted.
    Ending an already ended session is a no-op returning its recording.
    """
    session = (
        LiveSession.objects.select_for_update().select_related("broadcaster").get(id=session_id)
    )
    if session.ended_at is not None:
        return Recording.objects.filter(session=session).first()
    return _session_end(session, reason=reason, info=info)


@transaction.atomic
def live_session_end_stale() -> int:
    """End sessions whose owner process stopped stamping them (crash); returns count.

    Their WAV files are repaired so they stay playable up to the crash.
    """
    count = 0
    for session in live_session_stale_list():
        live_session_end(session_id=session.id, reason="lost")
        count += 1
    return count


@transaction.atomic
def live_session_end_orphaned() -> int:
    """End every session still marked live; returns count.

    Only for a single-process deployment (in-memory channel layer) at start-up: no
    other process can own a live session then, so any left is from a crash and need
    not wait ``SESSION_STALE_S`` to be cleared.
    """
    ids = list(LiveSession.objects.filter(ended_at__isnull=True).values_list("id", flat=True))
    for session_id in ids:
        live_session_end(session_id=session_id, reason="lost")
    return len(ids)


@transaction.atomic
def recording_rename(*, user: User, recording_id: int, title: str) -> Recording:
    """Give ``user``'s recording a new title (1-120 characters after trimming).

    Raises:
        RecordingError: not the owner, no such recording, or a bad title.
    """
    recording = Recording.objects.select_for_update().filter(id=recording_id, owner=user).first()
    if recording is None:
        raise RecordingError("No such recording of yours.", status=404)
    title = title.strip()
    if not 1 <= len(title) <= 120:
        raise RecordingError("A title needs 1 to 120 characters.", status=400)
    recording.title = title
    recording.save(update_fields=["title"])
    _notify_recordings_changed(user)
    return recording


@transaction.atomic
def recording_delete(*, user: User, recording_id: int) -> None:
    """Delete ``user``'s finished recording and its file.

    Raises:
        RecordingError: not the owner, no such recording, or still being recorded.
    """
    recording = Recording.objects.select_for_update().filter(id=recording_id, owner=user).first()
    if recording is None:
        raise RecordingError("No such recording of yours.", status=404)
    if recording.ended_at is None:
        raise RecordingError(
            "This recording is still in progress; stop the broadcast first.", status=409
        )
    path = recording_path(recording)
    recording.delete()
    transaction.on_commit(lambda: path.unlink(missing_ok=True))
    _notify_recordings_changed(user)
