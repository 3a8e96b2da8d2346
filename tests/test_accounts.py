"""Blocks and profiles: users.services/selectors, the blocks API and the profile's
appearance in API payloads."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from tests.factories import Inbox, befriend, make_user
from users import selectors, services
from users.events import user_group
from users.models import Block, FriendRequest, User
from users.services import FRIEND_REQUEST_UNKNOWN_MESSAGE, AccountError, FriendshipError

pytestmark = pytest.mark.django_db


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post_json(client: Client, url: str, data: object) -> object:
    return client.post(url, json.dumps(data), content_type="application/json")


# --- Block services and selectors ----------------------------------------------------


def test_block_ends_friendship_and_requests_both_ways(
    alice, bob, carol, layer, django_capture_on_commit_callbacks
):
    befriend(alice, bob)
    FriendRequest.objects.create(from_user=bob, to_user=alice)  # stale leftover
    FriendRequest.objects.create(from_user=carol, to_user=alice)
    bob_inbox = Inbox(layer, user_group(bob.id))
    with django_capture_on_commit_callbacks(execute=True):
        services.block_create(user=alice, blocked_id=bob.id)
    assert not selectors.friendship_exists(user_a=alice, user_b=bob)
    assert list(FriendRequest.objects.values_list("from_user__username", flat=True)) == ["carol"]
    assert selectors.block_exists_between(user_a=bob, user_b=alice)
    assert selectors.block_related_ids(user=alice) == {bob.id}
    assert selectors.block_related_ids(user=bob) == {alice.id}
    assert [b.blocked for b in selectors.block_list(user=alice)] == [bob]
    assert list(selectors.block_list(user=bob)) == []
    assert bob_inbox.events() == [("friends.changed", {})]
    # Blocking twice is harmless.
    services.block_create(user=alice, blocked_id=bob.id)
    assert Block.objects.count() == 1


def test_block_refuses_self_and_unknown(alice):
    with pytest.raises(AccountError, match="yourself"):
        services.block_create(user=alice, blocked_id=alice.id)
    with pytest.raises(AccountError, match="No such user"):
        services.block_create(user=alice, blocked_id=alice.id + 999)


def test_requests_are_refused_both_ways_with_the_unknown_name_message(alice, bob):
    services.block_create(user=alice, blocked_id=bob.id)
    for sender, target in ((alice, "bob"), (bob, "alice")):
        with pytest.raises(FriendshipError) as info:
            services.friend_request_send(from_user=sender, to_username=target)
        assert str(info.value) == FRIEND_REQUEST_UNKNOWN_MESSAGE
    assert not FriendRequest.objects.exists()


def test_search_hides_blocked_users_both_ways(alice, bob):
    bobby = make_user("bobby")
    services.block_create(user=alice, blocked_id=bob.id)
    assert selectors.user_search(user=alice, query="bob") == [bobby]
    assert selectors.user_search(user=bob, query="ali") == []
    assert selectors.user_search(user=alice, query="b") == []  # under 2 characters


def test_presence_does_not_reach_a_blocked_user(
    alice, bob, layer, django_capture_on_commit_callbacks
):
    befriend(alice, bob)
    services.block_create(user=bob, blocked_id=alice.id)
    bob_inbox = Inbox(layer, user_group(bob.id))
    with django_capture_on_commit_callbacks(execute=True):
        services.presence_connect(user=alice, channel_name="a")
    assert bob_inbox.events() == []


def test_unblock_allows_requests_again_but_restores_no_friendship(alice, bob):
    befriend(alice, bob)
    services.block_create(user=alice, blocked_id=bob.id)
    with pytest.raises(AccountError, match="not blocked"):
        services.block_delete(user=bob, blocked_id=alice.id)  # only the blocker can lift it
    services.block_delete(user=alice, blocked_id=bob.id)
    assert not selectors.block_exists_between(user_a=alice, user_b=bob)
    assert not selectors.friendship_exists(user_a=alice, user_b=bob)
    assert services.friend_request_send(from_user=bob, to_username="alice").status == "requested"


# --- Profile -------------------------------------------------------------------------


def test_profile_update_cleans_and_notifies_friends(
    alice, bob, carol, layer, django_capture_on_commit_callbacks
):
    befriend(alice, bob)
    bob_inbox = Inbox(layer, user_group(bob.id))
    carol_inbox = Inbox(layer, user_group(carol.id))
    with django_capture_on_commit_callbacks(execute=True):
        services.user_profile_update(
            user=alice, display_name="  Alice   Liddell ", email=" alice@EXAMPLE.org "
        )
    alice.refresh_from_db()
    assert (alice.display_name, alice.email) == ("Alice Liddell", "alice@example.org")
    assert alice.shown_name == "Alice Liddell"
    assert bob_inbox.events() == [("friends.changed", {})]
    assert carol_inbox.events() == []
    # The same name again sends nothing; clearing it shows the username.
    with django_capture_on_commit_callbacks(execute=True):
        services.user_profile_update(user=alice, display_name="Alice Liddell", email="")
    assert bob_inbox.events() == []
    services.user_profile_update(user=alice, display_name="", email="")
    assert alice.shown_name == "alice"


@pytest.mark.parametrize(
    ("display_name", "email", "message"),
    [
        ("a\x00b", "", "control characters"),
        ("x" * 51, "", "50 characters"),
        ("\ud800", "", "control characters"),
        ("ok", "not-an-address", "valid e-mail"),
    ],
)
def test_profile_update_refuses_bad_input(alice, display_name, email, message):
    with pytest.raises(AccountError, match=message):
        services.user_profile_update(user=alice, display_name=display_name, email=email)
    alice.refresh_from_db()
    assert alice.display_name == ""


# --- Blocks API ----------------------------------------------------------------------


def test_blocks_api_block_list_unblock(alice, bob):
    client = login(alice)
    befriend(alice, bob)
    response = post_json(client, "/api/blocks", {"user_id": bob.id})
    assert response.status_code == 201
    assert client.get("/api/friends").json()["friends"] == []
    blocked = client.get("/api/blocks").json()["blocked"]
    assert [(b["id"], b["username"]) for b in blocked] == [(bob.id, "bob")]
    assert client.get("/api/users/search", {"q": "bob"}).json() == {"users": []}
    assert login(bob).get("/api/users/search", {"q": "alice"}).json() == {"users": []}
    refused = post_json(login(bob), "/api/friends/requests", {"username": "alice"})
    assert refused.status_code == 400
    assert refused.json() == {"error": FRIEND_REQUEST_UNKNOWN_MESSAGE}
    assert client.post(f"/api/blocks/{bob.id}/unblock").json() == {"ok": True}
    assert client.get("/api/blocks").json() == {"blocked": []}
    assert client.post(f"/api/blocks/{bob.id}/unblock").status_code == 404


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({}, 400, "Give the id"),
        ({"user_id": "2"}, 400, "Give the id"),
        ({"user_id": True}, 400, "Give the id"),
        ({"user_id": -1}, 400, "Give the id"),
        ({"user_id": 10**6}, 404, "No such user"),
    ],
)
def test_blocks_api_bad_input(alice, payload, status, message):
    response = post_json(login(alice), "/api/blocks", payload)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_blocks_api_refuses_self_and_needs_sign_in(alice, client):
    response = post_json(login(alice), "/api/blocks", {"user_id": alice.id})
    assert response.status_code == 400
    assert response.json() == {"error": "You can't block yourself."}
    assert client.get("/api/blocks").status_code == 401
    assert client.post("/api/blocks/1/unblock").status_code == 401


def test_display_name_in_search_and_friend_list(alice, bob):
    services.user_profile_update(user=bob, display_name="Bobby Tables", email="")
    befriend(alice, bob)
    client = login(alice)
    assert client.get("/api/friends").json()["friends"][0]["display_name"] == "Bobby Tables"
    found = client.get("/api/users/search", {"q": "bob"}).json()["users"]
    assert found[0]["display_name"] == "Bobby Tables"
