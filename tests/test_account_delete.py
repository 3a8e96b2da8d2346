"""Deleting an account (users.services.user_delete and the account page's confirm
form): everything of the user goes, rows and files; other users keep theirs; every
session and socket of the user ends; a live broadcast ends cleanly first."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiortc.contrib.media import MediaPlayer
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client

from streams.models import LiveSession, Recording
from streams.rtc import media_server
from streams.services import recording_path, session_group
from tests.factories import Inbox, befriend, go_live, make_recording, make_user
from tests.live_flow import until
from tests.rtc_helpers import (
    accept_answer,
    client_peer,
    connected,
    expect_matching,
    offer_sdp,
)
from tests.test_avatars import halves_jpeg
from users import services
from users.events import user_group
from users.models import Block, FriendRequest, Friendship, PresenceConnection, User
from users.selectors import friendship_exists

PASSWORD = "a-long-Passphrase-42"


def with_password(user: User) -> User:
    user.set_password(PASSWORD)
    user.save()
    return user


def signed_in(user: User) -> Client:
    client = Client()
    response = client.post("/login/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 302
    return client


def is_signed_in(client: Client) -> bool:
    """Whether the client's session still opens the account page (else: to log-in)."""
    return client.get("/account/").status_code == 200


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    # PBKDF2's deliberate slowness costs seconds per log-in on a loaded test machine;
    # the checks here are about what deletion deletes, not about hashing.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def _static(settings) -> None:
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


# --- The service ---------------------------------------------------------------------


@pytest.mark.django_db
def test_wrong_password_deletes_nothing(alice, bob):
    with_password(alice)
    befriend(alice, bob)
    recording = make_recording(alice)
    for password in ("", "not-it"):
        with pytest.raises(services.AccountError, match="not your password"):
            services.user_delete(user=alice, password=password)
    alice.refresh_from_db()
    assert alice.is_active and friendship_exists(user_a=alice, user_b=bob)
    assert recording_path(recording).is_file()


@pytest.mark.django_db
def test_delete_removes_everything_of_the_user_and_nothing_of_others(
    alice, bob, carol, layer, _static, django_capture_on_commit_callbacks
):
    for user in (alice, bob):
        with_password(user)
    dave = make_user("dave")
    befriend(alice, bob)
    befriend(bob, carol)
    FriendRequest.objects.create(from_user=alice, to_user=carol)
    Block.objects.create(blocker=dave, blocked=alice)
    PresenceConnection.objects.create(
        user=alice, channel_name="page-a", last_seen=alice.date_joined
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_set(user=alice, image=halves_jpeg())
        services.user_avatar_set(user=bob, image=halves_jpeg())
    avatar = Path(settings.MEDIA_ROOT) / alice.avatar.name
    bob_avatar = Path(settings.MEDIA_ROOT) / bob.avatar.name
    mine = [make_recording(alice), make_recording(alice)]
    theirs = make_recording(bob)
    alice_phone, alice_laptop, bob_client = signed_in(alice), signed_in(alice), signed_in(bob)
    bob_inbox = Inbox(layer, user_group(bob.id))
    carol_inbox = Inbox(layer, user_group(carol.id))

    with django_capture_on_commit_callbacks(execute=True):
        services.user_delete(user=alice, password=PASSWORD)

    assert not User.objects.filter(id=alice.id).exists()
    assert not Recording.objects.filter(id__in=[r.id for r in mine]).exists()
    assert not any(recording_path(r).exists() for r in mine) and not avatar.exists()
    assert not FriendRequest.objects.exists() and not Block.objects.exists()
    assert not PresenceConnection.objects.exists()
    # Every device of Alice is signed out; Bob stays signed in, with all he had.
    assert not is_signed_in(alice_phone) and not is_signed_in(alice_laptop)
    assert is_signed_in(bob_client)
    assert Session.objects.count() == 1
    assert recording_path(theirs).is_file() and bob_avatar.is_file()
    assert Recording.objects.filter(owner=bob).count() == 1
    assert Friendship.objects.count() == 1 and friendship_exists(user_a=bob, user_b=carol)
    assert User.objects.filter(username__in=["bob", "carol", "dave"]).count() == 3
    # Friends see Alice go offline and leave their lists and recordings; Carol, who
    # had her request, reloads hers.
    events = bob_inbox.events()
    assert ("presence", {**events[0][1], "user_id": alice.id, "online": False}) == events[0]
    assert ("friends.changed", {}) in events
    assert ("recordings.changed", {"deleted": sorted(r.id for r in mine)}) in events
    assert carol_inbox.events() == [("friends.changed", {})]


@pytest.mark.django_db
def test_delete_ends_a_broadcast_whose_worker_does_not_answer(
    alice, bob, layer, settings, django_capture_on_commit_callbacks
):
    # The session's owner channel has nobody reading it (a dead worker): after
    # BROADCAST_REPLY_TIMEOUT_S the session is ended from the database, listeners told.
    settings.HEARTH = {**settings.HEARTH, "BROADCAST_REPLY_TIMEOUT_S": 0.3}
    with_password(alice)
    befriend(alice, bob)
    session = go_live(alice)
    recording = make_recording(alice, ended=False)
    Recording.objects.filter(id=recording.id).update(session=session)
    listeners = Inbox(layer, session_group(session.id))
    bob_inbox = Inbox(layer, user_group(bob.id))
    with django_capture_on_commit_callbacks(execute=True):
        services.user_delete(user=alice, password=PASSWORD)
    assert not LiveSession.objects.exists() and not recording_path(recording).exists()
    [(event, data)] = listeners.events()
    assert event == "session.ended" and data["reason"] == "account_deleted"
    assert data["recording_id"] == recording.id  # finalised (repaired), then deleted
    live = [data for event, data in bob_inbox.events() if event == "live"]
    assert live == [{**live[0], "live": False, "session_id": session.id}]


@pytest.mark.django_db
def test_a_closed_account_cannot_go_live(alice):
    from streams.services import LiveSessionError, live_session_start

    User.objects.filter(id=alice.id).update(is_active=False)
    with pytest.raises(LiveSessionError) as refused:
        live_session_start(broadcaster=alice, denoise=False, owner_channel="w")
    assert refused.value.code == "account_closed" and not LiveSession.objects.exists()


# --- With a live broadcast and open sockets (real media server in this process) --------


async def _closed_with(comm, code: int) -> None:
    """Read ``comm``'s frames until the server closes it; assert the close code."""
    while True:
        message = await comm.receive_output(timeout=20)
        if message["type"] == "websocket.close":
            assert message.get("code") == code, message
            return


async def _frames_until_marker(comm, user) -> list[dict]:
    """Every frame the page gets before a marker sent to its user group now."""
    marker = uuid.uuid4().hex
    await get_channel_layer().group_send(
        user_group(user.id),
        {"type": "hearth.event", "event": "test.marker", "data": {"marker": marker}},
    )
    frames = []
    while (frame := await comm.receive_json_from(timeout=20)).get("marker") != marker:
        frames.append(frame)
    return frames


@pytest.mark.django_db(transaction=True)
async def test_delete_while_live_ends_the_broadcast_and_closes_every_socket(
    noisy_jfk_wav: Path, caplog
) -> None:
    def people():
        ann, ben = with_password(make_user("ann")), make_user("ben")
        befriend(ann, ben)
        old = make_recording(ann)
        return ann, ben, old

    ann, ben, old = await database_sync_to_async(people)()
    live_tab, other_tab, friend = await connected(ann), await connected(ann), await connected(ben)
    player = MediaPlayer(str(noisy_jfk_wav), loop=True)
    broadcaster, listener = client_peer(), client_peer()
    try:
        broadcaster.addTransceiver(player.audio, direction="sendonly")
        await live_tab.send_json_to(
            {"type": "broadcast.start", "sdp": await offer_sdp(broadcaster), "denoise": False}
        )
        answer = await expect_matching(live_tab, "broadcast.answer")
        session_id = answer["session_id"]
        await accept_answer(broadcaster, answer["sdp"])
        listener.addTransceiver("audio", direction="recvonly")
        await friend.send_json_to(
            {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(listener)}
        )
        await accept_answer(listener, (await expect_matching(friend, "listen.answer"))["sdp"])
        await expect_matching(friend, "session.stats", lambda f: f.get("listeners") == 1)
        # Some audio in (half a second), so there is a recording to finalise: a broadcast
        # deleted before its first block leaves none (recording_id None), and a loaded
        # machine got there.
        room = media_server().rooms[session_id]
        await until(lambda: room.metrics.blocks_in >= 25, timeout=30)

        # A request's thread (not the database thread the media worker uses) deletes
        # Ann, and closes its database connection after, as the end of a request does.
        def delete_as_a_request() -> None:
            try:
                services.user_delete(user=ann, password=PASSWORD)
            finally:
                connection.close()

        deleting = asyncio.ensure_future(
            sync_to_async(delete_as_a_request, thread_sensitive=False)()
        )
        for tab in (live_tab, other_tab):
            await _closed_with(tab, 4401)
            await tab.disconnect()  # what daphne does once the socket is closed
        await asyncio.wait_for(deleting, 30)

        frames = await _frames_until_marker(friend, ben)
        [ended] = [f for f in frames if f["type"] == "session.ended"]
        assert ended["session_id"] == session_id and ended["reason"] == "account_deleted"
        assert ended["recording_id"] is not None  # the worker finalised it before deletion
        assert "did not stop it" not in caplog.text  # the worker did, not the fallback
        [off] = [f for f in frames if f["type"] == "live"]
        assert off["live"] is False and off["session_id"] == session_id
        # Offline (once as her sockets closed, once more as she was deleted).
        gone = [(f["user_id"], f["online"]) for f in frames if f["type"] == "presence"]
        assert gone and set(gone) == {(ann.id, False)}
        assert [f for f in frames if f["type"] == "friends.changed"]

        def leftovers():
            return (
                User.objects.filter(id=ann.id).exists(),
                LiveSession.objects.count(),
                Recording.objects.count(),
                User.objects.get(id=ben.id).is_active,
            )

        assert await database_sync_to_async(leftovers)() == (False, 0, 0, True)
        folder = Path(settings.MEDIA_ROOT) / "recordings" / str(ann.id)
        assert not recording_path(old).exists()
        assert not [p for p in folder.iterdir() if p.suffix in (".wav", ".ogg")]
    finally:
        for pc in (broadcaster, listener):
            await pc.close()
        player.audio.stop()
        await friend.disconnect()


# --- The confirm page ----------------------------------------------------------------


@pytest.mark.django_db
def test_delete_page_asks_for_the_password_then_deletes_and_signs_out(
    alice, _static, django_capture_on_commit_callbacks
):
    with_password(alice)
    make_recording(alice)
    client = signed_in(alice)
    account = client.get("/account/").content.decode()
    assert 'href="/account/delete/"' in account
    page = client.get("/account/delete/").content.decode()
    assert "your 1 recording" in page and 'autocomplete="current-password"' in page
    refused = client.post("/account/delete/", {"password": "wrong"})
    assert refused.status_code == 200 and b"not your password" in refused.content
    assert b'aria-invalid="true"' in refused.content
    assert User.objects.filter(id=alice.id, is_active=True).exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/account/delete/", {"password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    landing = client.get("/").content.decode()
    assert "Your account and your recordings were deleted." in landing
    assert not User.objects.filter(username="alice").exists()
    assert client.get("/account/").status_code == 302  # signed out
    assert Client().post("/login/", {"username": "alice", "password": PASSWORD}).status_code == 200
