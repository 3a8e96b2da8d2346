"""JSON API for live sessions and recordings, and the recording audio endpoint."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import reverse

from project.api import MAX_DB_ID, ApiError, api_view, json_body, json_error
from streams import selectors, services
from streams.http_range import RangeNotSatisfiable, range_parse
from streams.models import LiveSession, Recording
from streams.recording import WavFileError, wav_peaks
from streams.when import when_label
from users.selectors import friend_ids, user_avatar_url

CHUNK_BYTES = 256 * 1024


def live_session_json(session: LiveSession, *, listeners: int | None = None) -> dict[str, object]:
    """A live session as the API and the pages' scripts see it (for its broadcaster
    and their friends, who may see the broadcaster's ``avatar_url``).

    ``listeners`` is the listener count to report, ``None`` where it is not to be shown.
    """
    return {
        "id": session.id,
        "broadcaster": {
            "id": session.broadcaster_id,
            "username": session.broadcaster.username,
            "display_name": session.broadcaster.display_name,
            "avatar_url": user_avatar_url(user=session.broadcaster),
        },
        "started_at": session.started_at.isoformat(),
        "denoise": session.denoise,
        "listeners": listeners,
    }


def _recording_format(recording: Recording) -> tuple[str, str, str]:
    """(``format`` as the API names it, file extension, MIME type) of the stored file."""
    if recording.is_video:
        return "mp4", "mp4", "video/mp4"
    if recording.is_compressed:
        return "opus", "ogg", "audio/ogg"
    return "wav", "wav", "audio/wav"


def recording_json(
    recording: Recording, *, viewer_id: int, peaks: bool = False
) -> dict[str, object]:
    """A recording as the API and the pages' scripts see it.

    ``started_label`` is the one time format (:func:`streams.when.when_label`);
    ``audio_url`` changes when the stored file does (WAV → Ogg/Opus), so a player
    never seeks into a file that was swapped under it. With ``peaks``, also the
    waveform (see ``Recording.peaks``); for a recording not yet compressed it is
    computed from the WAV now (empty while live or when the file is unreadable).
    """
    fmt, _, _ = _recording_format(recording)
    data: dict[str, object] = {
        "id": recording.id,
        "title": recording.title,
        "owner": {
            "id": recording.owner_id,
            "username": recording.owner.username,
            "display_name": recording.owner.display_name,
        },
        "is_owner": recording.owner_id == viewer_id,
        "started_at": recording.started_at.isoformat(),
        "started_label": when_label(recording.started_at),
        "ended_at": recording.ended_at.isoformat() if recording.ended_at else None,
        "duration_s": round(recording.duration_s, 2),
        "size_bytes": recording.size_bytes,
        "format": fmt,
        "processing": recording.processing,
        "session_id": recording.session_id,
        "page_url": reverse("recording_page", args=[recording.id]),
        "audio_url": f"{reverse('recording_audio', args=[recording.id])}?v={fmt}",
        "download_url": reverse("recording_download", args=[recording.id]),
    }
    data["kind"] = recording.kind
    if recording.is_video:
        data["video_redaction"] = {
            "blur_faces": recording.blur_faces,
            "blur_plates": recording.blur_plates,
            "blur_text": recording.blur_text,
            "frames_processed": recording.frames_processed,
            "faces_blurred": recording.faces_blurred,
            "plates_blurred": recording.plates_blurred,
            "text_blurred": recording.text_blurred,
            "frames_failed_closed": recording.frames_failed_closed,
        }
    if recording.transcript:
        data["captions_url"] = reverse("recording_captions", args=[recording.id])
    if peaks:
        data["peaks"] = _recording_peaks(recording)
        data["transcript"] = recording.transcript
        if recording.owner_id == viewer_id:  # the audit trail is the owner's alone
            data["redactions"] = [
                {
                    "start_s": round(r.start_s, 2),
                    "end_s": round(r.end_s, 2),
                    "entity": r.entity,
                    "confidence": round(r.confidence, 2),
                    "detector": r.detector,
                }
                for r in recording.redactions.all()
            ]
    return data


def _recording_peaks(recording: Recording) -> list[int]:
    if recording.is_video:
        return []
    if recording.peaks or recording.ended_at is None or recording.is_compressed:
        return list(recording.peaks)
    try:
        peaks = wav_peaks(services.recording_path(recording))
    except (WavFileError, OSError):
        return []
    services.recording_peaks_remember(recording=recording, peaks=peaks)
    return peaks


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


def _query_id(request: HttpRequest, name: str) -> int | None:
    """Query parameter ``name`` as a database id, None when absent.

    Raises:
        ApiError: 400 when it is not a whole number in range.
    """
    value = request.GET.get(name)
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[0-9]{1,19}", value) or int(value) > MAX_DB_ID:
        raise ApiError(f"{name} must be a user id.")
    return int(value)


@api_view(("GET",))
def recording_list(request: HttpRequest) -> JsonResponse:
    """GET → ``{"recordings": [...], "next": cursor | null}``: own and friends'
    recordings, newest first, one page at a time.

    Query: ``owner`` (a user id: yourself or a friend) filters by broadcaster;
    ``before`` (the ``next`` of the previous answer) asks for the following page;
    ``limit`` (1-100, default ``HEARTH["RECORDINGS_PAGE_SIZE"]``) is the page size.
    400 for an owner who is neither you nor a friend, a bad cursor or a bad limit.
    """
    user = request.user
    owner_id = _query_owner(request)
    limit = _query_limit(request)
    try:
        page, cursor = selectors.recording_page(
            user=user, owner_id=owner_id, before=request.GET.get("before") or None, limit=limit
        )
    except selectors.RecordingCursorError as exc:
        raise ApiError(str(exc)) from exc
    return JsonResponse(
        {"recordings": [recording_json(r, viewer_id=user.id) for r in page], "next": cursor}
    )


@api_view(("GET",))
def recording_search(request: HttpRequest) -> JsonResponse:
    """GET → ``{"results": [...], "next": cursor | null}``: own and friends'
    recordings whose redacted transcript holds every word of ``q``, best first.

    Each result: ``{"recording": <recording_json>, "start_s", "snippet",
    "highlights": [[start, end], ...], "url"}``; ``url`` opens the recording's page
    at ``start_s`` (``?t=``), the moment the words are heard; ``highlights`` are
    character ranges of ``snippet`` (plain text, masks such as "[phone number]"
    kept) that matched.

    Query: ``q`` (1-100 characters, at most 8 words), ``owner`` and ``limit`` as
    for the list, ``after`` (the ``next`` of the previous answer). 400 with a
    message for an empty, long or unusable ``q`` and for bad parameters.
    """
    user = request.user
    owner_id = _query_owner(request)
    limit = _query_limit(request)
    after = request.GET.get("after", "")
    if after and not re.fullmatch(r"[0-9]{1,5}", after):
        raise ApiError("Bad page cursor.")
    try:
        hits, next_offset = selectors.recording_search(
            user=user,
            query=request.GET.get("q", ""),
            owner_id=owner_id,
            offset=int(after or 0),
            limit=limit,
        )
    except selectors.RecordingSearchError as exc:
        raise ApiError(str(exc)) from exc
    results = []
    for hit in hits:
        at = f"{hit.start_s:.1f}"
        page_url = reverse("recording_page", args=[hit.recording.id])
        results.append(
            {
                "recording": recording_json(hit.recording, viewer_id=user.id),
                "start_s": round(hit.start_s, 2),
                "snippet": hit.snippet,
                "highlights": [list(span) for span in hit.highlights],
                "url": f"{page_url}?t={at}" if hit.start_s > 0 else page_url,
            }
        )
    return JsonResponse(
        {"results": results, "next": str(next_offset) if next_offset is not None else None}
    )


def _query_limit(request: HttpRequest) -> int:
    """Query parameter ``limit`` (1-100), default ``HEARTH["RECORDINGS_PAGE_SIZE"]``.

    Raises:
        ApiError: 400 when it is not a number in range.
    """
    raw_limit = request.GET.get("limit", "")
    if not raw_limit:
        return settings.HEARTH["RECORDINGS_PAGE_SIZE"]
    if not re.fullmatch(r"[0-9]{1,3}", raw_limit) or not 1 <= int(raw_limit) <= 100:
        raise ApiError("limit must be a number from 1 to 100.")
    return int(raw_limit)


def _query_owner(request: HttpRequest) -> int | None:
    """Query parameter ``owner``: the requesting user's id or a friend's, or None.

    Raises:
        ApiError: 400 for a malformed id or anyone else's.
    """
    user = request.user
    owner_id = _query_id(request, "owner")
    if owner_id is not None and owner_id != user.id and owner_id not in friend_ids(user=user):
        raise ApiError("You can only filter by yourself or one of your friends.")
    return owner_id


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
    return JsonResponse(recording_json(recording, viewer_id=user.id, peaks=True))


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


def _recording_file_response(
    request: HttpRequest, recording_id: int, *, download: bool
) -> HttpResponse:
    """The recording's stored file, with HTTP Range support (206/416).

    Only the owner and the owner's friends may fetch it (404 for anyone else, so the
    recording's existence does not leak). ``download``: as an attachment named after
    the title (409 while it is still being recorded).
    """
    if not request.user.is_authenticated:
        return json_error("Sign in first.", status=401)
    if request.method not in ("GET", "HEAD"):
        return json_error("Method not allowed.", status=405)
    recording = selectors.recording_visible_get(user=request.user, recording_id=recording_id)
    path = services.recording_path(recording) if recording else None
    if recording is None or path is None or not path.is_file():
        return json_error("No such recording.", status=404)
    if download and recording.ended_at is None:
        return json_error(
            "This recording is still in progress; download it once the broadcast ends.",
            status=409,
        )
    _, extension, mime = _recording_format(recording)
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
    response = StreamingHttpResponse(body, content_type=mime, status=206 if byte_range else 200)
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, no-store" if recording.ended_at is None else "private"
    if download:
        response["Content-Disposition"] = content_disposition_attachment(
            f"{download_stem(recording.title, recording.id)}.{extension}"
        )
    else:
        response["Content-Disposition"] = (
            f'inline; filename="hearth-recording-{recording.id}.{extension}"'
        )
    if byte_range:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response


def recording_audio(request: HttpRequest, recording_id: int) -> HttpResponse:
    """GET the recording's audio (WAV, or Ogg/Opus once compressed) with HTTP Range
    support (206/416), for seeking players; owner and friends only (else 404)."""
    return _recording_file_response(request, recording_id, download=False)


def recording_download(request: HttpRequest, recording_id: int) -> HttpResponse:
    """GET the finished recording as a file download named after its title
    (``Content-Disposition: attachment``, RFC 6266); owner and friends only (else
    404), 409 while it is still being recorded."""
    return _recording_file_response(request, recording_id, download=True)


def _vtt_time(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


def recording_captions(request: HttpRequest, recording_id: int) -> HttpResponse:
    """GET the recording's redacted transcript as WebVTT (W3C WebVTT), for a
    ``<track kind="captions">``; owner and friends only (else 404, also when the
    recording has no transcript). Masks like "[phone number]" stand for PII."""
    if not request.user.is_authenticated:
        return json_error("Sign in first.", status=401)
    recording = selectors.recording_visible_get(user=request.user, recording_id=recording_id)
    if recording is None or not recording.transcript:
        return json_error("No captions for this recording.", status=404)
    lines = ["WEBVTT", ""]
    for cue in recording.transcript:
        start, end = float(cue["start"]), float(cue["end"])
        text = str(cue["text"]).replace("-->", "→")
        lines += [f"{_vtt_time(start)} --> {_vtt_time(max(end, start + 0.5))}", text, ""]
    response = HttpResponse("\n".join(lines), content_type="text/vtt; charset=utf-8")
    response["Cache-Control"] = "private"
    return response


_FILENAME_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')


def download_stem(title: str, recording_id: int) -> str:
    """A file name (without extension) from a recording's title, safe on every OS:
    ``:`` becomes ``.`` (``19:30`` → ``19.30``), other characters Windows or shells
    refuse (``/ \\ * ? " < > |``, controls) become ``-``, whitespace runs one space,
    no leading/trailing dots or spaces, at most 100 characters;
    ``hearth-recording-<id>`` when nothing is left."""
    stem = " ".join(title.split())  # tabs, newlines, runs: one space
    stem = _FILENAME_UNSAFE.sub(lambda m: "." if m.group() == ":" else "-", stem)
    stem = stem.strip(" .")[:100].strip(" .")
    return stem or f"hearth-recording-{recording_id}"


def content_disposition_attachment(filename: str) -> str:
    """``attachment`` with ``filename`` per RFC 6266: an ASCII ``filename=`` fallback
    (accents stripped, other non-ASCII dropped) and the exact UTF-8 ``filename*=``."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = " ".join(ascii_name.replace("\\", "-").replace('"', "-").split())
    if not ascii_name.strip(" .") or ascii_name.startswith("."):
        ascii_name = f"recording{Path(filename).suffix}"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _form_bool(request: HttpRequest, name: str) -> bool:
    """A checkbox of a multipart form: on when sent as ``on``/``true``/``1``."""
    return request.POST.get(name, "").strip().lower() in ("on", "true", "1")


@api_view(("POST",))
def upload_create(request: HttpRequest) -> JsonResponse:
    """POST multipart ``file`` (+ ``title``, ``blur_faces``, ``blur_plates``,
    ``blur_text``, ``denoise`` checkboxes) → 202 ``{"upload": {...}}``, the job queued; 400 with a
    message for a missing, empty, too large or unreadable file (413 is not used: the
    message matters more than the code to the page)."""
    upload = request.FILES.get("file")
    if upload is None:
        return json_error("Choose a file to upload.")
    try:
        job = services.upload_create(
            user=request.user,
            upload=upload,
            title=request.POST.get("title", ""),
            blur_faces=_form_bool(request, "blur_faces"),
            blur_plates=_form_bool(request, "blur_plates"),
            blur_text=_form_bool(request, "blur_text"),
            denoise=_form_bool(request, "denoise"),
        )
    except services.UploadRefused as exc:
        return json_error(str(exc))
    return JsonResponse({"upload": services.upload_json(job)}, status=202)


@api_view(("GET",))
def upload_detail(request: HttpRequest, job_id: int) -> JsonResponse:
    """GET one of the user's upload jobs (status, progress, recording link); 404 for
    anyone else's."""
    job = selectors.upload_own_get(user=request.user, job_id=job_id)
    if job is None:
        return json_error("No such upload.", status=404)
    return JsonResponse({"upload": services.upload_json(job)})
