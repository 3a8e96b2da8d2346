"""Hostile HTTP input (issue 9): oversized numbers, odd characters and probing of
usernames get a 4xx with a JSON message (or a harmless answer), never a 500 or a leak."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from streams import services as stream_services
from streams.http_range import RangeNotSatisfiable, range_parse
from tests.factories import befriend, make_recording
from users.models import User

pytestmark = pytest.mark.django_db

HUGE = "9" * 5000  # past Python's 4300-digit int-from-string limit


def login(user: User) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


# --- 10a: Range headers with huge numbers ----------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"bytes={HUGE}-", RangeNotSatisfiable),
        (f"bytes=0-{HUGE}", (0, 99)),
        (f"bytes=10-{HUGE}", (10, 99)),
        (f"bytes=-{HUGE}", (0, 99)),
        (f"bytes={'0' * 5000}5-9", (5, 9)),
        (f"bytes={HUGE}-{HUGE}", RangeNotSatisfiable),
    ],
)
def test_range_parse_huge_numbers(header, expected):
    if expected is RangeNotSatisfiable:
        with pytest.raises(RangeNotSatisfiable):
            range_parse(header, 100)
    else:
        assert range_parse(header, 100) == expected


@pytest.mark.parametrize(
    ("header", "status"),
    [(f"bytes={HUGE}-", 416), (f"bytes=0-{HUGE}", 206), (f"bytes=-{HUGE}", 206)],
)
def test_audio_huge_range_is_not_a_server_error(alice, header, status):
    recording = make_recording(alice)
    size = stream_services.recording_path(recording).stat().st_size
    response = login(alice).get(f"/recordings/{recording.id}/audio", HTTP_RANGE=header)
    assert response.status_code == status
    if status == 206:
        assert response["Content-Range"] == f"bytes 0-{size - 1}/{size}"
    else:
        assert response["Content-Range"] == f"bytes */{size}"
