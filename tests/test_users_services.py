"""users.services and users.selectors: friend requests, friendships, presence, events."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone

from tests.factories import Inbox, befriend, make_user
from users import selectors, services
from users.events import user_group, users_notify
from users.models import FriendRequest, Friendship, PresenceConnection
from users.services import FriendshipError

pytestmark = pytest.mark.django_db


# --- Helpers -------------------------------------------------------------------------


def stale_time() -> timezone.datetime:
    return timezone.now() - timedelta(seconds=django_settings.HEARTH["PRESENCE_STALE_S"] + 5)


# --- Friend requests -----------------------------------------------------------------


def test_send_request_by_username_case_insensitive(alice, bob):
    result = services.friend_request_send(from_user=alice, to_username="  BoB ")
    assert result.status == "requested"
    assert result.friendship is None
    assert result.request == FriendRequest.objects.get(from_user=alice, to_user=bob)
    assert not selectors.friendship_exists(user_a=alice, user_b=bob)


def test_send_request_to_self_is_refused(alice):
    with pytest.raises(FriendshipError, match="yourself"):
        services.friend_request_send(from_user=alice, to_username="ALICE")
    assert not FriendRequest.objects.exists()


def test_send_request_to_unknown_or_inactive_user_is_refused(alice):
    make_user("ghost", is_active=False)
    for name in ("nobody", "ghost"):
        with pytest.raises(FriendshipError, match="Could not send a friend request"):
            services.friend_request_send(from_user=alice, to_username=name)
    assert not FriendRequest.objects.exists()


def test_duplicate_request_is_refused(alice, bob):
    services.friend_request_send(from_user=alice, to_username="bob")
    with pytest.raises(FriendshipError, match="already asked"):
        services.friend_request_send(from_user=alice, to_username="bob")
    assert FriendRequest.objects.count() == 1


def test_request_to_a_friend_is_refused(alice, bob):
    befriend(alice, bob)
    with pytest.raises(FriendshipError, match="already friends"):
        services.friend_request_send(from_user=alice, to_username="bob")
    assert not FriendRequest.objects.exists()


def test_crossed_requests_become_a_friendship(alice, bob):
    services.friend_request_send(from_user=alice, to_username="bob")
    result = services.friend_request_send(from_user=bob, to_username="alice")
    assert result.status == "accepted"
    assert result.request is None
    assert result.friendship == Friendship.objects.get()
    assert result.friendship.user_low_id < result.friendship.user_high_id
    assert selectors.friendship_exists(user_a=alice, user_b=bob)
    assert not FriendRequest.objects.exists()


def test_accept_by_recipient_makes_friends_and_removes_requests(alice, bob):
    request = services.friend_request_send(from_user=alice, to_username="bob").request
    friendship = services.friend_request_accept(user=bob, request_id=request.id)
    assert {friendship.user_low_id, friendship.user_high_id} == {alice.id, bob.id}
    assert not FriendRequest.objects.exists()
    assert selectors.friend_ids(user=alice) == {bob.id}
    assert selectors.friend_ids(user=bob) == {alice.id}


def test_only_the_recipient_may_accept_or_decline(alice, bob, carol):
    request = services.friend_request_send(from_user=alice, to_username="bob").request
    for user in (alice, carol):
        with pytest.raises(FriendshipError, match="no longer exists"):
            services.friend_request_accept(user=user, request_id=request.id)
        with pytest.raises(FriendshipError):
            services.friend_request_decline(user=user, request_id=request.id)
    assert FriendRequest.objects.filter(id=request.id).exists()
    assert not Friendship.objects.exists()


def test_decline_deletes_the_request(alice, bob):
    request = services.friend_request_send(from_user=alice, to_username="bob").request
    services.friend_request_decline(user=bob, request_id=request.id)
    assert not FriendRequest.objects.exists()
    assert not Friendship.objects.exists()
    with pytest.raises(FriendshipError):
        services.friend_request_accept(user=bob, request_id=request.id)


def test_only_the_sender_may_cancel(alice, bob, carol):
    request = services.friend_request_send(from_user=alice, to_username="bob").request
    for user in (bob, carol):
        with pytest.raises(FriendshipError):
            services.friend_request_cancel(user=user, request_id=request.id)
    assert FriendRequest.objects.filter(id=request.id).exists()
    services.friend_request_cancel(user=alice, request_id=request.id)
    assert not FriendRequest.objects.exists()
    assert not Friendship.objects.exists()


def test_unknown_request_id(alice):
    for service in (
        services.friend_request_accept,
        services.friend_request_decline,
        services.friend_request_cancel,
    ):
        with pytest.raises(FriendshipError):
            service(user=alice, request_id=987654)


def test_unfriend(alice, bob, carol):
    befriend(alice, bob)
    befriend(alice, carol)
    services.friendship_delete(user=bob, friend_id=alice.id)
    assert not selectors.friendship_exists(user_a=alice, user_b=bob)
    assert selectors.friendship_exists(user_a=alice, user_b=carol)
    with pytest.raises(FriendshipError, match="not friends"):
        services.friendship_delete(user=bob, friend_id=alice.id)
    with pytest.raises(FriendshipError):
        services.friendship_delete(user=alice, friend_id=alice.id)


# --- Selectors -----------------------------------------------------------------------


def test_friend_ids_list_and_exists(alice, bob, carol):
    dave = make_user("dave")
    befriend(alice, carol)
    befriend(bob, alice)
    befriend(bob, dave)
    assert selectors.friend_ids(user=alice) == {bob.id, carol.id}
    assert selectors.friend_ids(user=dave) == {bob.id}
    assert [u.username for u in selectors.friend_list(user=alice)] == ["bob", "carol"]
    assert list(selectors.friend_list(user=carol)) == [alice]
    assert selectors.friendship_exists(user_a=alice, user_b=bob)
    assert selectors.friendship_exists(user_a=bob.id, user_b=alice.id)
    assert selectors.friendship_exists(user_a=bob, user_b=dave.id)
    assert not selectors.friendship_exists(user_a=alice, user_b=dave)
    assert not selectors.friendship_exists(user_a=alice, user_b=alice)


def test_incoming_and_outgoing_request_lists(alice, bob, carol):
    services.friend_request_send(from_user=alice, to_username="bob")
    services.friend_request_send(from_user=carol, to_username="bob")
    incoming = list(selectors.friend_request_incoming_list(user=bob))
    assert {r.from_user.username for r in incoming} == {"alice", "carol"}
    assert [r.to_user for r in selectors.friend_request_outgoing_list(user=alice)] == [bob]
    assert not selectors.friend_request_outgoing_list(user=bob).exists()
    assert not selectors.friend_request_incoming_list(user=alice).exists()


def test_user_search(alice, bob):
    make_user("Bobby")
    make_user("robert")
    make_user("bobsleigh", is_active=False)
    found = selectors.user_search(user=alice, query=" BOB ")
    assert [u.username for u in found] == ["Bobby", "bob"]
    assert [u.username for u in selectors.user_search(user=alice, query="bo", limit=1)] == ["Bobby"]
    # Never oneself, and a blank query lists no one.
    assert selectors.user_search(user=alice, query="alice") == []
    assert selectors.user_search(user=alice, query="") == []
    assert selectors.user_search(user=alice, query="   ") == []


def test_online_selectors(alice, bob, carol):
    PresenceConnection.objects.create(user=alice, channel_name="a1", last_seen=timezone.now())
    PresenceConnection.objects.create(user=bob, channel_name="b1", last_seen=stale_time())
    assert selectors.user_is_online(user_id=alice.id)
    assert not selectors.user_is_online(user_id=bob.id)
    assert not selectors.user_is_online(user_id=carol.id)
    assert selectors.online_user_ids(user_ids={alice.id, bob.id, carol.id}) == {alice.id}
    assert selectors.online_user_ids(user_ids=set()) == set()


# --- Presence ------------------------------------------------------------------------


def test_presence_connect_counts_only_the_first_tab(alice):
    assert services.presence_connect(user=alice, channel_name="tab-1") is True
    assert services.presence_connect(user=alice, channel_name="tab-2") is False
    assert PresenceConnection.objects.filter(user=alice).count() == 2
    assert selectors.user_is_online(user_id=alice.id)


def test_presence_disconnect_true_only_for_the_last_tab(alice):
    services.presence_connect(user=alice, channel_name="tab-1")
    services.presence_connect(user=alice, channel_name="tab-2")
    assert services.presence_disconnect(user=alice, channel_name="tab-1") is False
    assert selectors.user_is_online(user_id=alice.id)
    assert services.presence_disconnect(user=alice, channel_name="tab-2") is True
    assert not PresenceConnection.objects.exists()
    assert not selectors.user_is_online(user_id=alice.id)


def test_stale_connections_do_not_count(alice):
    PresenceConnection.objects.create(user=alice, channel_name="old", last_seen=stale_time())
    assert services.presence_connect(user=alice, channel_name="new") is True
    # Closing the only fresh tab takes the user offline, despite the stale row.
    assert services.presence_disconnect(user=alice, channel_name="new") is True


def test_presence_touch_bumps_last_seen(alice):
    PresenceConnection.objects.create(user=alice, channel_name="tab", last_seen=stale_time())
    before = timezone.now()
    services.presence_touch(user=alice, channel_name="tab")
    assert PresenceConnection.objects.get().last_seen >= before
    assert selectors.user_is_online(user_id=alice.id)


def test_presence_touch_restores_a_pruned_connection(
    alice, bob, django_capture_on_commit_callbacks
):
    Friendship.objects.create(user_low=alice, user_high=bob)
    with django_capture_on_commit_callbacks() as callbacks:
        services.presence_touch(user=alice, channel_name="pruned-tab")
    assert PresenceConnection.objects.filter(user=alice, channel_name="pruned-tab").exists()
    assert len(callbacks) == 1  # friends hear alice is back online


def test_presence_prune_deletes_stale_and_notifies_friends(
    alice, bob, carol, layer, django_capture_on_commit_callbacks
):
    befriend(alice, bob)
    befriend(carol, bob)
    PresenceConnection.objects.create(user=alice, channel_name="a-old", last_seen=stale_time())
    PresenceConnection.objects.create(user=carol, channel_name="c-old", last_seen=stale_time())
    PresenceConnection.objects.create(user=carol, channel_name="c-new", last_seen=timezone.now())
    PresenceConnection.objects.create(user=bob, channel_name="b-new", last_seen=timezone.now())
    bob_inbox = Inbox(layer, user_group(bob.id))
    with django_capture_on_commit_callbacks(execute=True):
        assert services.presence_prune() == 2
    assert set(PresenceConnection.objects.values_list("channel_name", flat=True)) == {
        "c-new",
        "b-new",
    }
    # Only alice went offline; carol still has a fresh tab.
    assert bob_inbox.events() == [
        (
            "presence",
            {"user_id": alice.id, "username": "alice", "display_name": "", "online": False},
        )
    ]
    with django_capture_on_commit_callbacks(execute=True):
        assert services.presence_prune() == 0
    assert bob_inbox.events() == []


# --- Events after commit -------------------------------------------------------------


def test_presence_events_go_to_friends(
    alice, bob, carol, layer, django_capture_on_commit_callbacks
):
    befriend(alice, bob)
    bob_inbox = Inbox(layer, user_group(bob.id))
    carol_inbox = Inbox(layer, user_group(carol.id))
    with django_capture_on_commit_callbacks(execute=True):
        services.presence_connect(user=alice, channel_name="tab-1")
    with django_capture_on_commit_callbacks(execute=True):
        services.presence_connect(user=alice, channel_name="tab-2")
    with django_capture_on_commit_callbacks(execute=True):
        services.presence_disconnect(user=alice, channel_name="tab-1")
    with django_capture_on_commit_callbacks(execute=True):
        services.presence_disconnect(user=alice, channel_name="tab-2")
    data = {"user_id": alice.id, "username": "alice", "display_name": ""}
    assert bob_inbox.events() == [
        ("presence", {**data, "online": True}),
        ("presence", {**data, "online": False}),
    ]
    assert carol_inbox.events() == []


@pytest.mark.parametrize("action", ["send", "accept", "decline", "cancel", "unfriend"])
def test_friend_actions_notify_both_users_after_commit(
    action, alice, bob, carol, layer, django_capture_on_commit_callbacks
):
    request = None
    if action in ("accept", "decline", "cancel"):
        request = FriendRequest.objects.create(from_user=alice, to_user=bob)
    if action == "unfriend":
        befriend(alice, bob)
    inboxes = {u.username: Inbox(layer, user_group(u.id)) for u in (alice, bob, carol)}
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        if action == "send":
            services.friend_request_send(from_user=alice, to_username="bob")
        elif action == "accept":
            services.friend_request_accept(user=bob, request_id=request.id)
        elif action == "decline":
            services.friend_request_decline(user=bob, request_id=request.id)
        elif action == "cancel":
            services.friend_request_cancel(user=alice, request_id=request.id)
        else:
            services.friendship_delete(user=alice, friend_id=bob.id)
    # Nothing is sent before the commit.
    assert inboxes["alice"].events() == []
    assert len(callbacks) == 1
    callbacks[0]()
    assert inboxes["alice"].events() == [("friends.changed", {})]
    assert inboxes["bob"].events() == [("friends.changed", {})]
    assert inboxes["carol"].events() == []


def test_nothing_is_sent_when_the_transaction_rolls_back(
    alice, bob, layer, django_capture_on_commit_callbacks
):
    befriend(alice, bob)
    inbox = Inbox(layer, user_group(alice.id), user_group(bob.id))

    class Boom(Exception):
        pass

    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(Boom),
        transaction.atomic(),
    ):
        services.friendship_delete(user=alice, friend_id=bob.id)
        services.presence_connect(user=alice, channel_name="tab")
        raise Boom
    assert callbacks == []
    assert inbox.events() == []
    assert selectors.friendship_exists(user_a=alice, user_b=bob)
    assert not PresenceConnection.objects.exists()


def test_users_notify_sends_to_each_user_once(
    alice, bob, layer, django_capture_on_commit_callbacks
):
    inbox_a = Inbox(layer, user_group(alice.id))
    inbox_b = Inbox(layer, user_group(bob.id))
    with django_capture_on_commit_callbacks(execute=True):
        users_notify(user_ids=[alice.id, alice.id, bob.id], event="custom", data={"x": 1})
    assert inbox_a.events() == [("custom", {"x": 1})]
    assert inbox_b.events() == [("custom", {"x": 1})]
    assert user_group(42) == "user.42"


def test_a_broken_layer_does_not_break_the_commit(alice, bob, monkeypatch, caplog):
    class BrokenLayer:
        async def group_send(self, group, message):
            raise ConnectionError("layer down")

    monkeypatch.setattr("users.events.get_channel_layer", BrokenLayer)
    from users.events import _send_now

    _send_now([alice.id, bob.id], {"type": "hearth.event", "event": "x", "data": {}})
    assert sum("could not send" in r.getMessage() for r in caplog.records) == 2
