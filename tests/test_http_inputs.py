"""Hostile HTTP input (issue 9): oversized numbers, odd characters and probing of
usernames get a 4xx with a JSON message (or a harmless answer), never a 500 or a leak."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from streams import services as stream_services
from streams.http_range import RangeNotSatisfiable, range_parse
from tests.factories import make_recording, make_user
from users.models import FriendRequest, User

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


# --- 10b: ids too big for the database in URLs -----------------------------------------

BIG_ID = "1" + "0" * 29  # 30 digits: past SQLite's and PostgreSQL's 64-bit integers


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", f"/api/recordings/{BIG_ID}"),
        ("patch", f"/api/recordings/{BIG_ID}"),
        ("delete", f"/api/recordings/{BIG_ID}"),
        ("get", f"/recordings/{BIG_ID}/audio"),
        ("post", f"/api/friends/requests/{BIG_ID}/accept"),
        ("post", f"/api/friends/{BIG_ID}/unfriend"),
    ],
)
def test_api_id_too_big_is_json_404(alice, method, url):
    client = login(alice)
    response = client.generic(method.upper(), url, "{}", content_type="application/json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]


def test_page_id_too_big_is_404(alice, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    response = login(alice).get(f"/listen/{BIG_ID}/")
    assert response.status_code == 404


def test_largest_database_id_still_routes(alice):
    # 2**63 - 1 fits the database: it is looked up (and not found), not refused.
    response = login(alice).get(f"/api/recordings/{2**63 - 1}")
    assert response.status_code == 404
    assert response.json() == {"error": "No such recording."}


def test_unknown_api_url_is_json_404(alice):
    response = login(alice).get("/api/recordings/12abc")
    assert response.status_code == 404
    assert response.json() == {"error": "Not found."}


# --- 10c: NUL, control characters and lone surrogates in stored text ---------------------


@pytest.mark.parametrize("title", ["bad\x00title", "bad\ud800title", "tab\there", "\x1b[31mred"])
def test_recording_title_with_unsafe_characters_is_400(alice, title):
    recording = make_recording(alice)
    before = recording.title
    # json.dumps writes a lone surrogate as the escape "\ud800", as a hostile client may.
    response = login(alice).patch(
        f"/api/recordings/{recording.id}", json.dumps({"title": title}), "application/json"
    )
    assert response.status_code == 400
    assert "character" in response.json()["error"]
    recording.refresh_from_db()
    assert recording.title == before


def test_recording_title_with_ordinary_unicode_is_kept(alice):
    recording = make_recording(alice)
    response = login(alice).patch(
        f"/api/recordings/{recording.id}", {"title": "Café – 日本 🎵"}, "application/json"
    )
    assert response.status_code == 200
    assert response.json()["title"] == "Café – 日本 🎵"


@pytest.mark.parametrize("username", ["bob\x00", "\ud800", "b\nob"])
def test_friend_request_username_with_unsafe_characters_is_400(alice, bob, username):
    response = login(alice).post(
        "/api/friends/requests", json.dumps({"username": username}), "application/json"
    )
    assert response.status_code == 400
    assert "character" in response.json()["error"]
    assert not FriendRequest.objects.exists()


# --- 11: user search and friend requests do not reveal who exists ------------------------


def test_friend_request_to_unknown_or_inactive_user_reveals_nothing(alice):
    make_user("ghost", is_active=False)
    client = login(alice)
    answers = []
    for name in ("nobody", "ghost"):
        response = client.post("/api/friends/requests", {"username": name}, "application/json")
        assert response.status_code == 400
        assert name not in response.json()["error"]
        answers.append(response.json())
    assert answers[0] == answers[1]
    assert not FriendRequest.objects.exists()


@pytest.mark.parametrize("query", ["a", " b ", "é"])
def test_search_needs_two_characters(alice, bob, query):
    response = login(alice).get("/api/users/search", {"q": query})
    assert response.status_code == 400
    assert "at least 2 characters" in response.json()["error"]


def test_search_with_two_characters_finds_users(alice, bob):
    response = login(alice).get("/api/users/search", {"q": "bo"})
    assert response.status_code == 200
    assert [u["username"] for u in response.json()["users"]] == ["bob"]


@pytest.mark.parametrize("query", ["\x00", "\x00\x00", "bo\x00", "b\tb", "bo\x7f"])
def test_search_with_control_characters_is_400(alice, bob, query):
    response = login(alice).get("/api/users/search", {"q": query})
    assert response.status_code == 400
    assert "character" in response.json()["error"]


# --- 11d: look-alike usernames at sign-up ------------------------------------------------

PASSWORD = "correct-horse-battery-9"


def signup_form(username: str):
    from users.forms import SignupForm

    return SignupForm({"username": username, "password1": PASSWORD, "password2": PASSWORD})


@pytest.mark.parametrize(
    "username",
    [
        "\u0430lice",  # Cyrillic а + Latin lice: mixes scripts, and looks like alice
        "\u0430\u0440\u0435",  # all Cyrillic, looks like Latin "ape"
        "zo\u00eb",  # any non-ASCII letter
        "\u03b1lpha",  # Greek alpha
    ],
)
def test_signup_refuses_non_ascii_usernames(username):
    form = signup_form(username)
    assert not form.is_valid()
    assert "ASCII" in " ".join(form.errors["username"])


@pytest.mark.parametrize("username", ["aIice", "a1ice", "AIice", "b0b", "rnallory", "maIIory"])
def test_signup_refuses_username_that_looks_like_an_existing_one(alice, bob, username):
    make_user("mallory")
    form = signup_form(username)
    assert not form.is_valid()
    assert "looks too much like" in " ".join(form.errors["username"])


def test_signup_normalises_fullwidth_username_to_existing_one(alice):
    form = signup_form("\uff41\uff4c\uff49\uff43\uff45")  # fullwidth "alice": NFKC → alice
    assert not form.is_valid()
    assert User.objects.count() == 1


@pytest.mark.parametrize("username", ["alicia", "ali", "al.ice2", "bobby"])
def test_signup_accepts_distinct_ascii_usernames(alice, bob, username):
    form = signup_form(username)
    assert form.is_valid(), form.errors
    assert form.save().username == username


def test_signup_page_refuses_look_alike(client, alice, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    response = client.post(
        "/signup/", {"username": "\u0430lice", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert response.status_code == 200  # the form again, with the error
    assert "Use only ASCII letters" in response.content.decode()
    assert User.objects.count() == 1
