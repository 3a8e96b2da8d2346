"""A bleeped recording's redacted transcript (WebVTT for friends) and its audit trail
(the owner's alone), and the services that store them."""

from __future__ import annotations

import pytest
from django.test import Client
from django.utils import timezone

from streams import services
from streams.models import LiveSession, RedactionEvent
from tests.factories import befriend, make_recording

pytestmark = pytest.mark.django_db

CUES = [
    {"start": 0.5, "end": 1.8, "text": "call me on [phone number]"},
    {"start": 2.0, "end": 2.9, "text": "see you --> soon"},
]


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def bleeped(alice):
    recording = make_recording(alice)
    session = LiveSession.objects.create(
        broadcaster=alice, owner_channel="w", heartbeat_at=recording.started_at
    )
    recording.session = session
    recording.save(update_fields=["session"])
    services.recording_transcript_set(session_id=session.id, cues=CUES)
    stored = services.redaction_events_add(
        session_id=session.id,
        events=[services.RedactionInput(0.9, 1.9, "PHONE_NUMBER", 0.7, "whisper-base")],
    )
    assert stored == 1
    return recording


def test_a_friend_gets_the_redacted_captions_as_webvtt(bleeped, alice, bob, carol) -> None:
    befriend(alice, bob)
    response = _client(bob).get(f"/recordings/{bleeped.id}/captions.vtt")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/vtt")
    body = response.content.decode()
    assert body.startswith("WEBVTT\n")
    assert "00:00:00.500 --> 00:00:01.800\ncall me on [phone number]" in body
    assert "see you → soon" in body  # a cue cannot end early with its own "-->"
    assert _client(carol).get(f"/recordings/{bleeped.id}/captions.vtt").status_code == 404


def test_only_the_owner_sees_the_redactions(bleeped, alice, bob) -> None:
    befriend(alice, bob)
    mine = _client(alice).get(f"/api/recordings/{bleeped.id}").json()
    assert mine["redactions"] == [
        {
            "start_s": 0.9,
            "end_s": 1.9,
            "entity": "PHONE_NUMBER",
            "confidence": 0.7,
            "detector": "whisper-base",
        }
    ]
    assert mine["transcript"] == CUES and mine["captions_url"].endswith("/captions.vtt")
    theirs = _client(bob).get(f"/api/recordings/{bleeped.id}").json()
    assert "redactions" not in theirs and theirs["transcript"] == CUES


def test_recordings_without_a_transcript_have_no_captions(alice) -> None:
    recording = make_recording(alice)
    assert _client(alice).get(f"/recordings/{recording.id}/captions.vtt").status_code == 404
    assert "captions_url" not in _client(alice).get(f"/api/recordings/{recording.id}").json()


def test_redactions_of_a_session_without_recording_are_not_stored(alice) -> None:
    session = LiveSession.objects.create(
        broadcaster=alice, owner_channel="w", heartbeat_at=timezone.now()
    )
    event = services.RedactionInput(0, 1, "PERSON", 0.9, "x")
    assert services.redaction_events_add(session_id=session.id, events=[event]) == 0
    assert RedactionEvent.objects.count() == 0
