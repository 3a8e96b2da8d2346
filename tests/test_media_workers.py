"""Media workers: announcement, placement of go-lives, dead-worker cleanup, and media
cut on the server when a listener may no longer receive it.

The placement tests run the page's consumer against fake workers (channels this test
reads on the in-memory layer), so the routing itself is what is checked.
"""

from __future__ import annotations

import asyncio
import os
import time
import wave
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from streams import rtc, selectors, services
from streams.models import LiveSession, MediaWorker, Recording
from tests.factories import befriend, make_user
from tests.rtc_helpers import (
    AudioSink,
    accept_answer,
    client_peer,
    close_all,
    communicator_for,
    expect,
    offer_sdp,
)
from users.models import Friendship, PresenceConnection

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_S = 10.0


def _worker(channel: str, *, sessions: int = 0, capacity: int = 2, age_s: float = 0) -> MediaWorker:
    return MediaWorker.objects.create(
        channel_name=channel,
        host="test",
        pid=1,
        capacity=capacity,
        sessions=sessions,
        heartbeat_at=timezone.now() - timedelta(seconds=age_s),
    )


# -- services and selectors -------------------------------------------------------------
def test_candidates_are_live_workers_with_room_least_loaded_first(settings) -> None:
    settings.HEARTH = {**settings.HEARTH, "WORKER_STALE_S": 10.0}
    _worker("w-busy", sessions=1, capacity=2)
    _worker("w-idle", sessions=0, capacity=2)
    _worker("w-big", sessions=1, capacity=4)
    _worker("w-full", sessions=2, capacity=2)
    _worker("w-dead", sessions=0, age_s=60)
    names = [w.channel_name for w in selectors.media_worker_candidates()]
    assert names == ["w-idle", "w-big", "w-busy"]
    assert [w.channel_name for w in selectors.media_worker_candidates(exclude=["w-idle"])] == [
        "w-big",
        "w-busy",
    ]
    assert selectors.media_workers_alive() == 4


def test_reserving_a_slot_never_exceeds_capacity() -> None:
    worker = _worker("w", sessions=0, capacity=2)
    taken = [services.media_worker_reserve(worker_id=worker.id) for _ in range(4)]
    assert taken == [True, True, False, False]
    worker.refresh_from_db()
    assert worker.sessions == 2


def test_heartbeat_recreates_a_row_deleted_while_the_worker_lived() -> None:
    services.media_worker_heartbeat(channel_name="w", sessions=1, host="h", pid=2, capacity=3)
    worker = MediaWorker.objects.get(channel_name="w")
    assert (worker.sessions, worker.capacity) == (1, 3)
    with pytest.raises(ValueError):
        services.media_worker_register(channel_name="x", host="h", pid=2, capacity=0)


def _half_written_wav(path: Path, frames: int) -> None:
    """A WAV whose writer died before patching its header (sizes still 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(b"")
    with path.open("ab") as raw:
        raw.write(np.zeros(frames, np.int16).tobytes())


def test_dead_worker_sessions_end_as_worker_lost_with_repaired_recordings(settings) -> None:
    settings.HEARTH = {**settings.HEARTH, "WORKER_STALE_S": 10.0}
    alice, bob = make_user("alice"), make_user("bob")
    _worker("w-dead", age_s=30)
    _worker("w-self", age_s=30)  # the caller's own worker is never judged
    _worker("w-live")
    lost, _ = services.live_session_start(broadcaster=alice, denoise=False, owner_channel="w-dead")
    kept, _ = services.live_session_start(broadcaster=bob, denoise=False, owner_channel="w-live")
    recording = Recording.objects.get(session=lost)
    _half_written_wav(Path(recording.file.path), frames=48_000)
    old = time.time() - 30
    os.utime(recording.file.path, (old, old))  # its writer stopped with the worker

    assert services.media_worker_end_dead(exclude_channel="w-self") == 1

    lost.refresh_from_db()
    kept.refresh_from_db()
    recording.refresh_from_db()
    assert lost.end_reason == "worker_lost" and kept.ended_at is None
    assert recording.duration_s == pytest.approx(1.0)  # header repaired
    assert set(MediaWorker.objects.values_list("channel_name", flat=True)) == {"w-self", "w-live"}


# -- placement by the page's consumer -------------------------------------------------
@pytest.fixture
def no_local_worker(settings):
    settings.HEARTH = {**settings.HEARTH, "MEDIA_IN_PROCESS": False, "WORKER_STALE_S": 10.0}


async def _page(user):
    comm = communicator_for(user)
    ok, _ = await comm.connect()
    assert ok
    await expect(comm, "hello")
    return comm


async def _pc_connected(pc) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while pc.connectionState != "connected":
        assert asyncio.get_running_loop().time() < deadline, pc.connectionState
        await asyncio.sleep(0.05)


async def _offer() -> tuple[object, str]:
    pc = client_peer()
    pc.addTransceiver("audio", direction="sendonly")
    return pc, await offer_sdp(pc)


async def test_go_live_is_refused_clearly_without_workers_or_when_all_are_full(
    no_local_worker,
) -> None:
    alice = await database_sync_to_async(make_user)("alice")
    page = await _page(alice)
    pc, sdp = await _offer()
    try:
        await page.send_json_to({"type": "broadcast.start", "sdp": sdp})
        error = await expect(page, "error")
        assert error["code"] == "unavailable" and error["ref"] == "broadcast.start"

        await database_sync_to_async(_worker)("w-full", sessions=2, capacity=2)
        await page.send_json_to({"type": "broadcast.start", "sdp": sdp})
        error = await expect(page, "error")
        assert error["code"] == "server_full"
    finally:
        await pc.close()
        await page.disconnect()


async def test_go_live_goes_to_the_least_loaded_worker_and_on_when_one_is_full(
    no_local_worker,
) -> None:
    layer = get_channel_layer()
    idle, busy = await layer.new_channel(), await layer.new_channel()
    await database_sync_to_async(_worker)(busy, sessions=1, capacity=2)
    await database_sync_to_async(_worker)(idle, sessions=0, capacity=2)
    alice = await database_sync_to_async(make_user)("alice")
    page = await _page(alice)
    pc, sdp = await _offer()
    try:
        await page.send_json_to({"type": "broadcast.start", "sdp": sdp, "denoise": False})
        first = await asyncio.wait_for(layer.receive(idle), WAIT_S)
        assert first["type"] == "rtc.broadcast.start" and first["user_id"] == alice.id
        assert first["sdp"] == sdp and first["denoise"] is False
        # The idle worker turned out full (its count was stale): the page tries the next.
        await layer.send(
            first["reply_channel"],
            {
                "type": "rtc.broadcast.error",
                "request_id": first["request_id"],
                "worker_channel": idle,
                "code": "worker_full",
                "message": "full",
            },
        )
        second = await asyncio.wait_for(layer.receive(busy), WAIT_S)
        assert second["request_id"] != first["request_id"]  # one id per attempt
        assert second["sdp"] == sdp and second["user_id"] == alice.id
        session, _ = await database_sync_to_async(services.live_session_start)(
            broadcaster=alice, denoise=False, owner_channel=busy
        )
        await layer.send(
            second["reply_channel"],
            {
                "type": "rtc.broadcast.answer",
                "request_id": second["request_id"],
                "worker_channel": busy,
                "session_id": session.id,
                "sdp": "v=0 answer",
            },
        )
        answer = await expect(page, "broadcast.answer")
        assert answer["session_id"] == session.id

        # Stopping goes to the worker that holds it, and its reply ends it on the page.
        await page.send_json_to({"type": "broadcast.stop"})
        stop = await asyncio.wait_for(layer.receive(busy), WAIT_S)
        assert stop["type"] == "rtc.broadcast.stop" and stop["session_id"] == session.id
        await layer.send(
            stop["reply_channel"],
            {"type": "rtc.broadcast.ended", "session_id": session.id, "recording_id": 7},
        )
        ended = await expect(page, "broadcast.ended")
        assert ended["recording_id"] == 7
    finally:
        await pc.close()
        await page.disconnect()


async def test_an_answer_after_the_page_gave_up_is_stopped_on_its_worker(
    no_local_worker, settings
) -> None:
    settings.HEARTH = {**settings.HEARTH, "BROADCAST_REPLY_TIMEOUT_S": 0.2}
    layer = get_channel_layer()
    worker = await layer.new_channel()
    await database_sync_to_async(_worker)(worker)
    alice = await database_sync_to_async(make_user)("alice")
    page = await _page(alice)
    pc, sdp = await _offer()
    try:
        await page.send_json_to({"type": "broadcast.start", "sdp": sdp})
        request = await asyncio.wait_for(layer.receive(worker), WAIT_S)
        error = await expect(page, "error")
        assert error["code"] == "worker_unreachable"
        await layer.send(
            request["reply_channel"],
            {
                "type": "rtc.broadcast.answer",
                "request_id": request["request_id"],
                "worker_channel": worker,
                "session_id": 9,
                "sdp": "v=0 late",
            },
        )
        stop = await asyncio.wait_for(layer.receive(worker), WAIT_S)
        assert stop["type"] == "rtc.broadcast.stop" and stop["session_id"] == 9
        assert stop["reason"] == "abandoned"
    finally:
        await pc.close()
        await page.disconnect()


# -- media cut on the server -------------------------------------------------------------
async def test_the_worker_cuts_a_listener_no_longer_allowed_whatever_its_page_does(
    noisy_jfk_wav: Path,
) -> None:
    from aiortc.contrib.media import MediaPlayer

    def people():
        alice, bob = make_user("alice"), make_user("bob")
        befriend(alice, bob)
        return alice, bob

    alice, bob = await database_sync_to_async(people)()
    server = rtc.media_server()
    broadcaster = await _page(alice)
    player = MediaPlayer(str(noisy_jfk_wav), loop=True)
    pcs = []
    try:
        pc = client_peer()
        pcs.append(pc)
        pc.addTransceiver(player.audio, direction="sendonly")
        await broadcaster.send_json_to(
            {"type": "broadcast.start", "sdp": await offer_sdp(pc), "denoise": False}
        )
        answer = await expect(broadcaster, "broadcast.answer", timeout=WAIT_S)
        await accept_answer(pc, answer["sdp"])
        await _pc_connected(pc)
        room = server.rooms[answer["session_id"]]

        # Bob's "page" is a bare channel that ignores every event (a hostile client).
        layer = get_channel_layer()
        bob_page = await layer.new_channel()
        await database_sync_to_async(PresenceConnection.objects.create)(
            user=bob, channel_name=bob_page, last_seen=timezone.now()
        )
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while room.runner is None:  # the graph starts once the broadcaster's audio arrives
            assert asyncio.get_running_loop().time() < deadline, "no audio from the broadcaster"
            await asyncio.sleep(0.05)
        listener_pc = client_peer()
        pcs.append(listener_pc)
        listener_pc.addTransceiver("audio", direction="recvonly")
        got: asyncio.Future = asyncio.get_running_loop().create_future()
        listener_pc.on("track", lambda t: got.done() or got.set_result(t))
        sdp = await room.add_listener(
            key=bob_page, user_id=bob.id, offer_sdp=await offer_sdp(listener_pc)
        )
        await accept_answer(listener_pc, sdp)
        sink = AudioSink(await asyncio.wait_for(got, WAIT_S))
        await _pc_connected(listener_pc)

        await server.access_check()  # still a friend, page present: kept
        assert bob_page in room.listeners

        # Unfriended without any event reaching Bob's page.
        await database_sync_to_async(Friendship.objects.all().delete)()
        await server.access_check()
        assert bob_page not in room.listeners
        refusal = await asyncio.wait_for(layer.receive(bob_page), WAIT_S)
        assert refusal["type"] == "rtc.listen.error" and refusal["code"] == "not_allowed"
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while listener_pc.connectionState != "closed":
            assert asyncio.get_running_loop().time() < deadline, listener_pc.connectionState
            await asyncio.sleep(0.05)
        await sink.stop()

        # The broadcaster's page disappearing (its presence row gone) stops the broadcast.
        await database_sync_to_async(PresenceConnection.objects.filter(user=alice).delete)()
        await server.access_check()
        ended = await expect(broadcaster, "session.ended", timeout=WAIT_S)
        assert ended["reason"] == "disconnected"
        session = await database_sync_to_async(LiveSession.objects.get)(id=answer["session_id"])
        assert session.end_reason == "disconnected"
    finally:
        if player.audio is not None:
            player.audio.stop()
        await close_all(pcs, [broadcaster])
