"""Throttling: login lockout (django-axes), sign-up and friend-request rate limits
(django-ratelimit), and go-live / listen attempts over the WebSocket."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.urls import reverse

from tests.factories import befriend, make_user
from tests.rtc_helpers import communicator_for, expect

PASSWORD = "a-long-test-passphrase-42"


@pytest.fixture(autouse=True)
def _plain_static_storage(settings) -> None:
    settings.STATIC_ROOT = None
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def hearth(settings) -> dict:
    """A copy of ``settings.HEARTH`` this test may change."""
    settings.HEARTH = dict(settings.HEARTH)
    return settings.HEARTH


def _login(client, username: str, password: str, ip: str = "10.0.0.1"):
    return client.post(
        reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip
    )


# --- Login lockout ------------------------------------------------------------------


@pytest.mark.django_db
def test_sixth_wrong_password_locks_out_even_the_right_password(client):
    get_user_model().objects.create_user(username="alice", password=PASSWORD)
    for _ in range(4):
        response = _login(client, "alice", "wrong-password")
        assert response.status_code == 200  # the form again, with its error
    # The 5th failure reaches the limit: that answer is already the lockout page.
    fifth = _login(client, "alice", "wrong-password")
    assert fifth.status_code == 429
    assert b"Too many failed log-ins" in fifth.content
    assert _login(client, "alice", "wrong-password").status_code == 429
    right = _login(client, "alice", PASSWORD)
    assert right.status_code == 429
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_lockout_is_per_username_and_address(client):
    get_user_model().objects.create_user(username="alice", password=PASSWORD)
    get_user_model().objects.create_user(username="bob", password=PASSWORD)
    for _ in range(6):
        _login(client, "alice", "wrong-password")
    # Alice from another address, and Bob from the same one, still get in.
    assert _login(client, "alice", PASSWORD, ip="10.0.0.2").status_code == 302
    client.logout()
    assert _login(client, "bob", PASSWORD).status_code == 302


@pytest.mark.django_db
def test_a_success_resets_the_failure_count(client):
    get_user_model().objects.create_user(username="alice", password=PASSWORD)
    for _ in range(4):
        _login(client, "alice", "wrong-password")
    assert _login(client, "alice", PASSWORD).status_code == 302
    client.logout()
    for _ in range(4):
        _login(client, "alice", "wrong-password")
    assert _login(client, "alice", PASSWORD).status_code == 302


# --- Sign-up per IP -----------------------------------------------------------------


def _sign_up(client, username: str, ip: str = "10.0.0.1"):
    client.logout()
    return client.post(
        reverse("signup"),
        {"username": username, "password1": PASSWORD, "password2": PASSWORD},
        REMOTE_ADDR=ip,
    )


@pytest.mark.django_db
def test_sign_ups_beyond_the_limit_per_address_get_429(client, hearth):
    hearth["SIGNUP_RATE"] = "3/h"
    for name in ("ann", "ben", "cat"):
        assert _sign_up(client, name).status_code == 302
    refused = _sign_up(client, "dan")
    assert refused.status_code == 429
    assert b"Too many sign-ups" in refused.content
    assert not get_user_model().objects.filter(username="dan").exists()
    # Another address is not affected.
    assert _sign_up(client, "dan", ip="10.0.0.9").status_code == 302


# --- Friend requests per user -------------------------------------------------------


@pytest.mark.django_db
def test_friend_requests_beyond_the_limit_per_user_get_429_json(client, hearth):
    hearth["FRIEND_REQUEST_RATE"] = "3/h"
    me = make_user("me")
    for name in ("f1", "f2", "f3", "f4"):
        make_user(name)
    client.force_login(me)

    def ask(username: str):
        return client.post(
            "/api/friends/requests",
            json.dumps({"username": username}),
            content_type="application/json",
        )

    for name in ("f1", "f2", "f3"):
        assert ask(name).status_code == 201
    refused = ask("f4")
    assert refused.status_code == 429
    assert refused["Content-Type"] == "application/json"
    assert "error" in refused.json()
    # Another user has a budget of their own.
    client.force_login(make_user("other"))
    assert ask("f4").status_code == 201


# --- WebSocket: go live and listen per user -----------------------------------------


async def _connected(user):
    comm = communicator_for(user)
    connected, _ = await comm.connect()
    assert connected
    await expect(comm, "hello")
    return comm


@pytest.mark.django_db(transaction=True)
async def test_go_live_attempts_beyond_the_limit_get_rate_limited(hearth) -> None:
    hearth["BROADCAST_START_RATE"] = "3/m"
    ann = await database_sync_to_async(make_user)("ann")
    tab1, tab2 = await _connected(ann), await _connected(ann)
    # Attempts count whatever becomes of them (here: refused offers), across tabs.
    for tab in (tab1, tab2, tab1):
        await tab.send_json_to({"type": "broadcast.start", "sdp": "not sdp"})
        assert (await expect(tab, "error"))["code"] == "bad_sdp"
    await tab2.send_json_to({"type": "broadcast.start", "sdp": "not sdp"})
    error = await expect(tab2, "error")
    assert error == {
        "type": "error",
        "code": "rate_limited",
        "message": error["message"],
        "ref": "broadcast.start",
    }
    # The socket stays usable, and other users are not limited.
    await tab2.send_json_to({"type": "ping"})
    await expect(tab2, "pong")
    ben = await database_sync_to_async(make_user)("ben")
    other = await _connected(ben)
    await other.send_json_to({"type": "broadcast.start", "sdp": "not sdp"})
    assert (await expect(other, "error"))["code"] == "bad_sdp"
    for comm in (tab1, tab2, other):
        await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_listen_attempts_beyond_the_limit_get_rate_limited(hearth) -> None:
    hearth["LISTEN_START_RATE"] = "2/m"

    def make():
        ann, ben = make_user("ann"), make_user("ben")
        befriend(ann, ben)
        return ben

    ben = await database_sync_to_async(make)()
    page = await _connected(ben)
    for _ in range(2):
        await page.send_json_to({"type": "listen.start", "session_id": 1, "sdp": "not sdp"})
        assert (await expect(page, "error"))["code"] == "bad_sdp"
    await page.send_json_to({"type": "listen.start", "session_id": 1, "sdp": "not sdp"})
    error = await expect(page, "error")
    assert error["code"] == "rate_limited" and error["ref"] == "listen.start"
    await page.disconnect()
