"""JSON API for live sessions and recordings, and the recording audio endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from asgiref.sync import sync_to_async
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import reverse

from project.api import ApiError, api_view, json_body, json_error
from streams import selectors, services
from streams.http_range import RangeNotSatisfiable, range_parse
from streams.models import LiveSession, Recording

CHUNK_BYTES = 256 * 1024


def live_session_json(session: LiveSession, *, listeners: int | None = None) -> dict[str, object]:
    """A live session as the API and the pages' scripts see it.

    ``listeners`` is the listener count to report, ``None`` where it is not to be shown.
    """
    return {
        "id": session.id,
        "broadcaster": {"id": session.broadcaster_id, "username": session.broadcaster.username},
        "started_at": session.started_at.isoformat(),
        "denoise": session.denoise,
        "listeners": listeners,
    }


def _recording_json(recording: Recording, *, viewer_id: int) -> dict[str, object]:
    return {
        "id": recording.id,
        "title": recording.title,
        "owner": {"id": recording.owner_id, "username": recording.owner.username},
        "is_owner": recording.owner_id == viewer_id,
        "started_at": recording.started_at.isoformat(),
        "ended_at": recording.ended_at.isoformat() if recording.ended_at else None,
        "duration_s": round(recording.duration_s, 2),
        "size_bytes": recording.size_bytes,
        "processing": recording.processing,
        "audio_url": reverse("recording_audio", args=[recording.id]),
    }


@api_view(("GET",))
def live_list(request: HttpRequest) -> JsonResponse:
    """GET → ``{"sessions": [...]}``: friends' live sessions, newest first.

    Listener counts are those the sessions' owner processes stored on the rows, so
    sessions owned by any process are counted.
    """
    sessions = selectors.live_session_list_for_friends(user=request.user)
    return JsonResponse(
        {"sessions": [live_session_json(s, listeners=s.listeners) for s in sessions]}
    )


@api_view(("GET",))
def recording_list(request: HttpRequest) -> JsonResponse:
    """GET → ``{"recordings": [...]}``: own and friends' recordings, newest first."""
    recordings = selectors.recording_list_visible(user=request.user)
    return JsonResponse(
        {"recordings": [_recording_json(r, viewer_id=request.user.id) for r in recordings]}
    )


@api_view(("GET", "PATCH", "DELETE"))
def recording_detail(request: HttpRequest, recording_id: int) -> HttpResponse:
    """GET one recording; PATCH ``{"title"}`` renames it, DELETE removes it (owner only)."""
    user = request.user
    try:
        if request.method == "PATCH":
            title = json_body(request).get("title")
            if not isinstance(title, str):
                raise ApiError("Give a title.")
            services.recording_rename(user=user, recording_id=recording_id, title=title)
        elif request.method == "DELETE":
            services.recording_delete(user=user, recording_id=recording_id)
            return HttpResponse(status=204)
    except services.RecordingError as exc:
        status = exc.status
        if status == 404 and selectors.recording_visible_get(user=user, recording_id=recording_id):
            status = 403  # a friend's recording: visible, but not theirs to change
        raise ApiError(str(exc), status=status) from exc
    recording = selectors.recording_visible_get(user=user, recording_id=recording_id)
    if recording is None:
        raise ApiError("No such recording.", status=404)
    return JsonResponse(_recording_json(recording, viewer_id=user.id))


async def _file_chunks(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    """Yield ``length`` bytes of ``path`` from ``start`` without blocking the event loop.

    The file I/O runs in the default thread pool (``thread_sensitive=False``), not in
    the single thread that runs all database work, so large downloads cannot hold up
    the ORM.
    """
    handle = await sync_to_async(path.open, thread_sensitive=False)("rb")
    try:
        await sync_to_async(handle.seek, thread_sensitive=False)(start)
        read = sync_to_async(handle.read, thread_sensitive=False)
        remaining = length
        while remaining > 0:
            data = await read(min(CHUNK_BYTES, remaining))
            if not data:
                break
            remaining -= len(data)
            yield data
    finally:
        await sync_to_async(handle.close, thread_sensitive=False)()


def recording_audio(request: HttpRequest, recording_id: int) -> HttpResponse:
    """GET the recording's WAV with HTTP Range support (206/416), for seeking players.

    Only the owner and the owner's friends may fetch it (404 for anyone else, so the
    recording's existence does not leak).
    """
    if not request.user.is_authenticated:
        return json_error("Sign in first.", status=401)
    if request.method not in ("GET", "HEAD"):
        return json_error("Method not allowed.", status=405)
    recording = selectors.recording_visible_get(user=request.user, recording_id=recording_id)
    path = services.recording_path(recording) if recording else None
    if recording is None or path is None or not path.is_file():
        return json_error("No such recording.", status=404)
    size = path.stat().st_size
    try:
        byte_range = range_parse(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        response = json_error("Requested range not satisfiable.", status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    start, end = byte_range if byte_range else (0, size - 1)
    length = max(0, end - start + 1)
    body = _file_chunks(path, start, length) if request.method == "GET" else iter(())
    response = StreamingHttpResponse(
        body, content_type="audio/wav", status=206 if byte_range else 200
    )
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, no-store" if recording.ended_at is None else "private"
    response["Content-Disposition"] = f'inline; filename="hearth-recording-{recording.id}.wav"'
    if byte_range:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response
