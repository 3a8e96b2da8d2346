"""The recording page, its API (pages of the list, friend filter, peaks), downloads
named after the title, and the page an ended broadcast's link leads to."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from streams import services
from streams.models import LiveSession, Recording
from streams.views import content_disposition_attachment, download_stem
from streams.when import when_label
from tests.factories import befriend, go_live, make_recording, make_user
from users.models import User

pytestmark = pytest.mark.django_db

RATE = 48_000


@pytest.fixture(autouse=True)
def _plain_static_storage(settings) -> None:
    # As tests/test_pages.py: no collectstatic manifest in tests with DEBUG off.
    settings.STATIC_ROOT = None
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def body(response) -> bytes:
    from tests.test_api import body as collect

    return collect(response)


def compressed(recording: Recording) -> Recording:
    """``recording`` stored as Ogg/Opus, as production leaves it."""
    from django.conf import settings

    settings.HEARTH = {**settings.HEARTH, "RECORDING_COMPRESS": True}
    try:
        row = services.recording_compress(recording_id=recording.id, writer_closed=True)
    finally:
        settings.HEARTH = {**settings.HEARTH, "RECORDING_COMPRESS": False}
    assert row is not None
    return row


# --- The list: pages and the friend filter -------------------------------------------


def test_the_list_comes_in_pages_that_follow_each_other(alice, bob):
    befriend(alice, bob)
    made = [make_recording(alice if i % 2 else bob, age_s=10 * i) for i in range(7)]
    # Two with the very same start: the cursor must still neither skip nor repeat one.
    Recording.objects.filter(id=made[4].id).update(started_at=made[3].started_at)
    client = login(alice)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        query = {"limit": 3, **({"before": cursor} if cursor else {})}
        data = client.get("/api/recordings", query).json()
        seen += [r["id"] for r in data["recordings"]]
        pages += 1
        cursor = data["next"]
        if cursor is None:
            break
    assert pages == 3
    expected = list(Recording.objects.order_by("-started_at", "-id").values_list("id", flat=True))
    assert seen == expected and len(set(seen)) == 7


def test_the_default_page_size_and_its_end(alice, settings):
    settings.HEARTH = {**settings.HEARTH, "RECORDINGS_PAGE_SIZE": 2}
    for age in (1, 2):
        make_recording(alice, age_s=age)
    data = login(alice).get("/api/recordings").json()
    assert len(data["recordings"]) == 2 and data["next"] is None
    make_recording(alice, age_s=3)
    data = login(alice).get("/api/recordings").json()
    assert len(data["recordings"]) == 2 and data["next"]


def test_filter_by_friend_or_self(alice, bob, carol):
    befriend(alice, bob)
    befriend(alice, carol)
    mine, bobs, carols = make_recording(alice), make_recording(bob), make_recording(carol)
    client = login(alice)

    def ids(owner: User) -> list[int]:
        response = client.get("/api/recordings", {"owner": owner.id})
        assert response.status_code == 200
        return [r["id"] for r in response.json()["recordings"]]

    assert ids(bob) == [bobs.id]
    assert ids(carol) == [carols.id]
    assert ids(alice) == [mine.id]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"owner": "x"}, "owner must be a user id."),
        ({"owner": "²"}, "owner must be a user id."),
        ({"owner": "9" * 30}, "owner must be a user id."),
        ({"before": "yesterday"}, "Bad page cursor."),
        ({"before": "9" * 30 + ".1"}, "Bad page cursor."),
        ({"limit": "0"}, "limit must be a number from 1 to 100."),
        ({"limit": "101"}, "limit must be a number from 1 to 100."),
        ({"limit": "-1"}, "limit must be a number from 1 to 100."),
    ],
)
def test_bad_list_queries_are_400_json(alice, query, message):
    response = login(alice).get("/api/recordings", query)
    assert response.status_code == 400
    assert response.json() == {"error": message}


def test_filtering_by_a_stranger_is_refused(alice, carol):
    make_recording(carol)
    response = login(alice).get("/api/recordings", {"owner": carol.id})
    assert response.status_code == 400
    assert "friends" in response.json()["error"]


# --- One recording: JSON with peaks, audio, download ----------------------------------


def test_detail_has_the_waveform_before_and_after_compression(alice):
    recording = make_recording(alice, frames=RATE)
    data = login(alice).get(f"/api/recordings/{recording.id}").json()
    assert data["format"] == "wav" and len(data["peaks"]) == 2000
    assert data["started_label"] == when_label(recording.started_at)
    before = data["peaks"]
    compressed(recording)
    data = login(alice).get(f"/api/recordings/{recording.id}").json()
    assert data["format"] == "opus" and data["peaks"] == before
    assert data["audio_url"] == f"/recordings/{recording.id}/audio?v=opus"
    # The list leaves the peaks out.
    assert "peaks" not in login(alice).get("/api/recordings").json()["recordings"][0]


def test_peaks_read_from_an_uncompressed_wav_are_kept_for_next_time(alice):
    recording = make_recording(alice, frames=RATE)
    url = f"/api/recordings/{recording.id}"
    first = login(alice).get(url).json()["peaks"]
    recording.refresh_from_db()
    assert recording.peaks == []  # written just now: a slow owner may still add to it
    old = time.time() - django_settings.HEARTH["SESSION_STALE_S"] - 5
    os.utime(services.recording_path(recording), (old, old))
    assert login(alice).get(url).json()["peaks"] == first
    recording.refresh_from_db()
    assert recording.peaks == first and len(first) == 2000


def test_a_live_recording_has_no_peaks_yet(alice):
    recording = make_recording(alice, ended=False)
    assert login(alice).get(f"/api/recordings/{recording.id}").json()["peaks"] == []


def test_compressed_audio_is_served_as_ogg_with_ranges(alice, bob):
    befriend(alice, bob)
    recording = compressed(make_recording(alice, frames=RATE))
    data = services.recording_path(recording).read_bytes()
    response = login(bob).get(f"/recordings/{recording.id}/audio")
    assert response.status_code == 200
    assert response["Content-Type"] == "audio/ogg"
    assert body(response) == data and data[:4] == b"OggS"
    part = login(bob).get(f"/recordings/{recording.id}/audio", HTTP_RANGE="bytes=10-19")
    assert part.status_code == 206 and body(part) == data[10:20]


def test_download_is_named_after_the_title(alice, bob):
    befriend(alice, bob)
    recording = compressed(make_recording(alice, frames=RATE))
    Recording.objects.filter(id=recording.id).update(title="Café night · Sat 21 Nov, 19:30")
    response = login(bob).get(f"/recordings/{recording.id}/download")
    assert response.status_code == 200
    assert response["Content-Type"] == "audio/ogg"
    name = "Café night · Sat 21 Nov, 19.30.ogg"
    assert response["Content-Disposition"] == (
        'attachment; filename="Cafe night Sat 21 Nov, 19.30.ogg"; '
        f"filename*=UTF-8''{quote(name, safe='')}"
    )
    assert body(response) == services.recording_path(recording).read_bytes()


def test_a_wav_download_gets_the_wav_extension(alice):
    recording = make_recording(alice)
    response = login(alice).get(f"/recordings/{recording.id}/download")
    assert response["Content-Type"] == "audio/wav"
    assert 'filename="alice rec.wav"' in response["Content-Disposition"]


def test_download_access_and_state(alice, bob, carol, client):
    befriend(alice, bob)
    live = make_recording(alice, ended=False)
    done = make_recording(alice)
    assert client.get(f"/recordings/{done.id}/download").status_code == 401
    stranger = login(carol).get(f"/recordings/{done.id}/download")
    assert stranger.status_code == 404 and stranger.json() == {"error": "No such recording."}
    in_progress = login(bob).get(f"/recordings/{live.id}/download")
    assert in_progress.status_code == 409 and "in progress" in in_progress.json()["error"]
    assert login(alice).post(f"/recordings/{done.id}/download").status_code in (403, 405)
    missing = login(alice).get("/recordings/99999999999999999999999/download")
    assert missing.status_code == 404 and missing.json() == {"error": "Not found."}


@pytest.mark.parametrize(
    ("title", "stem"),
    [
        ("alice · Sat 21 Nov, 19:30", "alice · Sat 21 Nov, 19.30"),
        ('a/b\\c*d?e"f<g>h|i', "a-b-c-d-e-f-g-h-i"),
        ("  ..hidden..  ", "hidden"),
        ("...", "hearth-recording-7"),
        ("x" * 300, "x" * 100),
        ("tab\tand  spaces", "tab and spaces"),
    ],
)
def test_download_stem(title, stem):
    assert download_stem(title, 7) == stem


def test_content_disposition_has_an_ascii_fallback():
    header = content_disposition_attachment("日本.ogg")
    assert header == (
        "attachment; filename=\"recording.ogg\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.ogg"
    )
    assert content_disposition_attachment('say "hi".wav').startswith(
        'attachment; filename="say -hi-.wav"'
    )


# --- Pages ------------------------------------------------------------------------------


def test_the_recording_page_for_owner_friend_and_stranger(alice, bob, carol, client):
    befriend(alice, bob)
    recording = make_recording(alice)
    url = f"/recordings/{recording.id}/"
    own = login(alice).get(url)
    assert own.status_code == 200
    html = own.content.decode()
    assert 'id="waveform"' in html and 'id="rename-button"' in html
    assert 'id="delete-button"' in html and 'id="recording-data"' in html
    assert f'href="/recordings/{recording.id}/download"' in html
    friend = login(bob).get(url)
    assert friend.status_code == 200
    assert 'id="rename-button"' not in friend.content.decode()
    stranger = login(carol).get(url)
    assert stranger.status_code == 404
    assert stranger["Content-Type"].startswith("text/html")  # the page, not JSON
    assert login(alice).get("/recordings/99999/").status_code == 404
    assert client.get(url).status_code == 302  # to the login page


def test_the_recordings_page_offers_the_friends_as_a_filter(alice, bob, carol):
    befriend(alice, bob)
    befriend(alice, carol)
    carol.display_name = "Carol C."
    carol.save()
    make_user("dave")  # not a friend
    html = login(alice).get("/recordings/").content.decode()
    assert f'<option value="{bob.id}">bob</option>' in html
    assert f'<option value="{carol.id}">Carol C.</option>' in html  # the display name
    assert "dave" not in html


def test_the_recording_page_names_the_owner_by_display_name(alice, bob):
    befriend(alice, bob)
    recording = make_recording(alice)
    url = f"/recordings/{recording.id}/"
    owner = '<span id="recording-owner" title="alice">'
    assert f"{owner}alice</span>" in login(bob).get(url).content.decode()  # no display name
    alice.display_name = "Alice Liddell"
    alice.save()
    assert f"{owner}Alice Liddell</span>" in login(bob).get(url).content.decode()
    assert f"{owner}You</span>" in login(alice).get(url).content.decode()
    listed = login(bob).get("/api/recordings").json()["recordings"][0]["owner"]
    assert listed["display_name"] == "Alice Liddell" and listed["username"] == "alice"


def ended_session(user: User, *, keep: bool = True) -> LiveSession:
    session = go_live(user)
    session.ended_at = timezone.now()
    session.end_reason = "stopped"
    session.save()
    if keep:
        recording = make_recording(user)
        Recording.objects.filter(id=recording.id).update(session=session)
    return session


def test_an_ended_broadcast_link_leads_to_its_recording(alice, bob):
    befriend(alice, bob)
    session = ended_session(alice)
    recording = Recording.objects.get(session=session)
    response = login(bob).get(f"/listen/{session.id}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "alice's broadcast has ended — " in html
    assert f'<a href="/recordings/{recording.id}/" id="replay-link">replay it</a>' in html
    own = login(alice).get(f"/listen/{session.id}/").content.decode()
    assert "Your broadcast has ended" in own


def test_an_ended_broadcast_without_recording_or_for_a_stranger_is_404(alice, bob, carol):
    befriend(alice, bob)
    kept = ended_session(alice)
    LiveSession.objects.filter(id=kept.id).update(started_at=timezone.now() - timedelta(hours=1))
    assert login(carol).get(f"/listen/{kept.id}/").status_code == 404
    dropped = ended_session(bob, keep=False)
    response = login(alice).get(f"/listen/{dropped.id}/")
    assert response.status_code == 404
    assert "Not found" in response.content.decode()
    assert login(alice).get("/listen/99999/").status_code == 404
