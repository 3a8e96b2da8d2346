"""A broadcasting page whose WebSocket drops keeps its broadcast for a grace period
(``BROADCAST_GRACE_S``) and takes it back when its socket returns
(``broadcast.resume``); past the grace, or after a server restart, it has ended."""

from __future__ import annotations

import asyncio
import wave

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from streams import rtc
from streams.models import LiveSession, Recording
from tests.live_flow import go_live, listen, until
from tests.rtc_helpers import (
    accept_answer,
    client_peer,
    close_all,
    communicator_for,
    connected,
    expect,
    friends_make,
    offer_sdp,
)
from users.models import PresenceConnection

pytestmark = pytest.mark.django_db(transaction=True)


def _grace(settings, seconds: float) -> None:
    settings.HEARTH = {**settings.HEARTH, "BROADCAST_GRACE_S": seconds}


async def _session(session_id: int) -> LiveSession:
    return await database_sync_to_async(LiveSession.objects.get)(id=session_id)


async def test_a_dropped_page_socket_keeps_the_broadcast_and_the_page_takes_it_back(
    settings, noisy_jfk_wav
) -> None:
    _grace(settings, 30.0)
    ann, ben = await friends_make()
    tab, friend = await connected(ann), await connected(ben)
    pc, player, session_id = await go_live(tab, noisy_jfk_wav)
    listener_pc, sink = await listen(friend, session_id)
    tab2 = None
    try:
        await until(lambda: len(sink.samples) > 48_000 // 2)
        await tab.disconnect()  # the page's socket drops; its media goes on
        room = rtc.media_server().rooms[session_id]
        await until(lambda: room.owner_page is None)
        heard = len(sink.samples)
        await until(lambda: len(sink.samples) > heard + 48_000 // 2)  # friends still hear it
        assert (await _session(session_id)).ended_at is None

        tab2 = await connected(ann)  # the socket is back
        await tab2.send_json_to({"type": "broadcast.resume", "session_id": session_id})
        resumed = await expect(tab2, "broadcast.resumed")
        assert resumed["session_id"] == session_id and resumed["listeners"] == 1
        assert resumed["muted"] is False
        names = await expect(tab2, "session.listeners")  # who listens, to the new page
        assert [p["username"] for p in names["listeners"]] == ["ben"]

        # The resumed page drives the broadcast: its switches and its stop apply.
        await tab2.send_json_to({"type": "broadcast.control", "muted": True})
        assert (await expect(tab2, "session.state"))["muted"] is True
        await tab2.send_json_to({"type": "broadcast.stop"})
        ended = await expect(tab2, "broadcast.ended")
        session = await _session(session_id)
        assert session.end_reason == "stopped"
        recording = await database_sync_to_async(Recording.objects.get)(session_id=session_id)
        assert ended["recording_id"] == recording.id  # one recording, across the drop
        with wave.open(str(settings.MEDIA_ROOT / recording.file.name)) as wav:
            seconds = wav.getnframes() / wav.getframerate()
        wall = (session.ended_at - session.started_at).total_seconds()
        assert seconds > 0.7 * wall - 1.0  # written all along, the drop included
    finally:
        player.audio.stop()
        await sink.stop()
        await close_all([pc, listener_pc], [friend] + ([tab2] if tab2 else []))


async def test_past_the_grace_the_broadcast_ends_and_cannot_be_resumed(settings) -> None:
    _grace(settings, 0.5)
    ann, ben = await friends_make()
    tab, friend = await connected(ann), await connected(ben)
    pc = None
    try:
        pc = client_peer()
        pc.addTransceiver("audio", direction="sendonly")
        await tab.send_json_to({"type": "broadcast.start", "sdp": await offer_sdp(pc)})
        answer = await expect(tab, "broadcast.answer")
        await accept_answer(pc, answer["sdp"])
        session_id = answer["session_id"]
        assert (await expect(friend, "live"))["live"] is True
        await tab.disconnect()
        ended = await expect(friend, "live", timeout=15)
        assert ended["session_id"] == session_id and ended["live"] is False
        assert (await _session(session_id)).end_reason == "disconnected"

        tab = await connected(ann)
        await tab.send_json_to({"type": "broadcast.resume", "session_id": session_id})
        error = await expect(tab, "error")
        assert error["code"] == "not_live" and error["ref"] == "broadcast.resume"
    finally:
        await close_all([pc], [tab, friend])


async def test_only_the_broadcasters_own_live_session_can_be_resumed(settings) -> None:
    ann, ben = await friends_make()
    ben_tab = await connected(ben)
    session = await database_sync_to_async(LiveSession.objects.create)(
        broadcaster=ann, owner_channel="worker-x", heartbeat_at=timezone.now()
    )
    await ben_tab.send_json_to({"type": "broadcast.resume", "session_id": session.id})
    assert (await expect(ben_tab, "error"))["code"] == "not_allowed"

    # Ended by a server restart: the page is told so, to offer going live again.
    await database_sync_to_async(LiveSession.objects.filter(id=session.id).update)(
        ended_at=timezone.now(), end_reason="server_shutdown"
    )
    ann_tab = await connected(ann)
    await ann_tab.send_json_to({"type": "broadcast.resume", "session_id": session.id})
    assert (await expect(ann_tab, "error"))["code"] == "server_restarted"
    await close_all([], [ann_tab, ben_tab])


async def test_hello_names_the_server_instance(settings) -> None:
    ann, _ = await friends_make()
    comm = communicator_for(ann)
    assert (await comm.connect())[0]
    hello = await expect(comm, "hello")
    assert isinstance(hello["server"], str) and len(hello["server"]) >= 8
    await comm.disconnect()


async def test_the_access_check_honours_the_grace_and_a_reattached_page(settings) -> None:
    _grace(settings, 30.0)
    ann, _ = await friends_make()
    tab = await connected(ann)
    pc = client_peer()
    pc.addTransceiver("audio", direction="sendonly")
    try:
        await tab.send_json_to({"type": "broadcast.start", "sdp": await offer_sdp(pc)})
        answer = await expect(tab, "broadcast.answer")
        await accept_answer(pc, answer["sdp"])
        server = rtc.media_server()
        room = server.rooms[answer["session_id"]]
        page = room.owner_page
        # The page's presence row vanishes (pruned) while its socket lingers.
        await database_sync_to_async(PresenceConnection.objects.filter(user=ann).delete)()
        await server.access_check()
        assert room.owner_page is None and not room.closing  # in grace, not stopped
        assert (await _session(room.session_id)).ended_at is None
        room.attach(page)  # the page came back
        await asyncio.sleep(0)
        assert room.owner_page == page and room._grace_task is None
        # A stale detach from a page that no longer owns it changes nothing.
        assert room.detach("another-page") is False and room.owner_page == page
    finally:
        await close_all([pc], [tab])
