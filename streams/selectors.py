"""Read-only queries about live sessions and recordings (HackSoftware style)."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.db.models import F, FloatField, Func, Q, QuerySet, Sum, Value
from django.db.models.functions import Cast, Length, Lower, Replace
from django.utils import timezone

from project.api import UNCLEAN_TEXT_MESSAGE, text_is_clean
from streams.models import LiveSession, MediaWorker, Recording, UploadJob
from users.models import User
from users.selectors import block_related_ids, friend_ids, friendship_exists


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


# --- Transcript search ------------------------------------------------------------------

SEARCH_QUERY_MAX_CHARS = 100
"""Longest search query accepted (characters, after trimming)."""
SEARCH_MAX_TERMS = 8
"""Most words a search query may have."""
SEARCH_MAX_OFFSET = 1000
"""How deep search results may be paged (results past this are not served)."""

_SEARCH_WORD = re.compile(r"\w+")
_MASK = re.compile(r"\[[^\]]*\]")


class RecordingSearchError(ValueError):
    """A search query that cannot be used (str() is user-facing)."""


@dataclass(frozen=True)
class RecordingSearchHit:
    """One recording whose redacted transcript matches a search.

    Attributes:
        recording: The recording (``peaks`` deferred).
        rank: Relevance, higher first (PostgreSQL ``ts_rank``; on SQLite, how often
            the words occur). Only comparable within one search.
        start_s: Seconds into the recording where the best matching cue starts (0.0
            when no single cue could be pointed at).
        snippet: The redacted transcript around that cue (masks shown as masks),
            at most about 160 characters, "…" where it was cut.
        highlights: ``(start, end)`` character ranges of ``snippet`` holding the
            matched words.
    """

    recording: Recording
    rank: float
    start_s: float
    snippet: str
    highlights: list[tuple[int, int]]


def search_terms(*, query: str) -> list[str]:
    """The distinct lower-cased words of a search ``query``, in order.

    Raises:
        RecordingSearchError: the query is empty, longer than
            :data:`SEARCH_QUERY_MAX_CHARS`, holds control characters, has no word
            characters, or more than :data:`SEARCH_MAX_TERMS` words.
    """
    query = query.strip()
    if not query:
        raise RecordingSearchError("Type a word to search for.")
    if len(query) > SEARCH_QUERY_MAX_CHARS:
        raise RecordingSearchError(
            f"Search for at most {SEARCH_QUERY_MAX_CHARS} characters at a time."
        )
    if not text_is_clean(query):
        raise RecordingSearchError(UNCLEAN_TEXT_MESSAGE)
    terms = list(dict.fromkeys(w.lower() for w in _SEARCH_WORD.findall(query)))
    if not terms:
        raise RecordingSearchError("Search for words or numbers.")
    if len(terms) > SEARCH_MAX_TERMS:
        raise RecordingSearchError(f"Search for at most {SEARCH_MAX_TERMS} words at a time.")
    return terms


class _EnglishTsVector(Func):
    """``to_tsvector('english', <text column>)``: the exact expression the GIN index
    of migration ``streams.0006`` is built on, so PostgreSQL can use that index."""

    template = "to_tsvector('english'::regconfig, %(expressions)s)"

    def __init__(self, column: str) -> None:
        from django.contrib.postgres.search import SearchVectorField

        super().__init__(F(column), output_field=SearchVectorField())


def _search_ranked(visible: QuerySet[Recording], terms: list[str]) -> QuerySet[Recording]:
    """``visible`` narrowed to the recordings whose transcript has every term, with a
    ``rank`` annotation, best first (newest first among equals)."""
    if connection.vendor == "postgresql":
        from django.contrib.postgres.search import SearchQuery, SearchRank

        # plainto_tsquery: every word must occur (stemmed: "gardens" finds "garden");
        # the words are passed as data, never as tsquery syntax.
        tsquery = SearchQuery(" ".join(terms), config="english", search_type="plain")
        vector = _EnglishTsVector("transcript_text")
        ranked = visible.annotate(found=vector).filter(found=tsquery)
        # Normalisation 1: rank / (1 + log(length)), so a long transcript that says a
        # word once does not outrank a short one about it (PostgreSQL §12.3.3).
        ranked = ranked.annotate(rank=SearchRank(vector, tsquery, normalization=Value(1)))
    else:
        # The plain fallback: each term at the start of a word, any case (SQLite's
        # REGEXP is Python's re, which Django provides); rank = occurrences.
        ranked = visible
        occurrences = []
        for term in terms:
            ranked = ranked.filter(transcript_text__iregex=rf"\b{re.escape(term)}")
            lowered = Lower("transcript_text")
            removed = Length(lowered) - Length(Replace(lowered, Value(term), Value("")))
            occurrences.append(Cast(removed, FloatField()) / Value(float(len(term))))
        rank = occurrences[0]
        for more in occurrences[1:]:
            rank = rank + more
        ranked = ranked.annotate(rank=rank)
    return ranked.order_by("-rank", "-started_at", "-id")


def _word_matches(word: str, term: str) -> bool:
    """Whether transcript ``word`` is (roughly) a form of search ``term``: the same
    word, one a prefix of the other ("run"/"running"), or a long shared stem
    ("studies"/"study"). Only used to point at a moment and highlight; which
    recordings match is the database's decision."""
    word = word.lower()
    if word == term:
        return True
    short, long = sorted((word, term), key=len)
    if len(short) >= 3 and long.startswith(short):
        return True
    common = len(short)
    for i, (a, b) in enumerate(zip(short, long, strict=False)):
        if a != b:
            common = i
            break
    return common >= max(4, len(short) - 2)


def _matched_words(text: str, terms: list[str]) -> list[tuple[int, int, str]]:
    """``(start, end, term)`` of the words of ``text`` outside masks matching a term."""
    masked = [(m.start(), m.end()) for m in _MASK.finditer(text)]
    found = []
    for m in _SEARCH_WORD.finditer(text):
        if any(a <= m.start() < b for a, b in masked):
            continue
        term = next((t for t in terms if _word_matches(m.group(), t)), None)
        if term is not None:
            found.append((m.start(), m.end(), term))
    return found


def _search_moment(
    cues: list[dict[str, object]], terms: list[str], *, width: int = 160
) -> tuple[float, str, list[tuple[int, int]]]:
    """Where in ``cues`` the terms are best heard: the cue with the most distinct
    matched terms (the earliest among equals), as ``(start_s, snippet, highlights)``;
    the snippet is that cue's text with neighbouring cues around it up to ``width``
    characters."""
    texts = [" ".join(str(c.get("text", "")).split()) for c in cues]
    scores = [len({t for _, _, t in _matched_words(text, terms)}) for text in texts]
    if not texts:
        return 0.0, "", []
    best = max(range(len(texts)), key=lambda i: (scores[i], -i))
    if scores[best] == 0:
        best = 0
    first = last = best
    length = len(texts[best])
    while first > 0 and length + len(texts[first - 1]) + 1 <= width // 3 + len(texts[best]):
        first -= 1
        length += len(texts[first]) + 1
    while last + 1 < len(texts) and length + len(texts[last + 1]) + 1 <= width:
        last += 1
        length += len(texts[last]) + 1
    snippet = " ".join(t for t in texts[first : last + 1] if t)
    if len(snippet) > width:  # one very long cue
        snippet = snippet[:width].rsplit(" ", 1)[0]
    lead = "… " if first > 0 else ""
    snippet = lead + snippet + (" …" if last + 1 < len(texts) else "")
    highlights = [(a, b) for a, b, _ in _matched_words(snippet, terms)] if scores[best] else []
    try:
        start_s = max(0.0, float(cues[best].get("start", 0.0)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        start_s = 0.0
    return start_s, snippet, highlights


def recording_search(
    *,
    user: User,
    query: str,
    owner_id: int | None = None,
    offset: int = 0,
    limit: int = 20,
) -> tuple[list[RecordingSearchHit], int | None]:
    """Search the redacted transcripts of the recordings ``user`` may see (their own
    and their friends', never those of a user either of them blocked).

    Every word of ``query`` must occur. On PostgreSQL this is full-text search
    (English stemming and stop words, ``ts_rank`` relevance, served by the GIN index
    of migration ``streams.0006``); elsewhere (SQLite) a plain case-insensitive
    match at word starts, ranked by how often the words occur. Only the masked
    text is searched (``Recording.transcript_text``): personal information never
    reached the database, and masks themselves are not searchable.

    Args:
        owner_id: Only this user's recordings (``user`` or a friend; anyone else
            gives no results).
        offset: Results to skip (0 to :data:`SEARCH_MAX_OFFSET`).
        limit: At most this many results (1 or more).

    Returns:
        The hits, best first, and the offset of the next page (None at the end).

    Raises:
        RecordingSearchError: an unusable query (see :func:`search_terms`) or offset.
    """
    terms = search_terms(query=query)
    if not 0 <= offset <= SEARCH_MAX_OFFSET:
        raise RecordingSearchError(f"Results can be paged up to {SEARCH_MAX_OFFSET} deep.")
    limit = max(1, limit)
    visible = (
        recording_list_visible(user=user)
        .exclude(owner_id__in=block_related_ids(user=user))
        .exclude(transcript_text="")
        .defer("peaks", "transcript_text")
    )
    if owner_id is not None:
        visible = visible.filter(owner_id=owner_id)
    page = list(_search_ranked(visible, terms)[offset : offset + limit + 1])
    more = len(page) > limit
    hits = []
    for recording in page[:limit]:
        cues = recording.transcript if isinstance(recording.transcript, list) else []
        start_s, snippet, highlights = _search_moment(
            [c for c in cues if isinstance(c, dict)], terms
        )
        hits.append(
            RecordingSearchHit(
                recording=recording,
                rank=float(recording.rank),
                start_s=start_s,
                snippet=snippet,
                highlights=highlights,
            )
        )
    return hits, (offset + limit if more else None)


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


def live_session_captioned(*, session_id: int) -> bool:
    """Whether session ``session_id`` sends live captions (``session.caption``): only a
    broadcast with "bleep personal information" on has the speech analysis that
    writes them, which ``live_session_start`` notes on its recording as
    ``processing["bleep_pii"]``. False when the session or its recording is gone."""
    processing = (
        Recording.objects.filter(session_id=session_id).values_list("processing", flat=True).first()
    )
    return bool(isinstance(processing, dict) and processing.get("bleep_pii"))


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
