"""The page WebSocket: authentication, presence, and clear errors for bad input."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.utils import timezone

from project.asgi import application
from streams.models import LiveSession
from streams.services import session_group
from tests.rtc_helpers import accept_answer, client_peer, communicator_for, expect, offer_sdp
from users.events import user_group
from users.models import Friendship, PresenceConnection, User

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def pair():
    def make():
        a = User.objects.create_user("ann", password="pw-ann-123456")
        b = User.objects.create_user("ben", password="pw-ben-123456")
        Friendship.objects.create(user_low=a, user_high=b)
        return a, b

    return await database_sync_to_async(make)()


async def _connected(user) -> WebsocketCommunicator:
    comm = communicator_for(user)
    connected, _ = await comm.connect()
    assert connected
    await expect(comm, "hello")
    return comm


async def _audio_offer() -> tuple[object, str]:
    pc = client_peer()
    pc.addTransceiver("audio", direction="sendonly")
    return pc, await offer_sdp(pc)


async def test_anonymous_socket_is_closed() -> None:
    from django.contrib.auth.models import AnonymousUser

    comm = communicator_for(AnonymousUser())
    connected, code = await comm.connect()
    assert not connected and code == 4401


async def test_foreign_origin_is_rejected() -> None:
    comm = WebsocketCommunicator(application, "/ws/", headers=[(b"origin", b"http://evil.example")])
    connected, _ = await comm.connect()
    assert not connected


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_request"),
        ('{"no": "type"}', "bad_request"),
        ('{"type": "launch.rockets"}', "unknown_type"),
        ('{"type": "broadcast.start", "sdp": "hello"}', "bad_sdp"),
        ('{"type": "broadcast.start", "sdp": "v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\n"}', "bad_sdp"),
        (
            '{"type": "broadcast.start", "sdp": "v=0\\r\\nm=audio 9 x", "denoise": "yes"}',
            "bad_request",
        ),
        ('{"type": "broadcast.stop"}', "not_live"),
        ('{"type": "listen.start", "session_id": "7", "sdp": "v=0"}', "bad_request"),
        (
            '{"type": "listen.start", "session_id": 99999, "sdp": "v=0\\r\\nm=audio 9 x"}',
            "not_allowed",
        ),
        ('{"type": "listen.stop", "session_id": 5}', "not_listening"),
    ],
)
async def test_bad_frames_get_error_frames_and_socket_stays_open(
    pair, frame: str, code: str
) -> None:
    ann, _ = pair
    comm = await _connected(ann)
    await comm.send_to(text_data=frame)
    error = await expect(comm, "error")
    assert error["code"] == code and error["message"]
    await comm.send_json_to({"type": "ping"})  # still served afterwards
    assert (await expect(comm, "pong"))["type"] == "pong"
    await comm.disconnect()


async def test_oversized_and_binary_frames_are_refused(pair) -> None:
    ann, _ = pair
    comm = await _connected(ann)
    await comm.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * 200_000}))
    assert (await expect(comm, "error"))["code"] == "too_large"
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await expect(comm, "error"))["code"] == "bad_frame"
    big_sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" + "a=xxxxxxxxxx\r\n" * 5_000
    await comm.send_json_to({"type": "broadcast.start", "sdp": big_sdp})
    assert (await expect(comm, "error"))["code"] == "sdp_too_large"
    await comm.disconnect()


async def test_malformed_sdp_with_audio_line_is_refused_and_no_session_left(pair) -> None:
    ann, _ = pair
    comm = await _connected(ann)
    await comm.send_json_to(
        {
            "type": "broadcast.start",
            "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=garbage\r\n",
        }
    )
    error = await expect(comm, "error")
    assert error["code"] == "bad_sdp" and error["ref"] == "broadcast.start"
    live = await database_sync_to_async(LiveSession.objects.filter(ended_at__isnull=True).count)()
    assert live == 0
    await comm.disconnect()


async def test_second_go_live_of_same_user_is_refused_cleanly(pair) -> None:
    ann, ben = pair
    tab1, tab2, friend = await _connected(ann), await _connected(ann), await _connected(ben)
    pc1, sdp1 = await _audio_offer()
    await tab1.send_json_to({"type": "broadcast.start", "sdp": sdp1, "denoise": False})
    first = await expect(tab1, "broadcast.answer")
    pc2, sdp2 = await _audio_offer()
    await tab2.send_json_to({"type": "broadcast.start", "sdp": sdp2})
    refused = await expect(tab2, "error")
    assert refused["code"] == "already_live"
    assert (await expect(friend, "live"))["session_id"] == first["session_id"]
    # The first broadcast is untouched and stops normally.
    await tab1.send_json_to({"type": "broadcast.stop"})
    ended = await expect(tab1, "broadcast.ended")
    assert ended["session_id"] == first["session_id"]
    off = await expect(friend, "live")
    assert off["live"] is False
    for pc in (pc1, pc2):
        await pc.close()
    for comm in (tab1, tab2, friend):
        await comm.disconnect()


async def test_closing_the_broadcasting_tab_ends_the_session(pair) -> None:
    ann, ben = pair
    tab, friend = await _connected(ann), await _connected(ben)
    pc, sdp = await _audio_offer()
    await tab.send_json_to({"type": "broadcast.start", "sdp": sdp})
    session_id = (await expect(tab, "broadcast.answer"))["session_id"]
    assert (await expect(friend, "live"))["live"] is True
    await tab.disconnect()
    event = await expect(friend, "live")
    assert event == {**event, "live": False, "session_id": session_id}
    session = await database_sync_to_async(LiveSession.objects.get)(id=session_id)
    assert session.ended_at is not None and session.end_reason == "disconnected"
    await pc.close()
    await friend.disconnect()


async def test_presence_counts_tabs_as_one(pair) -> None:
    ann, ben = pair
    watcher = await _connected(ben)
    tab1 = await _connected(ann)
    assert (await expect(watcher, "presence")) == {
        "type": "presence",
        "user_id": ann.id,
        "username": "ann",
        "display_name": "",
        "online": True,
    }
    tab2 = await _connected(ann)
    await tab1.disconnect()
    # Ann is still online in tab 2: no presence event reaches Ben.
    assert await watcher.receive_nothing(timeout=0.5)
    assert await database_sync_to_async(PresenceConnection.objects.filter(user=ann).count)() == 1
    await tab2.disconnect()
    offline = await expect(watcher, "presence")
    assert offline["online"] is False and offline["user_id"] == ann.id
    await watcher.disconnect()


async def test_dropped_peer_connection_ends_session_and_page_can_go_live_again(pair) -> None:
    ann, ben = pair
    tab, friend = await _connected(ann), await _connected(ben)
    pc, sdp = await _audio_offer()
    await tab.send_json_to({"type": "broadcast.start", "sdp": sdp, "denoise": False})
    answer = await expect(tab, "broadcast.answer")
    await accept_answer(pc, answer["sdp"])
    await asyncio.sleep(1.0)
    await pc.close()  # the browser's media connection drops; its WebSocket stays open
    ended = await expect(tab, "session.ended", timeout=20)
    assert ended["session_id"] == answer["session_id"] and ended["reason"] == "disconnected"
    assert (await expect(friend, "live", timeout=5))["live"] is True
    assert (await expect(friend, "live", timeout=5))["live"] is False
    pc2, sdp2 = await _audio_offer()
    await tab.send_json_to({"type": "broadcast.start", "sdp": sdp2, "denoise": False})
    assert (await expect(tab, "broadcast.answer"))["session_id"] != answer["session_id"]
    await tab.send_json_to({"type": "broadcast.stop"})
    await expect(tab, "broadcast.ended")
    await pc2.close()
    for comm in (tab, friend):
        await comm.disconnect()


# --- Leaving session groups (session.stats stops after ended/refused) ----------------

PLAIN_SDP = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


async def _live_row(user, owner_channel: str) -> LiveSession:
    """A live session row owned by a fake media server listening on ``owner_channel``."""
    return await database_sync_to_async(LiveSession.objects.create)(
        broadcaster=user, owner_channel=owner_channel, heartbeat_at=timezone.now()
    )


async def _group_event(group: str, event: str, data: dict) -> None:
    await get_channel_layer().group_send(
        group, {"type": "hearth.event", "event": event, "data": data}
    )


async def _frames_until_marker(comm: WebsocketCommunicator, user) -> list[dict]:
    """Everything the page receives before a marker sent to its user group now.

    Group sends reach a channel in order, so a ``session.stats`` sent to a session group
    the page is still in arrives before the marker.
    """
    marker = uuid.uuid4().hex
    await _group_event(user_group(user.id), "test.marker", {"marker": marker})
    frames = []
    while True:
        frame = await comm.receive_json_from(timeout=10)
        if frame.get("marker") == marker:
            return frames
        frames.append(frame)


async def _listen(comm: WebsocketCommunicator, session_id: int, owner_channel: str) -> dict:
    """Send ``listen.start`` and return the offer the page forwarded to the owner."""
    await comm.send_json_to({"type": "listen.start", "session_id": session_id, "sdp": PLAIN_SDP})
    forwarded = await get_channel_layer().receive(owner_channel)
    assert forwarded["type"] == "rtc.listen.start" and forwarded["session_id"] == session_id
    return forwarded


async def test_listener_leaves_the_session_group_when_the_session_ends(pair) -> None:
    ann, ben = pair
    owner = await get_channel_layer().new_channel()
    session = await _live_row(ann, owner)
    page = await _connected(ben)
    await _listen(page, session.id, owner)
    group = session_group(session.id)
    await _group_event(group, "session.stats", {"session_id": session.id, "listeners": 1})
    assert (await expect(page, "session.stats"))["listeners"] == 1  # in the group while listening
    ended = {"session_id": session.id, "reason": "stopped", "recording_id": None}
    await _group_event(group, "session.ended", ended)
    assert (await expect(page, "session.ended"))["session_id"] == session.id
    await _group_event(group, "session.stats", {"session_id": session.id, "listeners": 0})
    assert [f for f in await _frames_until_marker(page, ben) if f["type"] == "session.stats"] == []
    await page.disconnect()


async def test_refused_listener_leaves_the_session_group_and_may_listen_again(pair) -> None:
    ann, ben = pair
    owner = await get_channel_layer().new_channel()
    session = await _live_row(ann, owner)
    page = await _connected(ben)
    forwarded = await _listen(page, session.id, owner)
    await get_channel_layer().send(
        forwarded["reply_channel"],
        {
            "type": "rtc.listen.error",
            "session_id": session.id,
            "code": "not_live",
            "message": "This broadcast has ended.",
        },
    )
    refused = await expect(page, "error")
    assert refused["code"] == "not_live" and refused["ref"] == "listen.start"
    group = session_group(session.id)
    await _group_event(group, "session.stats", {"session_id": session.id, "listeners": 3})
    assert [f for f in await _frames_until_marker(page, ben) if f["type"] == "session.stats"] == []
    # The page is not stuck out of the group: listening again joins it again.
    await _listen(page, session.id, owner)
    await _group_event(group, "session.stats", {"session_id": session.id, "listeners": 4})
    assert (await expect(page, "session.stats"))["listeners"] == 4
    await page.disconnect()


async def test_broadcaster_leaves_the_session_group_when_the_media_server_ends_it(pair) -> None:
    ann, _ = pair
    tab = await _connected(ann)
    pc, sdp = await _audio_offer()
    await tab.send_json_to({"type": "broadcast.start", "sdp": sdp, "denoise": False})
    answer = await expect(tab, "broadcast.answer")
    session_id = answer["session_id"]
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    await accept_answer(pc, answer["sdp"])
    await asyncio.wait_for(connected.wait(), timeout=20)
    await pc.close()  # the media connection drops: the media server ends the session
    assert (await expect(tab, "session.ended", timeout=20))["session_id"] == session_id
    await _group_event(
        session_group(session_id), "session.stats", {"session_id": session_id, "listeners": 2}
    )
    assert [f for f in await _frames_until_marker(tab, ann) if f["type"] == "session.stats"] == []
    await tab.disconnect()


async def test_an_event_for_a_socket_that_just_closed_does_not_kill_the_consumer() -> None:
    # Regression: daphne raises when a consumer sends on a socket whose client left a
    # moment ago; the error escaped hearth_event, ended the application instance
    # ("Exception inside application") and with it the queued disconnect() cleanup.
    from streams.consumers import HearthConsumer

    consumer = HearthConsumer()
    consumer.listening = {}
    consumer.broadcasting = None

    async def closed_send(message):
        raise ConnectionError("Attempt to send on a closed protocol")

    consumer.base_send = closed_send
    await consumer.hearth_event({"event": "presence", "data": {"user_id": 1, "online": True}})


# --- A dead owner process (kill -9) ------------------------------------------------


async def test_listen_to_a_dead_owner_gets_owner_unreachable_and_leaves_the_group(
    pair, settings
) -> None:
    # Regression: the offer was forwarded to the owner's channel and nothing answered
    # (its process was killed), so the page waited 20 s+ for the stale cleanup.
    settings.HEARTH = {**settings.HEARTH, "LISTEN_REPLY_TIMEOUT_S": 0.2}
    ann, ben = pair
    dead_owner = await get_channel_layer().new_channel()  # nobody reads it
    session = await _live_row(ann, dead_owner)
    page = await _connected(ben)
    await page.send_json_to({"type": "listen.start", "session_id": session.id, "sdp": PLAIN_SDP})
    refused = await expect(page, "error", timeout=5)
    assert refused["code"] == "owner_unreachable" and refused["ref"] == "listen.start"
    assert "broadcast" in refused["message"].lower()
    group = session_group(session.id)
    await _group_event(group, "session.stats", {"session_id": session.id, "listeners": 1})
    assert [f for f in await _frames_until_marker(page, ben) if f["type"] == "session.stats"] == []
    await page.disconnect()


async def test_an_answer_in_time_cancels_the_listen_reply_timeout(pair, settings) -> None:
    settings.HEARTH = {**settings.HEARTH, "LISTEN_REPLY_TIMEOUT_S": 0.2}
    ann, ben = pair
    owner = await get_channel_layer().new_channel()
    session = await _live_row(ann, owner)
    page = await _connected(ben)
    forwarded = await _listen(page, session.id, owner)
    await get_channel_layer().send(
        forwarded["reply_channel"],
        {"type": "rtc.listen.answer", "session_id": session.id, "sdp": "v=0 answer"},
    )
    assert (await expect(page, "listen.answer"))["sdp"] == "v=0 answer"
    await asyncio.sleep(0.5)  # well past the timeout: no error may follow the answer
    assert [f for f in await _frames_until_marker(page, ben) if f["type"] == "error"] == []
    await page.disconnect()


async def test_a_stale_session_cannot_be_listened_to(pair) -> None:
    ann, ben = pair
    owner = await get_channel_layer().new_channel()
    session = await _live_row(ann, owner)
    stale = timezone.now() - timedelta(seconds=settings.HEARTH["SESSION_STALE_S"] + 5)
    await database_sync_to_async(LiveSession.objects.filter(id=session.id).update)(
        heartbeat_at=stale
    )
    page = await _connected(ben)
    await page.send_json_to({"type": "listen.start", "session_id": session.id, "sdp": PLAIN_SDP})
    assert (await expect(page, "error"))["code"] == "not_allowed"
    await page.disconnect()
