"""Searching the redacted transcripts of one's own and friends' recordings: who may find
what, ranking, the moment a result points at, masks, input errors, and the JSON API.

Runs on SQLite (the plain fallback) and, in CI's second pass, on PostgreSQL (full-text
search with its GIN index); the assertions hold for both."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from streams import selectors, services
from streams.models import LiveSession, Recording
from streams.selectors import RecordingSearchError, recording_search
from tests.factories import befriend, make_recording
from users import services as user_services

pytestmark = pytest.mark.django_db


def _transcribed(owner, cues: list[dict], *, age_s: float = 0, title: str = "") -> Recording:
    """A finished recording of ``owner`` whose transcript was stored the way a
    bleeped broadcast stores it (through its session)."""
    recording = make_recording(owner, age_s=age_s)
    session = LiveSession.objects.create(
        broadcaster=owner,
        owner_channel="w",
        heartbeat_at=recording.started_at,
        ended_at=timezone.now(),
    )
    recording.session = session
    if title:
        recording.title = title
    recording.save(update_fields=["session", "title"])
    services.recording_transcript_set(session_id=session.id, cues=cues)
    recording.refresh_from_db()
    return recording


def _said(*texts: str, step: float = 1.5) -> list[dict]:
    """Cues one per text, ``step`` seconds apart from 0."""
    return [
        {"start": round(i * step, 2), "end": round(i * step + 1.2, 2), "text": text}
        for i, text in enumerate(texts)
    ]


def _ids(hits) -> list[int]:
    return [hit.recording.id for hit in hits]


def test_own_and_friends_recordings_are_found_strangers_and_blocked_ones_not(
    alice, bob, carol
) -> None:
    from tests.factories import make_user

    dave = make_user("dave")
    befriend(alice, bob)
    befriend(alice, dave)
    mine = _transcribed(alice, _said("the tomato seedlings are up"))
    friends = _transcribed(bob, _said("my tomato plants died"), age_s=60)
    stranger = _transcribed(carol, _said("tomato soup tonight"))
    blocked = _transcribed(dave, _said("tomato season again"))
    hits, _ = recording_search(user=alice, query="tomato")
    assert set(_ids(hits)) == {mine.id, friends.id, blocked.id}
    # Blocking ends the friendship; the blocked user's recordings drop out of search
    # for both sides.
    user_services.block_create(user=alice, blocked_id=dave.id)
    hits, _ = recording_search(user=alice, query="tomato")
    assert set(_ids(hits)) == {mine.id, friends.id}
    assert stranger.id not in _ids(recording_search(user=bob, query="tomato")[0])
    assert _ids(recording_search(user=dave, query="tomato")[0]) == [blocked.id]
    # Filtered by owner.
    assert _ids(recording_search(user=alice, query="tomato", owner_id=bob.id)[0]) == [friends.id]


def test_every_word_must_occur_any_case_and_word_forms_match(alice) -> None:
    both = _transcribed(alice, _said("Gardening in the rain", "with my neighbour"))
    _transcribed(alice, _said("gardening in the sun"))
    assert _ids(recording_search(user=alice, query="GARDEN rain")[0]) == [both.id]
    assert _ids(recording_search(user=alice, query="neighbour rain")[0]) == [both.id]
    assert recording_search(user=alice, query="gardening snow")[0] == []
    # "rain" is not a word start of "terrain"/"brain" and must not match inside words.
    _transcribed(alice, _said("the brain of the terrain"))
    assert _ids(recording_search(user=alice, query="rain")[0]) == [both.id]


def test_results_are_ranked_by_how_much_they_are_about_the_words(alice) -> None:
    once = _transcribed(
        alice,
        _said("we talked about the weather", "then the bicycle", "and then the weekend plans"),
    )
    often = _transcribed(
        alice, _said("bicycle repair", "a bicycle chain", "bicycle lights"), age_s=3600
    )
    hits, _ = recording_search(user=alice, query="bicycle")
    assert _ids(hits) == [often.id, once.id]  # the older one, but about bicycles
    assert hits[0].rank > hits[1].rank


def test_a_hit_points_at_the_moment_and_highlights_the_words(alice) -> None:
    recording = _transcribed(
        alice,
        _said(
            "good morning everyone",
            "today I want to talk",
            "about the lighthouse keeper",
            "who lived on the island",
        ),
    )
    (hit,) = recording_search(user=alice, query="lighthouse")[0]
    assert hit.recording.id == recording.id
    assert hit.start_s == 3.0  # the third cue
    assert "about the lighthouse keeper" in hit.snippet
    assert [hit.snippet[a:b] for a, b in hit.highlights] == ["lighthouse"]
    # With two words, the cue holding both wins over one holding one.
    (hit,) = recording_search(user=alice, query="island lived")[0]
    assert hit.start_s == 4.5
    assert sorted(hit.snippet[a:b] for a, b in hit.highlights) == ["island", "lived"]


def test_masks_are_not_searchable_and_nothing_raw_is_stored(alice) -> None:
    recording = _transcribed(
        alice, _said("call me on [phone number] tomorrow", "I live at [address] […]")
    )
    assert "[" not in recording.transcript_text
    assert recording.transcript_text == "call me on tomorrow\nI live at"
    for query in ("phone number", "phone", "address", "number"):
        assert recording_search(user=alice, query=query)[0] == [], query
    (hit,) = recording_search(user=alice, query="tomorrow")[0]
    assert "[phone number]" in hit.snippet  # shown as the mask it is
    assert [hit.snippet[a:b] for a, b in hit.highlights] == ["tomorrow"]


def test_recordings_without_a_transcript_are_never_hits(alice) -> None:
    make_recording(alice)
    assert recording_search(user=alice, query="anything")[0] == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "Type a word"),
        ("   ", "Type a word"),
        ("x" * 101, "at most 100 characters"),
        ("tomato\x00soup", "control characters"),
        ("?!…", "words or numbers"),
        ("one two three four five six seven eight nine", "at most 8 words"),
    ],
)
def test_unusable_queries_are_refused(alice, query: str, message: str) -> None:
    with pytest.raises(RecordingSearchError, match=message):
        recording_search(user=alice, query=query)


def test_pages_follow_on(alice) -> None:
    made = [_transcribed(alice, _said("otters again"), age_s=i * 60) for i in range(3)]
    first, after = recording_search(user=alice, query="otters", limit=2)
    assert after == 2
    rest, end = recording_search(user=alice, query="otters", offset=after, limit=2)
    assert end is None
    assert _ids(first) + _ids(rest) == [r.id for r in made]  # equal rank: newest first
    with pytest.raises(RecordingSearchError):
        recording_search(user=alice, query="otters", offset=selectors.SEARCH_MAX_OFFSET + 1)


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_search_api_answers_hits_with_a_link_to_the_moment(alice, bob) -> None:
    befriend(alice, bob)
    recording = _transcribed(
        bob, _said("hello", "the harbour was <b>busy</b>"), title="Bob's <walk>"
    )
    data = _client(alice).get("/api/recordings/search", {"q": "harbour"}).json()
    assert data["next"] is None
    (result,) = data["results"]
    assert result["recording"]["id"] == recording.id
    assert result["recording"]["title"] == "Bob's <walk>"
    assert result["recording"]["owner"]["username"] == "bob"
    assert result["recording"]["started_label"]
    assert result["start_s"] == 1.5
    assert result["url"] == f"/recordings/{recording.id}/?t=1.5"
    assert result["snippet"] == "hello the harbour was <b>busy</b>"  # text, not HTML
    assert [result["snippet"][a:b] for a, b in result["highlights"]] == ["harbour"]

    page = _client(alice).get("/api/recordings/search", {"q": "harbour", "limit": "1"}).json()
    assert page["next"] is None and len(page["results"]) == 1
    own_only = _client(alice).get("/api/recordings/search", {"q": "harbour", "owner": alice.id})
    assert own_only.json()["results"] == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "Type a word"),
        ({"q": "y" * 101}, "at most 100 characters"),
        ({"q": "harbour", "after": "x"}, "Bad page cursor"),
        ({"q": "harbour", "after": "5000"}, "paged up to"),
        ({"q": "harbour", "limit": "0"}, "limit must be"),
        ({"q": "harbour", "owner": "abc"}, "owner must be"),
    ],
)
def test_the_search_api_refuses_bad_input_with_a_json_400(alice, params, message) -> None:
    response = _client(alice).get("/api/recordings/search", params)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_the_search_api_needs_a_signed_in_user_and_a_friends_owner(alice, carol) -> None:
    assert Client().get("/api/recordings/search", {"q": "x"}).status_code == 401
    response = _client(alice).get("/api/recordings/search", {"q": "x", "owner": carol.id})
    assert response.status_code == 400


def test_the_postgresql_search_uses_its_gin_index_and_sqlite_has_none(alice) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = "
                "'streams_recording_transcript_fts'"
            )
            (indexdef,) = cursor.fetchone()
            assert "gin" in indexdef.lower() and "to_tsvector" in indexdef
            _transcribed(alice, _said("kingfisher by the river"))
            cursor.execute("SET enable_seqscan = off")
            try:
                hits = recording_search(user=alice, query="kingfisher")[0]
                assert len(hits) == 1
                queryset = selectors._search_ranked(Recording.objects.all(), ["kingfisher"])
                plan = queryset.explain()
            finally:
                cursor.execute("RESET enable_seqscan")
            assert "streams_recording_transcript_fts" in plan, plan
        else:
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE name = 'streams_recording_transcript_fts'"
            )
            assert cursor.fetchone() is None


def test_search_text_is_derived_from_the_cues(alice) -> None:
    text = services.transcript_search_text(
        cues=[{"text": "  [name] said  hi "}, {"text": "[…]"}, {"text": "[Music] bye"}]
    )
    assert text == "said hi\nbye"


def test_older_recordings_rank_below_newer_ones_with_the_same_words(alice) -> None:
    old = _transcribed(alice, _said("pancakes"), age_s=7200)
    new = _transcribed(alice, _said("pancakes"))
    assert old.started_at < new.started_at - timedelta(hours=1)
    assert _ids(recording_search(user=alice, query="pancakes")[0]) == [new.id, old.id]
