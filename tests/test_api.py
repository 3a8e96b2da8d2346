"""The JSON API (friends, live sessions, recordings), recording audio with Range, /health."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.utils import timezone

from streams import services as stream_services
from streams.http_range import RangeNotSatisfiable, range_parse
from streams.models import LiveSession, Recording
from streams.when import when_label
from tests.factories import befriend, go_live, make_recording, make_user
from users.models import FriendRequest, Friendship, PresenceConnection, User

pytestmark = pytest.mark.django_db

FRAMES = 1500  # 16-bit mono: 44-byte header + 3000 bytes of audio


# --- Helpers -------------------------------------------------------------------------


def body(response) -> bytes:
    """All bytes of a (possibly streaming, possibly async) response."""
    if not response.streaming:
        return response.content
    content = response.streaming_content
    if hasattr(content, "__aiter__"):

        async def collect() -> bytes:
            return b"".join([chunk async for chunk in content])

        return async_to_sync(collect)()
    return b"".join(content)


@pytest.fixture
def as_alice(client, alice) -> Client:
    client.force_login(alice)
    return client


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post_json(client: Client, url: str, data: object = None, **extra):
    payload = data if isinstance(data, str | bytes) else json.dumps(data or {})
    return client.post(url, payload, content_type="application/json", **extra)


# --- Common API behaviour ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/users/search?q=a"),
        ("get", "/api/friends"),
        ("post", "/api/friends/requests"),
        ("post", "/api/friends/requests/1/accept"),
        ("post", "/api/friends/1/unfriend"),
        ("get", "/api/live"),
        ("get", "/api/recordings"),
        ("get", "/api/recordings/1"),
        ("patch", "/api/recordings/1"),
        ("delete", "/api/recordings/1"),
    ],
)
def test_signed_out_gets_401_json(client, method, url):
    response = getattr(client, method)(url, content_type="application/json")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "Sign in first."}


@pytest.mark.parametrize(
    ("method", "url", "allow"),
    [
        ("post", "/api/friends", "GET"),
        ("get", "/api/friends/requests", "POST"),
        ("get", "/api/friends/requests/1/accept", "POST"),
        ("put", "/api/friends/1/unfriend", "POST"),
        ("post", "/api/live", "GET"),
        ("delete", "/api/users/search", "GET"),
        ("post", "/api/recordings/1", "GET, PATCH, DELETE"),
    ],
)
def test_wrong_method_gets_405_with_allow(as_alice, method, url, allow):
    response = getattr(as_alice, method)(url)
    assert response.status_code == 405
    assert response["Allow"] == allow
    assert "error" in response.json()


def test_post_without_csrf_token_is_forbidden(alice, bob):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = post_json(client, "/api/friends/requests", {"username": "bob"})
    assert response.status_code == 403
    assert not FriendRequest.objects.exists()
    # With a CSRF cookie and the matching header the same request goes through.
    client.cookies["csrftoken"] = "a" * 32
    response = post_json(
        client, "/api/friends/requests", {"username": "bob"}, HTTP_X_CSRFTOKEN="a" * 32
    )
    assert response.status_code == 201


def csrf_client(user: User) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_recording_patch_and_delete_need_csrf_token(alice, settings):
    # The page rendered below needs no collectstatic manifest with plain storage.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    recording = make_recording(alice)
    url = f"/api/recordings/{recording.id}"
    client = csrf_client(alice)
    response = client.patch(url, {"title": "Renamed"}, content_type="application/json")
    assert response.status_code == 403
    assert client.delete(url, content_type="application/json").status_code == 403
    recording.refresh_from_db()
    assert recording.title == "alice rec"

    # A page (here the recordings page) sets the csrftoken cookie; the API's scripts
    # send it back in the X-CSRFToken header.
    assert client.get("/recordings/").status_code == 200
    token = client.cookies["csrftoken"].value
    response = client.patch(
        url, {"title": "Renamed"}, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 200
    assert response.json()["title"] == "Renamed"
    wrong = client.delete(url, content_type="application/json", HTTP_X_CSRFTOKEN="b" * 32)
    assert wrong.status_code == 403
    response = client.delete(url, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 204
    assert not Recording.objects.exists()


@pytest.mark.parametrize("payload", ["{not json", b"\xff\xfe", "[1, 2]", '"bob"', "null"])
def test_bad_json_body_is_400(as_alice, bob, payload):
    response = post_json(as_alice, "/api/friends/requests", payload)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert not FriendRequest.objects.exists()


def test_oversized_body_is_413(as_alice, bob):
    payload = json.dumps({"username": "bob", "padding": "x" * (16 * 1024)})
    response = post_json(as_alice, "/api/friends/requests", payload)
    assert response.status_code == 413
    assert "error" in response.json()
    assert not FriendRequest.objects.exists()


# --- Friends -------------------------------------------------------------------------


def test_user_search_relations(as_alice, alice, bob, carol):
    dave, erin = make_user("dave"), make_user("erin")
    befriend(alice, bob)
    FriendRequest.objects.create(from_user=carol, to_user=alice)
    FriendRequest.objects.create(from_user=alice, to_user=dave)
    response = as_alice.get("/api/users/search", {"q": ""})
    assert response.json() == {"users": []}
    relations = {}
    for user in (alice, bob, carol, dave, erin):
        found = as_alice.get("/api/users/search", {"q": user.username.upper()}).json()["users"]
        relations[user.username] = [(u["id"], u["username"], u["relation"]) for u in found]
    assert relations == {
        "alice": [],
        "bob": [(bob.id, "bob", "friend")],
        "carol": [(carol.id, "carol", "incoming")],
        "dave": [(dave.id, "dave", "outgoing")],
        "erin": [(erin.id, "erin", "none")],
    }


def test_friend_list_shape(as_alice, alice, bob, carol):
    dave, erin, frank = make_user("dave"), make_user("erin"), make_user("frank")
    befriend(alice, bob)
    befriend(alice, carol)
    befriend(alice, dave)
    bob.display_name = "Bob B."
    bob.save()
    PresenceConnection.objects.create(user=bob, channel_name="b", last_seen=timezone.now())
    PresenceConnection.objects.create(
        user=dave, channel_name="d", last_seen=timezone.now() - timedelta(hours=1)
    )
    PresenceConnection.objects.create(user=erin, channel_name="e", last_seen=timezone.now())
    session = go_live(carol)
    go_live(erin)
    incoming = FriendRequest.objects.create(from_user=erin, to_user=alice)
    outgoing = FriendRequest.objects.create(from_user=alice, to_user=frank)
    data = as_alice.get("/api/friends").json()
    assert data["friends"] == [
        {
            "id": bob.id,
            "username": "bob",
            "display_name": "Bob B.",
            "avatar_url": None,
            "online": True,
            "live": None,
        },
        {
            "id": carol.id,
            "username": "carol",
            "display_name": "",
            "avatar_url": None,
            "online": False,
            "live": {"session_id": session.id, "started_at": session.started_at.isoformat()},
        },
        {
            "id": dave.id,
            "username": "dave",
            "display_name": "",
            "avatar_url": None,
            "online": False,
            "live": None,
        },
    ]
    assert data["incoming"] == [
        {
            "id": incoming.id,
            "user": {"id": erin.id, "username": "erin", "display_name": "", "avatar_url": None},
            "created_at": incoming.created_at.isoformat(),
        }
    ]
    assert data["outgoing"] == [
        {
            "id": outgoing.id,
            "user": {"id": frank.id, "username": "frank", "display_name": "", "avatar_url": None},
            "created_at": outgoing.created_at.isoformat(),
        }
    ]


def test_friend_request_create(as_alice, alice, bob, carol):
    response = post_json(as_alice, "/api/friends/requests", {"username": "Bob"})
    assert response.status_code == 201
    assert response.json() == {"status": "requested", "message": "Friend request sent."}
    assert FriendRequest.objects.filter(from_user=alice, to_user=bob).exists()

    FriendRequest.objects.create(from_user=carol, to_user=alice)
    response = post_json(as_alice, "/api/friends/requests", {"username": "carol"})
    assert response.status_code == 201
    assert response.json() == {"status": "accepted", "message": "You are now friends."}
    assert Friendship.objects.count() == 1
    assert not FriendRequest.objects.filter(from_user=carol).exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "Give the username"),
        ({"username": "  "}, "Give the username"),
        ({"username": 42}, "Give the username"),
        ({"username": "nobody"}, "Could not send a friend request to that username"),
        ({"username": "alice"}, "yourself"),
        ({"username": "bob"}, "already asked"),
        ({"username": "carol"}, "already friends"),
    ],
)
def test_friend_request_create_errors(as_alice, alice, bob, carol, payload, message):
    FriendRequest.objects.create(from_user=alice, to_user=bob)
    befriend(alice, carol)
    response = post_json(as_alice, "/api/friends/requests", payload)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert FriendRequest.objects.count() == 1
    assert Friendship.objects.count() == 1


def test_accept_request(alice, bob):
    request = FriendRequest.objects.create(from_user=alice, to_user=bob)
    url = f"/api/friends/requests/{request.id}/accept"
    assert post_json(login(alice), url).status_code == 404  # the sender cannot accept
    response = post_json(login(bob), url)
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert Friendship.objects.count() == 1
    assert not FriendRequest.objects.exists()
    assert post_json(login(bob), url).status_code == 404  # gone now


def test_decline_request(alice, bob, carol):
    request = FriendRequest.objects.create(from_user=alice, to_user=bob)
    url = f"/api/friends/requests/{request.id}/decline"
    for other in (alice, carol):
        response = post_json(login(other), url)
        assert response.status_code == 404
        assert "error" in response.json()
    assert post_json(login(bob), url).json() == {"ok": True}
    assert not FriendRequest.objects.exists()
    assert not Friendship.objects.exists()


def test_cancel_request(alice, bob):
    request = FriendRequest.objects.create(from_user=alice, to_user=bob)
    url = f"/api/friends/requests/{request.id}/cancel"
    assert post_json(login(bob), url).status_code == 404  # the recipient cannot cancel
    assert post_json(login(alice), url).json() == {"ok": True}
    assert not FriendRequest.objects.exists()


def test_request_action_unknown_id_or_action(as_alice, alice, bob):
    request = FriendRequest.objects.create(from_user=bob, to_user=alice)
    assert post_json(as_alice, "/api/friends/requests/99999/accept").status_code == 404
    response = post_json(as_alice, f"/api/friends/requests/{request.id}/approve")
    assert response.status_code == 404
    assert response.json() == {"error": "Unknown action."}
    assert FriendRequest.objects.exists()


def test_unfriend(as_alice, alice, bob, carol):
    befriend(alice, bob)
    response = post_json(as_alice, f"/api/friends/{bob.id}/unfriend")
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert not Friendship.objects.exists()
    assert post_json(as_alice, f"/api/friends/{bob.id}/unfriend").status_code == 404
    assert post_json(as_alice, f"/api/friends/{carol.id}/unfriend").status_code == 404
    assert post_json(as_alice, "/api/friends/99999/unfriend").status_code == 404


# --- Live sessions -------------------------------------------------------------------


def test_live_list_shows_only_friends_sessions(as_alice, alice, bob, carol):
    befriend(alice, bob)
    session = go_live(bob)
    go_live(carol)
    go_live(alice)
    dave = make_user("dave")
    befriend(alice, dave)
    LiveSession.objects.create(
        broadcaster=dave, owner_channel="x", heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    assert as_alice.get("/api/live").json() == {
        "sessions": [
            {
                "id": session.id,
                "broadcaster": {
                    "id": bob.id,
                    "username": "bob",
                    "display_name": "",
                    "avatar_url": None,
                },
                "started_at": session.started_at.isoformat(),
                "denoise": True,
                "listeners": 0,
            }
        ]
    }
    assert login(carol).get("/api/live").json() == {"sessions": []}


def test_live_list_reports_listener_counts_stored_by_any_process(as_alice, alice, bob, carol):
    # Bob's and Carol's sessions are owned by other daphne processes: this process only
    # has their rows, with the counts their media servers stored.
    befriend(alice, bob)
    befriend(alice, carol)
    bobs = go_live(bob)
    carols = go_live(carol)
    stream_services.live_session_listeners_set(session_id=bobs.id, listeners=3)
    counts = {s["id"]: s["listeners"] for s in as_alice.get("/api/live").json()["sessions"]}
    assert counts == {bobs.id: 3, carols.id: 0}
    stream_services.live_session_listeners_set(session_id=bobs.id, listeners=1)
    counts = {s["id"]: s["listeners"] for s in as_alice.get("/api/live").json()["sessions"]}
    assert counts == {bobs.id: 1, carols.id: 0}


# --- Recordings ----------------------------------------------------------------------


def test_recording_list(as_alice, alice, bob, carol):
    befriend(alice, bob)
    own = make_recording(alice, age_s=100)
    friends = make_recording(bob, age_s=10, ended=False)
    make_recording(carol)
    data = as_alice.get("/api/recordings").json()["recordings"]
    assert [r["id"] for r in data] == [friends.id, own.id]
    assert data[1] == {
        "id": own.id,
        "title": "alice rec",
        "owner": {"id": alice.id, "username": "alice", "display_name": ""},
        "is_owner": True,
        "started_at": own.started_at.isoformat(),
        "ended_at": own.ended_at.isoformat(),
        "duration_s": round(FRAMES / 48_000, 2),
        "size_bytes": 44 + 2 * FRAMES,
        "processing": {"denoise": True, "model": "DeepFilterNet3"},
        "started_label": when_label(own.started_at),
        "format": "wav",
        "kind": "audio",
        "session_id": None,
        "page_url": f"/recordings/{own.id}/",
        "audio_url": f"/recordings/{own.id}/audio?v=wav",
        "download_url": f"/recordings/{own.id}/download",
    }
    assert data[0]["is_owner"] is False
    assert data[0]["ended_at"] is None


def test_recording_detail_get(alice, bob, carol):
    befriend(alice, bob)
    recording = make_recording(alice)
    url = f"/api/recordings/{recording.id}"
    assert login(alice).get(url).json()["is_owner"] is True
    response = login(bob).get(url)
    assert response.status_code == 200
    assert response.json()["id"] == recording.id
    assert response.json()["is_owner"] is False
    assert login(carol).get(url).status_code == 404
    assert login(alice).get("/api/recordings/99999").status_code == 404


def test_recording_rename(alice, bob, carol):
    befriend(alice, bob)
    recording = make_recording(alice)
    url = f"/api/recordings/{recording.id}"
    response = login(alice).patch(url, {"title": " Sunday "}, content_type="application/json")
    assert response.status_code == 200
    assert response.json()["title"] == "Sunday"
    friend = login(bob).patch(url, {"title": "Mine"}, content_type="application/json")
    assert friend.status_code == 403
    assert "error" in friend.json()
    stranger = login(carol).patch(url, {"title": "Mine"}, content_type="application/json")
    assert stranger.status_code == 404
    no_title = login(alice).patch(url, {"name": "x"}, content_type="application/json")
    assert no_title.status_code == 400
    bad_json = login(alice).patch(url, "{", content_type="application/json")
    assert bad_json.status_code == 400
    recording.refresh_from_db()
    assert recording.title == "Sunday"


def test_recording_rename_invalid_title_is_400(alice):
    recording = make_recording(alice)
    response = login(alice).patch(
        f"/api/recordings/{recording.id}", {"title": "  "}, content_type="application/json"
    )
    assert response.status_code == 400


def test_recording_delete(alice, bob, carol, django_capture_on_commit_callbacks):
    befriend(alice, bob)
    recording = make_recording(alice)
    path = stream_services.recording_path(recording)
    url = f"/api/recordings/{recording.id}"
    assert login(bob).delete(url, content_type="application/json").status_code == 403
    assert login(carol).delete(url, content_type="application/json").status_code == 404
    assert path.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = login(alice).delete(url, content_type="application/json")
    assert response.status_code == 204
    assert not Recording.objects.exists()
    assert not path.exists()
    assert login(alice).delete(url, content_type="application/json").status_code == 404


def test_recording_in_progress_delete_refused(alice):
    recording = make_recording(alice, ended=False)
    response = login(alice).delete(
        f"/api/recordings/{recording.id}", content_type="application/json"
    )
    assert response.status_code == 409
    assert "in progress" in response.json()["error"]
    assert Recording.objects.exists()


# --- Recording audio with HTTP Range -------------------------------------------------


@pytest.fixture
def audio(alice, bob):
    """Alice's recording (bob is her friend): (url, file bytes)."""
    befriend(alice, bob)
    recording = make_recording(alice)
    data = stream_services.recording_path(recording).read_bytes()
    assert len(data) == 44 + 2 * FRAMES
    return f"/recordings/{recording.id}/audio", data


def test_audio_full_body_for_owner_and_friend(audio, alice, bob):
    url, data = audio
    for user in (alice, bob):
        response = login(user).get(url)
        assert response.status_code == 200
        assert response["Content-Type"] == "audio/wav"
        assert response["Accept-Ranges"] == "bytes"
        assert response["Content-Length"] == str(len(data))
        assert "Content-Range" not in response
        assert body(response) == data


def test_audio_access(audio, client, carol):
    url, _ = audio
    response = client.get(url)
    assert response.status_code == 401
    assert response.json() == {"error": "Sign in first."}
    assert login(carol).get(url).status_code == 404
    assert login(carol).get("/recordings/99999/audio").status_code == 404


def test_audio_missing_file_is_404(alice):
    recording = make_recording(alice)
    stream_services.recording_path(recording).unlink()
    assert login(alice).get(f"/recordings/{recording.id}/audio").status_code == 404


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, None),
        ("bytes=-50", -50, None),
        ("bytes=3000-99999", 3000, None),
        ("bytes=7-7", 7, 7),
    ],
)
def test_audio_range(audio, alice, header, start, end):
    url, data = audio
    size = len(data)
    first = start % size
    last = size - 1 if end is None else end
    response = login(alice).get(url, HTTP_RANGE=header)
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert response["Content-Length"] == str(last - first + 1)
    assert response["Accept-Ranges"] == "bytes"
    assert body(response) == data[first : last + 1]


def test_audio_range_not_satisfiable(audio, alice):
    url, data = audio
    for header in (f"bytes={len(data)}-", f"bytes={len(data) + 10}-{len(data) + 20}", "bytes=-0"):
        response = login(alice).get(url, HTTP_RANGE=header)
        assert response.status_code == 416
        assert response["Content-Range"] == f"bytes */{len(data)}"


@pytest.mark.parametrize("header", ["bytes=0-9,20-29", "bytes=abc", "items=0-9", "bytes=9-1"])
def test_audio_ignored_range_sends_everything(audio, alice, header):
    url, data = audio
    response = login(alice).get(url, HTTP_RANGE=header)
    assert response.status_code == 200
    assert "Content-Range" not in response
    assert body(response) == data


def test_audio_head_and_wrong_method(audio, alice):
    url, data = audio
    client = login(alice)
    head = client.head(url)
    assert head.status_code == 200
    assert head["Content-Length"] == str(len(data))
    assert body(head) == b""
    assert client.post(url).status_code == 405


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("", 100, None),
        ("bytes=0-99", 100, (0, 99)),
        ("bytes=0-0", 100, (0, 0)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=50-500", 100, (50, 99)),
        ("bytes=99-", 100, (99, 99)),
        (" bytes = 1 - 2 ", 100, (1, 2)),
        ("bytes=0-", 1, (0, 0)),
        ("bytes=5-3", 100, None),
        ("bytes=0-1,5-6", 100, None),
        ("items=0-5", 100, None),
        ("bytes=-", 100, None),
        ("bytes=abc", 100, None),
        ("bytes=1-2-3", 100, None),
        ("bytes=100-", 100, RangeNotSatisfiable),
        ("bytes=100-200", 100, RangeNotSatisfiable),
        ("bytes=-0", 100, RangeNotSatisfiable),
        ("bytes=0-", 0, RangeNotSatisfiable),
        ("bytes=-5", 0, RangeNotSatisfiable),
    ],
)
def test_range_parse(header, size, expected):
    if expected is RangeNotSatisfiable:
        with pytest.raises(RangeNotSatisfiable):
            range_parse(header, size)
    else:
        assert range_parse(header, size) == expected


# --- /health -------------------------------------------------------------------------


def test_health_ok(client):
    response = client.get("/health")
    assert response.status_code == 200
    data = response.json()
    assert data["status"] == "ok"
    assert data["database"]["status"] == "ok"
    assert data["database"]["vendor"] in ("sqlite", "postgresql")
    assert data["channel_layer"]["status"] == "ok"
    assert data["channel_layer"]["backend"] in ("InMemoryChannelLayer", "RedisChannelLayer")
    assert data["elapsed_ms"] >= 0


SECRET = "redis://hearth-secret-user@db-host-7f3a:6379/secret-db"


def test_health_503_when_the_channel_layer_is_broken(client, monkeypatch, caplog):
    class BrokenLayer:
        async def new_channel(self):
            raise ConnectionError(f"cannot reach {SECRET}")

    monkeypatch.setattr("project.views.get_channel_layer", BrokenLayer)
    with caplog.at_level("ERROR", logger="hearth.health"):
        response = client.get("/health")
    assert response.status_code == 503
    data = response.json()
    assert data["status"] == "error"
    assert data["database"]["status"] == "ok"
    assert data["channel_layer"] == {"status": "error"}
    assert SECRET not in response.content.decode()  # unauthenticated: nothing leaks
    # The details go to the log instead.
    [record] = [r for r in caplog.records if r.name == "hearth.health"]
    assert record.exc_info and SECRET in str(record.exc_info[1])


def test_health_503_when_the_database_is_broken(client, monkeypatch, caplog):
    def broken_database() -> str:
        raise RuntimeError(f"could not connect to {SECRET}")

    monkeypatch.setattr("project.views._database_ok", broken_database)
    with caplog.at_level("ERROR", logger="hearth.health"):
        response = client.get("/health")
    assert response.status_code == 503
    data = response.json()
    assert data["status"] == "error"
    assert data["database"] == {"status": "error"}
    assert data["channel_layer"]["status"] == "ok"
    assert SECRET not in response.content.decode()
    [record] = [r for r in caplog.records if r.name == "hearth.health"]
    assert record.exc_info and SECRET in str(record.exc_info[1])
