"""Writes for live sessions and recordings (HackSoftware style).

Real-time events go out after the commit: friends get ``live`` and
``recordings.changed`` through their user groups, listeners of a session get
``session.ended`` through ``session_group(session_id)``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.utils import timezone

from project.api import UNCLEAN_TEXT_MESSAGE, text_is_clean
from streams.media.mp4_live import Mp4FinishError, mp4_duration_s, mp4_fragments_finish
from streams.models import LiveSession, MediaWorker, Recording, RedactionEvent, UploadJob
from streams.processors.factory import audio_chain_settings
from streams.recording import (
    RecordingInfo,
    WavFileError,
    wav_info,
    wav_peaks,
    wav_repair,
    wav_to_opus,
)
from streams.selectors import (
    live_session_stale_cutoff,
    live_session_stale_list,
    media_free_bytes,
    media_worker_stale_cutoff,
    recording_bytes_used,
)
from streams.when import default_title
from users.events import group_send_from_sync, layer_request_from_sync, users_notify
from users.models import User
from users.selectors import friend_ids, user_avatar_url

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
    message = {"type": "hearth.event", "event": event, "data": data}

    def send() -> None:
        try:
            group_send_from_sync(session_group(session_id), message)
        except Exception:
            logger.exception("could not send %s to session %s", event, session_id)

    transaction.on_commit(send)


def _owner_and_friends(user: User | int) -> set[int]:
    user_id = user if isinstance(user, int) else user.id
    return friend_ids(user=user_id) | {user_id}


def _notify_recordings_changed(owner: User | int, *, deleted: list[int] | None = None) -> None:
    """Tell the owner's and friends' pages that the owner's recordings changed; with
    ``deleted``, that these recordings are gone (so a page showing one need not ask)."""
    users_notify(
        user_ids=_owner_and_friends(owner),
        event="recordings.changed",
        data={"deleted": deleted} if deleted else {},
    )


def _notify_live(session: LiveSession, *, live: bool) -> None:
    users_notify(
        user_ids=_owner_and_friends(session.broadcaster_id),
        event="live",
        data={
            "user_id": session.broadcaster_id,
            "username": session.broadcaster.username,
            "display_name": session.broadcaster.display_name,
            "avatar_url": user_avatar_url(user=session.broadcaster),
            "live": live,
            "session_id": session.id,
            "started_at": session.started_at.isoformat(),
            "title": session.title,
        },
    )


def recording_path(recording: Recording) -> Path:
    """Absolute path of ``recording``'s WAV file under ``MEDIA_ROOT``."""
    return Path(settings.MEDIA_ROOT) / recording.file.name


def recording_fragments_path(wav: Path) -> Path:
    """The crash-tolerant fragmented MP4 a camera broadcast writes beside its WAV
    (``…-sessionN.frag.mp4`` for ``…-sessionN.wav``)."""
    return wav.with_suffix(".frag.mp4")


def recording_mp4_path(wav: Path) -> Path:
    """The finished, seekable MP4 of a camera broadcast (``…-sessionN.mp4``)."""
    return wav.with_suffix(".mp4")


@dataclass(frozen=True)
class VideoRecordingInfo:
    """A camera broadcast's finished MP4 and how its video was redacted (counts only,
    never image data).

    Attributes:
        path: The finished MP4 (under ``MEDIA_ROOT``).
        duration_s: Its length, seconds.
        size_bytes: Its size.
        blur_faces: Faces were blurred (None: unknown).
        blur_plates: Licence plates were blurred (None: unknown).
        blur_text: On-screen personal text was blurred (None: unknown).
        frames_processed: Frames that went through the detectors.
        faces_blurred: Face regions blurred, summed over frames.
        plates_blurred: Plate regions blurred, summed over frames.
        text_blurred: On-screen personal-text regions blurred, summed over frames.
        frames_failed_closed: Frames blurred whole (a detector failed or stalled, or
            the server fell behind).
    """

    path: Path
    duration_s: float
    size_bytes: int
    blur_faces: bool | None
    blur_plates: bool | None
    blur_text: bool | None = None
    frames_processed: int = 0
    faces_blurred: int = 0
    plates_blurred: int = 0
    text_blurred: int = 0
    frames_failed_closed: int = 0


def recording_video_expect(
    *, session_id: int, blur_faces: bool, blur_plates: bool, blur_text: bool = False
) -> None:
    """Store on live session ``session_id``'s recording the camera's blur switches,
    once its broadcast turned out to send a camera; the row stays ``kind="audio"``
    (its WAV) until the MP4 is finished. A crash repair reads the switches from here.
    """
    Recording.objects.filter(session_id=session_id, ended_at__isnull=True).update(
        blur_faces=blur_faces, blur_plates=blur_plates, blur_text=blur_text
    )


def recording_video_counts_set(
    *,
    session_id: int,
    frames_processed: int,
    faces_blurred: int,
    plates_blurred: int,
    frames_failed_closed: int,
    text_blurred: int = 0,
) -> None:
    """Store live session ``session_id``'s camera redaction counts so far on its
    recording (every ``VIDEO_COUNTS_S`` while live), so that a crash repair keeps them
    up to then. An ended session's recording is left alone.

    Raises:
        ValueError: a count is negative.
    """
    counts = {
        "frames_processed": frames_processed,
        "faces_blurred": faces_blurred,
        "plates_blurred": plates_blurred,
        "text_blurred": text_blurred,
        "frames_failed_closed": frames_failed_closed,
    }
    if min(counts.values()) < 0:
        raise ValueError(f"Redaction counts cannot be negative ({counts}).")
    Recording.objects.filter(session_id=session_id, ended_at__isnull=True).update(**counts)


def _video_fragments_finish(
    recording: Recording, *, repair_busy: bool
) -> VideoRecordingInfo | None:
    """Finish the fragment file a camera broadcast's crashed (or failed) writer left
    beside ``recording``'s WAV into its seekable MP4; None when there is none, when it
    may still be written (modified within ``SESSION_STALE_S`` and not ``repair_busy``),
    or when nothing in it is usable (then the WAV stays the recording). The counts are
    the last ones the broadcast stored (:func:`recording_video_counts_set`).
    File work: call outside any transaction.
    """
    wav = recording_path(recording)
    fragments = recording_fragments_path(wav)
    if not fragments.exists() or (not repair_busy and _recording_file_busy(fragments)):
        return None
    target = recording_mp4_path(wav)
    try:
        facts = mp4_fragments_finish(fragments, target)
        duration_s = mp4_duration_s(target)
    except Mp4FinishError as exc:
        # Nothing whole in it (or the MP4 cannot be written): the WAV is the recording.
        logger.warning("recording %s: its video cannot be finished (%s)", recording.id, exc)
        fragments.unlink(missing_ok=True)
        return None
    fragments.unlink(missing_ok=True)
    logger.info(
        "recording %s: finished %d video frames a crash left unfinalised",
        recording.id,
        facts.video_frames,
    )
    return VideoRecordingInfo(
        path=target,
        duration_s=duration_s,
        size_bytes=facts.size_bytes,
        blur_faces=recording.blur_faces,
        blur_plates=recording.blur_plates,
        blur_text=recording.blur_text,
        frames_processed=recording.frames_processed,
        faces_blurred=recording.faces_blurred,
        plates_blurred=recording.plates_blurred,
        text_blurred=recording.text_blurred,
        frames_failed_closed=recording.frames_failed_closed,
    )


def _recording_video_set(recording: Recording, video: VideoRecordingInfo) -> None:
    """Point ``recording`` at its finished MP4 (``kind="video"``, redaction settings
    and counts); its WAV goes after the commit. Runs in the caller's transaction."""
    wav = recording_path(recording)
    recording.file.name = str(video.path.relative_to(Path(settings.MEDIA_ROOT)))
    recording.kind = "video"
    recording.duration_s = video.duration_s
    recording.size_bytes = video.size_bytes
    recording.blur_faces = video.blur_faces
    recording.blur_plates = video.blur_plates
    recording.blur_text = video.blur_text
    recording.frames_processed = video.frames_processed
    recording.faces_blurred = video.faces_blurred
    recording.plates_blurred = video.plates_blurred
    recording.text_blurred = video.text_blurred
    recording.frames_failed_closed = video.frames_failed_closed
    recording.save()
    transaction.on_commit(lambda: wav.unlink(missing_ok=True))


def _go_live_limits_check(user_id: int) -> None:
    """Refuse a go-live when the user's quota or the disk's free-space floor is reached."""
    limits = settings.HEARTH
    used, quota = recording_bytes_used(user_id=user_id), limits["RECORDING_QUOTA_BYTES"]
    if used >= quota:
        raise LiveSessionError(
            f"Your recordings use {used / 1024**2:.0f} MiB of your {quota / 1024**2:.0f} MiB "
            "quota. Delete some recordings to go live again.",
            code="quota_exceeded",
        )
    if media_free_bytes() < limits["MIN_FREE_DISK_BYTES"]:
        raise LiveSessionError(
            "The server is running out of disk space for recordings; try again later.",
            code="disk_full",
        )


def live_session_start(
    *,
    broadcaster: User,
    denoise: bool,
    owner_channel: str,
    title: str = "",
    bleep: str = "",
    delay_s: float = 0.0,
) -> tuple[LiveSession, Recording]:
    """Open a live session for ``broadcaster`` and the recording row it writes to.

    A session of the same user whose process died (stale heartbeat, recording not
    written to for ``SESSION_STALE_S``) is ended first, as ``live_session_end_stale``
    would end it.

    Raises:
        LiveSessionError: code ``already_live`` if the user is live elsewhere, which
            includes a session with a stale heartbeat whose recording is still being
            written (its owner is alive, only slow to stamp it); ``quota_exceeded`` if
            the user's recordings fill ``RECORDING_QUOTA_BYTES``; ``disk_full`` if
            ``MEDIA_ROOT``'s filesystem has less than ``MIN_FREE_DISK_BYTES`` free;
            ``account_closed`` if the account is deactivated or being deleted.
    """
    for stale in live_session_stale_list(broadcaster_id=broadcaster.id):
        _session_end_if_lost(stale)
    _go_live_limits_check(broadcaster.id)
    with transaction.atomic():
        # The row lock serialises go-lives, and with the account's deletion, which
        # deactivates the account under the same lock before it ends the broadcasts.
        locked = User.objects.select_for_update().filter(id=broadcaster.id).first()
        if locked is None or not locked.is_active:
            raise LiveSessionError("This account is closed.", code="account_closed")
        if LiveSession.objects.filter(broadcaster=broadcaster, ended_at__isnull=True).exists():
            raise LiveSessionError(
                "You are already live in another tab or device. Stop that broadcast first.",
                code="already_live",
            )
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
            title=(title or default_title(broadcaster.username, now))[:120],
            file=f"recordings/{broadcaster.id}/{stamp}-session{session.id}.wav",
            processing={
                **audio_chain_settings(denoise=denoise),
                **({"bleep_pii": bleep, "delay_s": delay_s} if bleep else {}),
            },
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


def live_session_listeners_set(*, session_id: int, listeners: int) -> None:
    """Store ``listeners`` as the current listener count of live session ``session_id``.

    Called by the media server that owns the session whenever its count changes, so
    that every process can report it (``/api/live``). An ended or unknown session is
    left alone. Sends no events: the owner sends ``session.stats`` itself.

    Raises:
        ValueError: ``listeners`` is negative.
    """
    if listeners < 0:
        raise ValueError(f"A listener count cannot be negative ({listeners}).")
    LiveSession.objects.filter(id=session_id, ended_at__isnull=True).update(listeners=listeners)


# --- Ending sessions ------------------------------------------------------------------
#
# A session is ended in two short transactions with the file work between them: the
# first, holding the session's row lock, decides and stamps the end; then, with no
# transaction open, the WAV is repaired and measured when the recorder did not report
# its figures; the second stores them (or drops an empty recording, whose file is
# deleted only once that commits) and sends the events. A recording file written to
# within ``SESSION_STALE_S`` is never repaired (which truncates) unless the caller is its
# owner: a session whose heartbeat merely looks stale may still be writing it.


@dataclass(frozen=True)
class _FileFigures:
    """What the disk says about a recording: ``info`` None means no readable audio;
    ``disposable`` False means the file must be kept even so (a writer may be at it)."""

    info: RecordingInfo | None
    disposable: bool


def _recording_file_busy(path: Path, *, within_s: float | None = None) -> bool:
    """True if ``path`` was modified within ``within_s`` (default ``SESSION_STALE_S``)
    seconds: its writer may be alive."""
    try:
        modified = path.stat().st_mtime
    except OSError:
        return False
    window = settings.HEARTH["SESSION_STALE_S"] if within_s is None else within_s
    return time.time() - modified < window


def _recording_file_measure(path: Path, *, repair_busy: bool) -> _FileFigures:
    """Measure a recording's WAV on disk, repairing its header where that is safe.

    A file modified within ``SESSION_STALE_S`` is only read, never repaired, unless
    ``repair_busy`` (the caller owns the writer, which is closed or dead).
    """
    if not path.exists():
        return _FileFigures(info=None, disposable=True)
    if not repair_busy and _recording_file_busy(path):
        try:
            return _FileFigures(info=wav_info(path), disposable=False)
        except (WavFileError, OSError):
            return _FileFigures(info=None, disposable=False)
    try:
        return _FileFigures(info=wav_repair(path), disposable=True)
    except (WavFileError, OSError):
        # Died before the header was written: nothing playable to keep.
        logger.warning("recording %s is unreadable; dropping it", path)
        return _FileFigures(info=None, disposable=True)


def _session_mark_ended(session: LiveSession, *, reason: str) -> Recording | None:
    """Stamp ``session`` and its recording as ended now (the caller holds the row lock)."""
    now = timezone.now()
    session.ended_at = now
    session.end_reason = reason[:40]
    session.listeners = 0
    session.save(update_fields=["ended_at", "end_reason", "listeners"])
    recording = Recording.objects.select_for_update().filter(session=session).first()
    if recording is not None:
        recording.ended_at = now
        recording.save(update_fields=["ended_at"])
    return recording


def _recording_figures_store(recording: Recording, info: RecordingInfo) -> None:
    recording.duration_s = info.duration_s
    recording.size_bytes = info.size_bytes
    recording.save(update_fields=["duration_s", "size_bytes"])


def _recording_settle(
    recording: Recording, figures: _FileFigures, video: VideoRecordingInfo | None = None
) -> str | None:
    """Keep a finalised recording (storing its figures, compressing it after the
    commit) or drop it; returns why it was dropped: ``"empty"`` (no audio at all: the
    peer never connected) or ``"too_short"`` (under ``HEARTH["MIN_RECORDING_S"]``),
    None when kept. Runs in the caller's transaction; files go after its commit.

    With ``video`` (a camera broadcast's finished MP4) a kept recording becomes that
    MP4 (see :func:`_recording_video_set`) instead of being compressed.
    A file that may still be written (``figures.disposable`` False) is always kept.
    """
    info = figures.info
    dropped: str | None = None
    if figures.disposable:
        if info is None or info.frames == 0:
            dropped = "empty"
        elif info.duration_s < settings.HEARTH["MIN_RECORDING_S"]:
            dropped = "too_short"
    if dropped is not None:
        path = recording_path(recording)
        recording.delete()
        transaction.on_commit(lambda: path.unlink(missing_ok=True))
        if video is not None:
            transaction.on_commit(lambda: video.path.unlink(missing_ok=True))
        return dropped
    if video is not None and figures.disposable:
        _recording_video_set(recording, video)
        return None
    if info is not None:
        _recording_figures_store(recording, info)
    if figures.disposable:  # its writer is done: compress it now, not at housekeeping
        recording_id = recording.id
        transaction.on_commit(lambda: recording_compress_soon(recording_id=recording_id))
    return None


def _session_finish(
    session: LiveSession,
    *,
    recording_id: int | None,
    figures: _FileFigures,
    video: VideoRecordingInfo | None = None,
) -> Recording | None:
    """Store the ended session's recording figures (or drop an empty or too short
    recording) and announce the end. Runs in a transaction: file deletion, compression
    and events follow its commit.

    ``session.ended`` carries ``recording_id`` (None when there is no recording) and
    ``recording_discarded``: ``"too_short"`` (with ``min_recording_s``, the minimum
    in seconds) or ``"empty"`` when a recording was dropped, else None.
    """
    recording = (
        Recording.objects.select_for_update().filter(id=recording_id).first()
        if recording_id is not None
        else None
    )
    dropped = _recording_settle(recording, figures, video) if recording is not None else None
    if dropped is not None:
        recording = None
    _notify_live(session, live=False)
    _session_event(
        session.id,
        "session.ended",
        {
            "session_id": session.id,
            "reason": session.end_reason,
            "recording_id": recording.id if recording else None,
            "recording_discarded": dropped,
            "min_recording_s": settings.HEARTH["MIN_RECORDING_S"],
        },
    )
    _notify_recordings_changed(session.broadcaster_id)
    return recording


def _session_end(
    *,
    session_id: int,
    reason: str,
    info: RecordingInfo | None,
    repair_busy: bool,
    only_if_stale: bool = False,
    video: VideoRecordingInfo | None = None,
) -> tuple[bool, Recording | None]:
    """End ``session_id``; returns (whether this call ended it, its recording).

    ``only_if_stale``: leave it live if its heartbeat is fresh by the time it is locked.
    ``video``: the owner's finished MP4; without ``info`` (nobody closed the writers)
    a fragment file left beside the WAV is finished here.

    Raises:
        LiveSession.DoesNotExist: no such session.
    """
    with transaction.atomic():
        session = (
            LiveSession.objects.select_for_update().select_related("broadcaster").get(id=session_id)
        )
        if session.ended_at is not None:
            recording = Recording.objects.select_for_update().filter(session=session).first()
            if recording is not None and info is not None and info.frames > 0:
                # Ended elsewhere while its owner still wrote (judged lost, or by a
                # start-up cleanup): the owner's figures of the closed file are the truth.
                owners = _FileFigures(info=info, disposable=True)
                if _recording_settle(recording, owners, video) is not None:  # too short
                    _notify_recordings_changed(session.broadcaster_id)
                    recording = None
            return False, recording
        if only_if_stale and session.heartbeat_at >= live_session_stale_cutoff():
            return False, None  # stamped meanwhile: its owner is alive
        recording = _session_mark_ended(session, reason=reason)
        if recording is None or info is not None:  # nothing to read from disk
            figures = _FileFigures(info=info, disposable=True)
            return True, _session_finish(
                session,
                recording_id=recording.id if recording else None,
                figures=figures,
                video=video,
            )
    figures = _recording_file_measure(recording_path(recording), repair_busy=repair_busy)
    if video is None and figures.disposable:
        video = _video_fragments_finish(recording, repair_busy=repair_busy)
    with transaction.atomic():
        return True, _session_finish(
            session, recording_id=recording.id, figures=figures, video=video
        )


def _session_end_if_lost(session: LiveSession) -> bool:
    """End a session with a stale heartbeat as ``lost`` unless its owner shows signs of
    life (a fresh stamp by now, or a recording still being written); True if ended."""
    recording = Recording.objects.filter(session=session).first()
    if recording is not None and _recording_file_busy(recording_path(recording)):
        logger.warning(
            "session %s has a stale heartbeat but its recording is still being written; "
            "leaving it live",
            session.id,
        )
        return False
    try:
        ended, _ = _session_end(
            session_id=session.id, reason="lost", info=None, repair_busy=False, only_if_stale=True
        )
    except LiveSession.DoesNotExist:  # deleted meanwhile (its user was)
        return False
    return ended


def live_session_end(
    *,
    session_id: int,
    reason: str,
    info: RecordingInfo | None = None,
    video: VideoRecordingInfo | None = None,
) -> Recording | None:
    """End live session ``session_id`` and finalise its recording row.

    ``video``: a camera broadcast's finished MP4 and redaction counts; the recording
    becomes that MP4 (``kind="video"``) and its WAV is deleted after the commit. Without
    it, a fragment file a camera broadcast left beside the WAV is finished from disk.

    For the session's owner (or a caller that knows the owner is gone). ``info`` is the
    finalised WAV's figures from the recorder; when None the file is repaired and
    measured from disk, outside any transaction of this function's. A recording with
    no audio is deleted, its file once that commits. Ending an already ended session
    returns its recording, storing ``info``'s figures if they have audio (the owner
    closed the file after the session was ended elsewhere).

    Raises:
        LiveSession.DoesNotExist: no such session.
    """
    if video is None and info is not None:
        # The owner closed its writers but could not finish its MP4: try from disk.
        row = Recording.objects.filter(session_id=session_id, ended_at__isnull=True).first()
        if row is not None:
            video = _video_fragments_finish(row, repair_busy=True)
    _, recording = _session_end(
        session_id=session_id, reason=reason, info=info, repair_busy=True, video=video
    )
    return recording


def live_session_stop_for_user(*, user_id: int, reason: str) -> list[int]:
    """End every live session of user ``user_id`` as its owner would; returns their ids.

    Each is stopped by the media worker holding it (``rtc.broadcast.stop`` to its
    ``owner_channel``, waiting up to ``HEARTH["BROADCAST_REPLY_TIMEOUT_S"]`` for
    ``rtc.broadcast.ended``): the worker closes the peer connections, finalises the
    recording (row and WAV), and the listeners get ``session.ended`` with ``reason``
    and the friends ``live: false``, as for any stop. A session still live after
    that (its worker did not answer: dead or stuck) is ended here from the database,
    its WAV repaired, as the stale cleanup would.

    Blocking: call it outside any transaction, from a thread other than the one the
    media worker's database calls run in (a request's thread), since the worker's stop
    needs that thread while this waits.
    """
    sessions = list(
        LiveSession.objects.filter(broadcaster_id=user_id, ended_at__isnull=True).values_list(
            "id", "owner_channel"
        )
    )
    for session_id, owner_channel in sessions:
        reply = None
        if owner_channel:
            reply = layer_request_from_sync(
                owner_channel,
                {"type": "rtc.broadcast.stop", "session_id": session_id, "reason": reason},
                timeout=settings.HEARTH["BROADCAST_REPLY_TIMEOUT_S"],
            )
        if reply is None:
            logger.warning("session %s: its worker did not stop it; ending it here", session_id)
        if LiveSession.objects.filter(id=session_id, ended_at__isnull=True).exists():
            with contextlib.suppress(LiveSession.DoesNotExist):
                live_session_end(session_id=session_id, reason=reason)
    return [session_id for session_id, _ in sessions]


def live_session_end_stale() -> int:
    """End sessions whose owner process stopped stamping them (crash); returns count.

    Their WAV files are repaired so they stay playable up to the crash. A session whose
    recording was written to within ``SESSION_STALE_S`` is left live: its owner is
    alive, only slow to stamp (e.g. waiting for a database lock).
    """
    return sum(_session_end_if_lost(session) for session in live_session_stale_list())


def live_session_end_orphaned() -> int:
    """End every session still marked live; returns count.

    Only for a single-process deployment (in-memory channel layer) at start-up: no
    other process can own a live session then, so any left is from a crash and need
    not wait ``SESSION_STALE_S`` to be cleared. As a safeguard against a second process
    sharing the database after all, a recording written to within ``SESSION_STALE_S``
    is measured but not repaired.
    """
    ids = list(LiveSession.objects.filter(ended_at__isnull=True).values_list("id", flat=True))
    count = 0
    for session_id in ids:
        try:
            ended, _ = _session_end(
                session_id=session_id, reason="lost", info=None, repair_busy=False
            )
        except LiveSession.DoesNotExist:
            continue
        count += ended
    return count


@transaction.atomic
def recording_rename(*, user: User, recording_id: int, title: str) -> Recording:
    """Give ``user``'s recording a new title (1-120 characters after trimming).

    Raises:
        RecordingError: not the owner, no such recording, or a bad title (wrong length,
            or control characters or lone surrogates: see ``text_is_clean``).
    """
    recording = Recording.objects.select_for_update().filter(id=recording_id, owner=user).first()
    if recording is None:
        raise RecordingError("No such recording of yours.", status=404)
    title = title.strip()
    if not 1 <= len(title) <= 120:
        raise RecordingError("A title needs 1 to 120 characters.", status=400)
    if not text_is_clean(title):
        raise RecordingError(f"Bad title: {UNCLEAN_TEXT_MESSAGE}", status=400)
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
    _notify_recordings_changed(user, deleted=[recording_id])


def recording_delete_expired() -> int:
    """Delete finished recordings older than ``HEARTH["RECORDING_RETENTION_DAYS"]``
    (0: keep all) and, once that commits, their files; returns how many.

    Recordings still being written are kept whatever their age.
    """
    days = settings.HEARTH["RECORDING_RETENTION_DAYS"]
    if days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=days)
    with transaction.atomic():
        expired = list(
            Recording.objects.select_for_update().filter(
                started_at__lt=cutoff, ended_at__isnull=False
            )
        )
        if not expired:
            return 0
        paths = [recording_path(recording) for recording in expired]
        Recording.objects.filter(id__in=[recording.id for recording in expired]).delete()

        def unlink() -> None:
            for path in paths:
                path.unlink(missing_ok=True)

        transaction.on_commit(unlink)
        for owner_id in {recording.owner_id for recording in expired}:
            ids = [recording.id for recording in expired if recording.owner_id == owner_id]
            _notify_recordings_changed(owner_id, deleted=ids)
    logger.info("deleted %d recording(s) older than %s days", len(expired), days)
    return len(expired)


# --- Compressing finished recordings ---------------------------------------------
#
# A live recording is a WAV (crash-safe: readable up to the last write). Once its
# session has ended and its writer closed it, it is transcoded to Ogg/Opus in a
# background thread of this process (never on the event loop, never inside a
# transaction): the Ogg file is written beside it under a temporary name and renamed
# into place, then one short transaction points the row at it (with its size and the
# waveform peaks), and the WAV is deleted only after that commits. A crash at any
# point leaves the row on the WAV, which stays the truth; housekeeping (every
# HOUSEKEEPING_S, and at start-up) redoes whatever is left, and removes a WAV whose
# Ogg file the row already names (a crash between the commit and the unlink).

_compress_pool: ThreadPoolExecutor | None = None
_compress_pool_lock = threading.Lock()
_compress_pending_queued = threading.Event()


def _compress_submit(job: Callable[[], object]) -> None:
    """Run ``job`` in this process's one compression thread (jobs run one at a time, so
    transcoding takes at most one core), closing the thread's database connection after."""
    global _compress_pool
    with _compress_pool_lock:
        if _compress_pool is None:
            _compress_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hearth-compress")
        pool = _compress_pool

    def run() -> None:
        try:
            job()
        except Exception:
            logger.exception("compressing recordings failed")
        finally:
            connections.close_all()  # this thread's connections only

    pool.submit(run)


def recording_compress_soon(*, recording_id: int) -> None:
    """Compress finished recording ``recording_id`` in the background (see
    :func:`recording_compress`); returns at once. Nothing when
    ``HEARTH["RECORDING_COMPRESS"]`` is off."""
    if settings.HEARTH["RECORDING_COMPRESS"]:
        _compress_submit(lambda: recording_compress(recording_id=recording_id, writer_closed=True))


def recording_compress_pending_soon() -> None:
    """Queue :func:`recording_compress_pending` in the background unless a pass is
    already queued; returns at once. For the housekeeping loop (it does no I/O itself,
    so it may be called on the event loop)."""
    if not settings.HEARTH["RECORDING_COMPRESS"] or _compress_pending_queued.is_set():
        return
    _compress_pending_queued.set()

    def job() -> None:
        _compress_pending_queued.clear()
        recording_compress_pending()

    _compress_submit(job)


def recording_compress(*, recording_id: int, writer_closed: bool = False) -> Recording | None:
    """Transcode finished recording ``recording_id`` from WAV to Ogg/Opus; returns the
    updated row, or None when there was nothing to do.

    Blocking (seconds per hour of audio): call it from a background thread, outside
    any transaction. Skips a recording that is live, gone, already compressed, or whose
    WAV is missing or unreadable; and, unless ``writer_closed`` (the caller knows its
    writer is done), one whose WAV was written to within ``SESSION_STALE_S`` (a slow
    owner may still be at it). A WAV with a stale header is repaired first. The Ogg
    file replaces the WAV atomically (see :func:`streams.recording.wav_to_opus`); the
    row then gets the new ``file``, ``size_bytes`` and ``peaks`` (``duration_s`` is
    measured on the WAV, which is exact) and owner and friends ``recordings.changed``;
    the WAV is deleted after that commits. A row deleted or compressed meanwhile by
    another process is left alone (an Ogg file written for a deleted row is removed).

    Raises:
        OSError: the Ogg file cannot be written (e.g. disk full); the WAV is kept.
    """
    if not settings.HEARTH["RECORDING_COMPRESS"]:
        return None
    recording = Recording.objects.filter(id=recording_id, ended_at__isnull=False).first()
    if recording is None or not recording.file.name.endswith(".wav"):
        return None
    wav = recording_path(recording)
    if not wav.is_file() or (not writer_closed and _recording_file_busy(wav)):
        return None
    if recording_fragments_path(wav).exists():
        return None  # a camera broadcast's MP4 is still to be finished: it replaces the WAV
    figures = _recording_file_measure(wav, repair_busy=writer_closed)
    if figures.info is None or not figures.disposable:
        return None
    wav_name = recording.file.name
    ogg_name = f"{wav_name[: -len('.wav')]}.ogg"
    ogg = Path(settings.MEDIA_ROOT) / ogg_name
    peaks = wav_peaks(wav)
    size = wav_to_opus(wav, ogg, bitrate=settings.HEARTH["RECORDING_OPUS_BITRATE"])
    with transaction.atomic():
        row = Recording.objects.select_for_update().filter(id=recording_id).first()
        if row is None:  # deleted while we transcoded
            transaction.on_commit(lambda: ogg.unlink(missing_ok=True))
            return None
        if row.file.name != wav_name:  # another process got there first
            return None
        row.file.name = ogg_name
        row.size_bytes = size
        row.duration_s = figures.info.duration_s
        row.peaks = peaks
        row.save(update_fields=["file", "size_bytes", "duration_s", "peaks"])
        transaction.on_commit(lambda: wav.unlink(missing_ok=True))
        _notify_recordings_changed(row.owner_id)
    logger.info(
        "recording %s compressed: %.1f s, %d bytes WAV -> %d bytes Ogg/Opus",
        recording_id,
        figures.info.duration_s,
        figures.info.size_bytes,
        size,
    )
    return row


def recording_peaks_remember(*, recording: Recording, peaks: list[int]) -> bool:
    """Store ``peaks`` computed from a finished recording's WAV (kept as WAV when
    ``RECORDING_COMPRESS`` is off, or not compressed yet), so the next page view need
    not read the whole file again; True if stored.

    Not stored when the WAV was written to within ``SESSION_STALE_S`` (a slow owner
    may still add to it) or the row changed file meanwhile. Sends no events.
    """
    if recording.ended_at is None or not peaks:
        return False
    if _recording_file_busy(recording_path(recording)):
        return False
    return bool(
        Recording.objects.filter(id=recording.id, file=recording.file.name).update(peaks=peaks)
    )


def recording_compress_pending() -> int:
    """Compress every finished recording still stored as WAV, and clean up what an
    interrupted compression left; returns how many were compressed.

    For housekeeping and start-up (see :func:`recording_compress_soon` for the normal
    path). Leftovers: a WAV beside the Ogg file its row already names (the process
    died between the commit and the unlink) is deleted, and so is a temporary
    ``.part`` file not written to within ``SESSION_STALE_S``. A recording that fails
    (unreadable, disk full) is logged and left as WAV for the next pass.
    """
    if not settings.HEARTH["RECORDING_COMPRESS"]:
        return 0
    root = Path(settings.MEDIA_ROOT) / "recordings"
    if root.is_dir():
        wavs = {f"recordings/{p.parent.name}/{p.name}": p for p in root.glob("*/*.wav")}
        oggs = {f"{name[: -len('.wav')]}.ogg": path for name, path in wavs.items()}
        for name in Recording.objects.filter(file__in=list(oggs)).values_list("file", flat=True):
            logger.info("removing %s: its recording is compressed", oggs[name])
            oggs[name].unlink(missing_ok=True)
        stale = time.time() - settings.HEARTH["SESSION_STALE_S"]
        for part in root.glob("*/.*.part"):
            with contextlib.suppress(OSError):
                if part.stat().st_mtime < stale:
                    part.unlink()
    ids = list(
        Recording.objects.filter(ended_at__isnull=False, file__endswith=".wav")
        .order_by("id")
        .values_list("id", flat=True)
    )
    done = 0
    for recording_id in ids:
        try:
            done += recording_compress(recording_id=recording_id) is not None
        except (OSError, WavFileError):
            logger.exception("could not compress recording %s; keeping its WAV", recording_id)
    return done


# --- Media workers ----------------------------------------------------------------


def media_worker_register(*, channel_name: str, host: str, pid: int, capacity: int) -> MediaWorker:
    """Announce a media worker (or stamp it again after it was judged dead).

    Raises:
        ValueError: ``capacity`` is below 1.
    """
    if capacity < 1:
        raise ValueError(f"A media worker needs a capacity of at least 1 ({capacity}).")
    worker, _ = MediaWorker.objects.update_or_create(
        channel_name=channel_name,
        defaults={
            "host": host[:255],
            "pid": pid,
            "capacity": capacity,
            "heartbeat_at": timezone.now(),
        },
    )
    return worker


def media_worker_heartbeat(
    *, channel_name: str, sessions: int, host: str, pid: int, capacity: int
) -> None:
    """Stamp a worker alive now with its current broadcast count ``sessions``.

    Re-creates the row when another process deleted it (judged dead while the
    database was slow): the worker is alive, so it must stay placeable.
    """
    now = timezone.now()
    updated = MediaWorker.objects.filter(channel_name=channel_name).update(
        sessions=max(sessions, 0), heartbeat_at=now, capacity=capacity
    )
    if not updated and capacity >= 1:  # a draining worker need not come back
        media_worker_register(channel_name=channel_name, host=host, pid=pid, capacity=capacity)
        MediaWorker.objects.filter(channel_name=channel_name).update(sessions=max(sessions, 0))


def media_workers_forget() -> int:
    """Delete every media worker row; returns how many (single-process start-up only)."""
    deleted, _ = MediaWorker.objects.all().delete()
    return deleted


def media_worker_unregister(*, channel_name: str) -> None:
    """Remove a worker that is shutting down (after its broadcasts were stopped)."""
    MediaWorker.objects.filter(channel_name=channel_name).delete()


def media_worker_reserve(*, worker_id: int) -> bool:
    """Count one more broadcast on worker ``worker_id`` if it has room; True if it had.

    One atomic ``UPDATE … WHERE sessions < capacity``, so two web processes placing
    go-lives at once cannot both take a worker's last slot. The worker's next
    heartbeat replaces the count with the broadcasts it really holds.
    """
    return bool(
        MediaWorker.objects.filter(id=worker_id, sessions__lt=F("capacity")).update(
            sessions=F("sessions") + 1
        )
    )


def media_worker_end_dead(*, exclude_channel: str | None = None) -> int:
    """End the sessions of workers that stopped stamping (killed); returns sessions ended.

    A worker whose ``heartbeat_at`` is older than ``HEARTH["WORKER_STALE_S"]`` looks
    dead. A stamp alone is weak evidence (a database stall or outage delays every
    stamp), so each of its live sessions is ended as ``worker_lost``, its WAV
    repaired, only if that recording was not written to within ``WORKER_STALE_S``
    either: a worker killed with SIGKILL stops writing at once, a live one writes
    every 100 ms while audio flows. The row is deleted once none of its sessions
    shows signs of life. ``exclude_channel`` (the caller's own worker) is never judged.
    """
    window = settings.HEARTH["WORKER_STALE_S"]
    dead = MediaWorker.objects.filter(heartbeat_at__lt=media_worker_stale_cutoff())
    if exclude_channel:
        dead = dead.exclude(channel_name=exclude_channel)
    ended = 0
    for worker in list(dead):
        sessions = list(
            LiveSession.objects.filter(owner_channel=worker.channel_name, ended_at__isnull=True)
        )
        alive = False
        for session in sessions:
            recording = Recording.objects.filter(session=session).first()
            if recording is not None and _recording_file_busy(
                recording_path(recording), within_s=window
            ):
                alive = True  # still being written: the worker lives, only its stamp lags
                continue
            try:
                done, _ = _session_end(
                    session_id=session.id, reason="worker_lost", info=None, repair_busy=True
                )
            except LiveSession.DoesNotExist:
                continue
            ended += done
        if alive:
            logger.warning(
                "media worker %s:%s has not stamped for %.0f s but still writes; left alone",
                worker.host,
                worker.pid,
                window,
            )
            continue
        if sessions:
            logger.warning(
                "media worker %s:%s stopped stamping; ended %d session(s)",
                worker.host,
                worker.pid,
                len(sessions),
            )
        MediaWorker.objects.filter(
            id=worker.id, heartbeat_at__lt=media_worker_stale_cutoff()
        ).delete()
    return ended


# --- Bleeping personal information: audit trail and transcript --------------------------


@dataclass(frozen=True)
class RedactionInput:
    """One redaction to store: seconds into the recording, label, score, detector."""

    start_s: float
    end_s: float
    entity: str
    confidence: float
    detector: str


def redaction_events_add(*, session_id: int, events: list[RedactionInput]) -> int:
    """Store ``events`` on the recording of session ``session_id``; returns how many.

    A session without a recording (none yet, or discarded) stores nothing. Only
    labels, times, scores and detector names are kept: never text or audio.
    """
    recording = Recording.objects.filter(session_id=session_id).first()
    if recording is None or not events:
        return 0
    rows = [
        RedactionEvent(
            recording=recording,
            start_s=max(0.0, e.start_s),
            end_s=max(0.0, e.end_s),
            entity=e.entity[:40],
            confidence=e.confidence,
            detector=e.detector[:80],
        )
        for e in events
    ]
    RedactionEvent.objects.bulk_create(rows)
    return len(rows)


_MASK = re.compile(r"\[[^\]]*\]")
"""A transcript mask ("[phone number]", "[…]") or an ASR tag ("[Music]")."""


def transcript_search_text(*, cues: list[dict[str, object]]) -> str:
    """The searchable text of redacted transcript ``cues``: each cue's text, masks
    removed and whitespace collapsed, one cue per line.

    Only words the transcript shows in clear end up here; a mask is not something
    that was said, so searching "phone number" does not find every bleeped number.
    """
    lines = (" ".join(_MASK.sub(" ", str(cue.get("text", ""))).split()) for cue in cues)
    return "\n".join(line for line in lines if line)


def recording_transcript_set(*, session_id: int, cues: list[dict[str, object]]) -> None:
    """Store the redacted transcript cues (``{"start", "end", "text"}``, seconds) on the
    recording of session ``session_id`` (nothing if it has none), and its searchable
    text (:func:`transcript_search_text`)."""
    Recording.objects.filter(session_id=session_id).update(
        transcript=cues, transcript_text=transcript_search_text(cues=cues)
    )


# -- Upload & process ------------------------------------------------------------------

UPLOAD_DIR = "uploads"
"""Folder under ``MEDIA_ROOT`` holding uploaded files until their job ends."""

PROGRESS_SAVE_S = 0.5
"""Least time between two progress writes of a running upload job, seconds."""

UPLOAD_HEARTBEAT_S = 10.0
"""A running job's row is stamped at least this often, progress or not, seconds."""

UPLOAD_STALE_S = 120.0
"""A running job not stamped for this long lost its worker (killed, crashed)."""


class UploadRefused(ValueError):
    """An upload is refused; the message is for the user (too large, not media, ...)."""


def _upload_notify(job: UploadJob) -> None:
    """Send the job's state to its owner's pages (after commit)."""
    users_notify(user_ids=[job.owner_id], event="upload.progress", data=upload_json(job))


def upload_json(job: UploadJob) -> dict[str, object]:
    """An upload job as the page's script sees it (``progress`` 0.0-1.0)."""
    return {
        "id": job.id,
        "title": job.title,
        "kind": job.kind,
        "status": job.status,
        "progress": round(job.progress, 3),
        "error": job.error,
        "recording_id": job.recording_id,
        "recording_url": (
            f"/recordings/{job.recording_id}/" if job.recording_id is not None else None
        ),
    }


def upload_create(
    *,
    user: User,
    upload: UploadedFile,
    title: str,
    blur_faces: bool,
    blur_plates: bool,
    denoise: bool,
    blur_text: bool = False,
) -> UploadJob:
    """Store an uploaded file and queue the job that processes it into a recording.

    The file is checked by content (:func:`streams.media_file.media_probe`), not by
    its name or claimed type; ``title`` defaults to the file's name. The job is
    queued (``streams.tasks.upload_process_task``) once the row commits.

    Raises:
        UploadRefused: empty or over ``HEARTH["UPLOAD_MAX_BYTES"]``, not a readable
            audio/video file, longer than ``HEARTH["UPLOAD_MAX_DURATION_S"]``, or a
            title with control characters.
    """
    from streams.media_file import MediaFileError, media_probe

    limit = int(settings.HEARTH["UPLOAD_MAX_BYTES"])
    if upload.size is None or upload.size <= 0:
        raise UploadRefused("The file is empty.")
    if upload.size > limit:
        raise UploadRefused(f"The file is too large (the limit is {limit // 1024**2} MB).")
    title = (title or "").strip() or Path(upload.name or "upload").stem
    title = title[:120]
    if not text_is_clean(title):
        raise UploadRefused(UNCLEAN_TEXT_MESSAGE)
    folder = Path(settings.MEDIA_ROOT) / UPLOAD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{UPLOAD_DIR}/{secrets.token_hex(12)}.upload"
    path = Path(settings.MEDIA_ROOT) / name
    with path.open("wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    try:
        probe = media_probe(path)
    except MediaFileError as exc:
        path.unlink(missing_ok=True)
        raise UploadRefused(f"That is not an audio or video file Hearth can read ({exc}).") from exc
    if probe.duration_s > float(settings.HEARTH["UPLOAD_MAX_DURATION_S"]):
        path.unlink(missing_ok=True)
        raise UploadRefused(
            f"The file is too long (the limit is "
            f"{settings.HEARTH['UPLOAD_MAX_DURATION_S'] / 60:.0f} minutes)."
        )
    with transaction.atomic():
        job = UploadJob.objects.create(
            owner=user,
            title=title,
            source=name,
            kind=probe.kind,
            duration_s=probe.duration_s,
            options={
                "blur_faces": blur_faces,
                "blur_plates": blur_plates,
                "blur_text": blur_text,
                "denoise": denoise,
            },
        )
        transaction.on_commit(lambda: _upload_enqueue(job.id))
        _upload_notify(job)
    return job


def _upload_enqueue(job_id: int) -> None:
    from streams.tasks import upload_process_task

    upload_process_task.enqueue(job_id=job_id)


def _upload_set(job_id: int, **fields: object) -> UploadJob | None:
    """Update a job's fields (and ``updated_at``) and notify its owner; None if gone."""
    with transaction.atomic():
        job = UploadJob.objects.select_for_update().filter(id=job_id).first()
        if job is None:
            return None
        for key, value in fields.items():
            setattr(job, key, value)
        job.save()
        _upload_notify(job)
    return job


class _ProgressWriter:
    """Stores a running job's progress from its own thread, at most every
    :data:`PROGRESS_SAVE_S` (the file run calls :meth:`report` on its event loop,
    where the ORM may not be used)."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.latest = 0.0
        self.saved = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hearth-upload-progress")

    def report(self, fraction: float) -> None:
        self.latest = max(self.latest, fraction)

    def _run(self) -> None:
        stamped = time.monotonic()
        try:
            while not self.stop.wait(PROGRESS_SAVE_S):
                stale = time.monotonic() - stamped >= UPLOAD_HEARTBEAT_S
                if self.latest - self.saved >= 0.01 or stale:
                    self.saved = self.latest
                    _upload_set(self.job_id, progress=self.saved)
                    stamped = time.monotonic()
        finally:
            connections.close_all()

    def __enter__(self) -> _ProgressWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def upload_process(*, job_id: int) -> UploadJob | None:
    """Process queued upload ``job_id`` into a recording (the task queue's job body).

    Runs the same graph as ``manage.py process_media``
    (:func:`streams.media_file.video_file_process` /
    :func:`~streams.media_file.audio_file_process`) with the job's options. A video
    becomes an MP4 recording with its redaction settings and counts; audio becomes
    a WAV recording, compressed to Ogg/Opus like a broadcast's. Progress is stored as
    it goes; the owner's pages get ``upload.progress``, and the owner's and friends'
    pages ``recordings.changed`` when the recording exists. A failure marks the job
    ``failed`` with the reason; the uploaded file is deleted either way. A job not
    ``queued`` (already taken) is left alone and None returned.
    """
    from streams.media_file import (
        MediaFileError,
        audio_file_process,
        media_probe,
        video_file_process,
    )

    upload_fail_stale()
    with transaction.atomic():
        job = UploadJob.objects.select_for_update().filter(id=job_id).first()
        if job is None or job.status != UploadJob.QUEUED:
            return None
        job.status = UploadJob.RUNNING
        job.save()
        _upload_notify(job)
    source = Path(settings.MEDIA_ROOT) / job.source
    options = job.options
    denoise = bool(options.get("denoise", True))
    started = timezone.now()
    ext = "mp4" if job.kind == "video" else "wav"
    name = f"recordings/upload-{job.id}-{secrets.token_hex(4)}.{ext}"
    target = Path(settings.MEDIA_ROOT) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _ProgressWriter(job.id) as progress:
            probe = media_probe(source)
            if probe.kind == "video":
                assert probe.video is not None
                result = video_file_process(
                    source=source,
                    target=target,
                    info=probe.video,
                    blur_faces=bool(options.get("blur_faces", True)),
                    blur_plates=bool(options.get("blur_plates", True)),
                    blur_text=bool(options.get("blur_text", False)),
                    denoise=denoise,
                    on_progress=progress.report,
                )
                fields: dict[str, object] = {
                    "kind": "video",
                    "blur_faces": bool(options.get("blur_faces", True)),
                    "blur_plates": bool(options.get("blur_plates", True)),
                    "blur_text": bool(options.get("blur_text", False)),
                    "frames_processed": result.video.frames_processed,
                    "faces_blurred": result.faces_blurred,
                    "plates_blurred": result.plates_blurred,
                    "text_blurred": result.text_blurred,
                    "frames_failed_closed": result.video.frames_failed_closed,
                    "duration_s": result.frames / float(probe.video.rate),
                }
            else:
                audio = audio_file_process(
                    source=source,
                    target=target,
                    denoise=denoise,
                    duration_s=probe.duration_s,
                    on_progress=progress.report,
                )
                fields = {"kind": "audio", "duration_s": audio.info.duration_s}
    except (MediaFileError, OSError) as exc:
        logger.warning("upload %s failed: %s", job_id, exc)
        target.unlink(missing_ok=True)
        source.unlink(missing_ok=True)
        return _upload_set(job_id, status=UploadJob.FAILED, error=_upload_error(exc))
    source.unlink(missing_ok=True)
    with transaction.atomic():
        recording = Recording.objects.create(
            owner_id=job.owner_id,
            title=job.title,
            file=name,
            processing=audio_chain_settings(denoise=denoise),
            started_at=started,
            ended_at=timezone.now(),
            size_bytes=target.stat().st_size,
            **fields,
        )
        job = (
            _upload_set(job_id, status=UploadJob.DONE, progress=1.0, recording_id=recording.id)
            or job
        )
        _notify_recordings_changed(job.owner_id)
    if recording.kind == "audio":
        try:
            recording_compress(recording_id=recording.id, writer_closed=True)
        except OSError:
            logger.exception("upload %s: compressing recording %s failed", job_id, recording.id)
    return job


def _upload_error(exc: Exception) -> str:
    """The user's sentence for a failed job (no paths of this server)."""
    text = str(exc).replace(str(settings.MEDIA_ROOT), "")
    return f"Processing failed: {text}"[:300]


def upload_fail_stale() -> int:
    """Mark failed the running upload jobs whose worker is gone (not stamped for
    :data:`UPLOAD_STALE_S`; a live worker stamps every :data:`UPLOAD_HEARTBEAT_S`),
    delete their uploaded files and tell their owners; returns how many. Called when
    a worker takes a job and by the web process's relay (about every 30 s)."""
    cutoff = timezone.now() - timedelta(seconds=UPLOAD_STALE_S)
    failed = 0
    stale = UploadJob.objects.filter(status=UploadJob.RUNNING, updated_at__lt=cutoff)
    for job_id in list(stale.values_list("id", flat=True)):
        with transaction.atomic():
            job = stale.select_for_update().filter(id=job_id).first()
            if job is None:  # it moved on meanwhile
                continue
            job.status = UploadJob.FAILED
            job.error = (
                "Processing stopped (the server's processor was restarted). Upload the file again."
            )
            job.save()
            _upload_notify(job)
            source = Path(settings.MEDIA_ROOT) / job.source
            transaction.on_commit(lambda path=source: path.unlink(missing_ok=True))
        failed += 1
    if failed:
        logger.warning("%d upload job(s) lost their worker and were marked failed", failed)
    return failed
