"""Throttling: login lockout (django-axes), sign-up and friend-request rate limits
(django-ratelimit), and go-live / listen attempts over the WebSocket."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.urls import reverse

from tests.factories import make_user

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


@pytest.mark.django_db(transaction=True)
async def test_lockout_works_under_asgi(async_client):
    # daphne serves Hearth through Django's ASGI handler, where axes' middleware takes
    # its async path: the lockout must answer the same 429 page there.
    await database_sync_to_async(get_user_model().objects.create_user)(
        username="alice", password=PASSWORD
    )

    async def login(password: str):
        return await async_client.post(
            reverse("login"), {"username": "alice", "password": password}
        )

    for _ in range(4):
        assert (await login("wrong-password")).status_code == 200
    assert (await login("wrong-password")).status_code == 429
    right = await login(PASSWORD)
    assert right.status_code == 429
    assert b"Too many failed log-ins" in right.content
