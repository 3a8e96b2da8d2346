"""Races of the media worker tier found in review, each with the behaviour it must have.

Go-lives opening while they are stopped, capacity while opening, stops while a
go-live is pending, placement failures, silent workers, stamps during shutdown, and
workers whose stamp is late while they still write.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from streams import rtc, selectors, services
from streams.models import LiveSession, MediaWorker
from streams.processors.base import PassThrough
from streams.processors.denoise import ALGORITHMIC_DELAY_SAMPLES
from tests.factories import make_user
from tests.rtc_helpers import client_peer, communicator_for, expect, offer_sdp

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_S = 10.0


class _DelayedPassThrough(PassThrough):
    """Stands in for DeepFilterNet3 (same declared latency, no model)."""

    @property
    def latency_samples(self) -> int:
        return ALGORITHMIC_DELAY_SAMPLES


def _slow_denoiser(monkeypatch, seconds: float) -> None:
    """Make building the denoiser take ``seconds`` (as loading the model does)."""

    def build(**_: object) -> PassThrough:
        time.sleep(seconds)
        return _DelayedPassThrough()

    monkeypatch.setattr(rtc, "audio_chain_build", build)


async def _offer():
    pc = client_peer()
    pc.addTransceiver("audio", direction="sendonly")
    return pc, await offer_sdp(pc)


async def _page(user):
    page = communicator_for(user)
    assert (await page.connect())[0]
    await expect(page, "hello")
    return page


async def _until(condition, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_broadcast_stopped_while_opening_creates_nothing_after(monkeypatch) -> None:
    # Before: the room was in server.rooms while open() ran, and open() never looked
    # at ``closing``: a stop (the page gone) mid-open closed an empty room, and open()
    # then made the peer connection and started the graph, which nothing ever closed.
    _slow_denoiser(monkeypatch, 1.0)
    alice = await database_sync_to_async(make_user)("alice")
    server = rtc.media_server()
    await server.ensure_started()
    pc, sdp = await _offer()
    try:
        start = asyncio.ensure_future(
            server.broadcast_start(user=alice, offer_sdp=sdp, denoise=True, owner_page="gone")
        )
        await _until(lambda: server.rooms, "no room")
        room = next(iter(server.rooms.values()))
        await server.access_check()  # no presence row for the page "gone": stop it
        with pytest.raises(rtc.SignalingError) as refused:
            await start
        assert refused.value.code == "not_live"
        assert room.pc is None or room.pc.connectionState == "closed"
        assert room.runner is None
        assert server.rooms == {}
        session = await database_sync_to_async(LiveSession.objects.get)(id=room.session_id)
        assert session.ended_at is not None
    finally:
        await pc.close()


async def test_a_go_live_being_opened_counts_once_against_capacity(monkeypatch) -> None:
    # Before: it counted in both ``rooms`` and ``_starting``: a worker of capacity 2
    # opening one go-live refused a second as full.
    _slow_denoiser(monkeypatch, 1.0)
    alice, bob = await database_sync_to_async(lambda: (make_user("alice"), make_user("bob")))()
    server = rtc.media_server()
    server.capacity = 2
    await server.ensure_started()
    (pc1, sdp1), (pc2, sdp2) = await _offer(), await _offer()
    try:
        first = asyncio.ensure_future(
            server.broadcast_start(user=alice, offer_sdp=sdp1, denoise=True)
        )
        await _until(lambda: server.rooms, "no room")
        await server.broadcast_start(user=bob, offer_sdp=sdp2, denoise=True)
        await first
        with pytest.raises(rtc.SignalingError) as full:
            await server.broadcast_start(user=alice, offer_sdp=sdp1, denoise=True)
        assert full.value.code == "worker_full"
    finally:
        await server.shutdown()
        await pc1.close()
        await pc2.close()


@pytest.fixture
def no_local_worker(settings):
    settings.HEARTH = {
        **settings.HEARTH,
        "MEDIA_IN_PROCESS": False,
        "WORKER_STALE_S": 10.0,
        "BROADCAST_REPLY_TIMEOUT_S": 5.0,
    }


async def _fake_worker(sessions: int = 0) -> str:
    channel = await get_channel_layer().new_channel()
    await database_sync_to_async(MediaWorker.objects.create)(
        channel_name=channel, capacity=2, sessions=sessions, heartbeat_at=timezone.now()
    )
    return channel


async def test_stop_while_a_go_live_is_pending_gives_it_up(no_local_worker) -> None:
    # Before: the stop was refused as not_live, and the answer then made the page live.
    layer = get_channel_layer()
    worker = await _fake_worker()
    page = await _page(await database_sync_to_async(make_user)("alice"))
    pc, sdp = await _offer()
    try:
        await page.send_json_to({"type": "broadcast.start", "sdp": sdp})
        request = await asyncio.wait_for(layer.receive(worker), WAIT_S)
        await page.send_json_to({"type": "broadcast.stop"})
        ended = await expect(page, "broadcast.ended")
        assert ended["session_id"] is None
        await layer.send(
            request["reply_channel"],
            {
                "type": "rtc.broadcast.answer",
                "request_id": request["request_id"],
                "worker_channel": worker,
                "session_id": 5,
                "sdp": "v=0 late",
            },
        )
        stop = await asyncio.wait_for(layer.receive(worker), WAIT_S)
        assert (stop["type"], stop["session_id"], stop["reason"]) == (
            "rtc.broadcast.stop",
            5,
            "abandoned",
        )
        await layer.send(
            stop["reply_channel"],
            {"type": "rtc.broadcast.ended", "session_id": 5, "recording_id": None},
        )
        await page.send_json_to({"type": "ping"})
        assert (await page.receive_json_from(timeout=WAIT_S))["type"] == "pong"  # nothing else
    finally:
        await pc.close()
        await page.disconnect()


async def test_a_failed_placement_leaves_the_page_free_to_retry(
    no_local_worker, monkeypatch
) -> None:
    # Before: the pending go-live stayed set after a database error, so every retry
    # was refused "already live" until the page reloaded.
    await _fake_worker()
    page = await _page(await database_sync_to_async(make_user)("alice"))
    real = selectors.media_worker_candidates
    calls: list[int] = []

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database blip")
        return real(**kwargs)

    monkeypatch.setattr(selectors, "media_worker_candidates", flaky)
    pc, sdp = await _offer()
    try:
        await page.send_json_to({"type": "broadcast.start", "sdp": sdp})
        assert (await expect(page, "error"))["code"] == "internal"
        await page.send_json_to({"type": "broadcast.start", "sdp": sdp})
        await page.send_json_to({"type": "ping"})
        assert (await page.receive_json_from(timeout=WAIT_S))["type"] == "pong"  # no error
    finally:
        await pc.close()
        await page.disconnect()


async def test_a_silent_worker_is_skipped_for_the_next_one(no_local_worker, settings) -> None:
    # Before: a worker that never answered failed the go-live after 15 s.
    settings.HEARTH = {**settings.HEARTH, "BROADCAST_REPLY_TIMEOUT_S": 0.3}
    layer = get_channel_layer()
    silent = await _fake_worker(sessions=0)
    other = await _fake_worker(sessions=1)
    page = await _page(await database_sync_to_async(make_user)("alice"))
    pc, sdp = await _offer()
    try:
        await page.send_json_to({"type": "broadcast.start", "sdp": sdp})
        first = await asyncio.wait_for(layer.receive(silent), WAIT_S)
        second = await asyncio.wait_for(layer.receive(other), WAIT_S)
        assert second["request_id"] != first["request_id"]
        await layer.send(
            first["reply_channel"],
            {
                "type": "rtc.broadcast.answer",
                "request_id": first["request_id"],
                "worker_channel": silent,
                "session_id": 3,
                "sdp": "v=0 late",
            },
        )
        stop = await asyncio.wait_for(layer.receive(silent), WAIT_S)
        assert stop["session_id"] == 3 and stop["reason"] == "abandoned"
        # Nobody answers the second either: the page is told, once.
        error = await expect(page, "error")
        assert error["code"] == "worker_unreachable" and error["ref"] == "broadcast.start"
    finally:
        await pc.close()
        await page.disconnect()


def test_a_worker_whose_stamp_is_late_but_still_writes_is_left_alone(settings) -> None:
    # Before: one late stamp (a database stall) ended every session of a live worker
    # and rewrote the WAV headers it was still writing.
    settings.HEARTH = {**settings.HEARTH, "WORKER_STALE_S": 10.0}
    alice = make_user("alice")
    MediaWorker.objects.create(
        channel_name="w-slow", capacity=2, heartbeat_at=timezone.now() - timedelta(seconds=11)
    )
    session, recording = services.live_session_start(
        broadcaster=alice, denoise=False, owner_channel="w-slow"
    )
    path = Path(recording.file.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + b"\0" * 100)
    assert services.media_worker_end_dead() == 0
    session.refresh_from_db()
    assert session.ended_at is None
    assert MediaWorker.objects.filter(channel_name="w-slow").exists()
    old = time.time() - 60
    os.utime(path, (old, old))  # stopped writing: now it is dead
    assert services.media_worker_end_dead() == 1
    session.refresh_from_db()
    assert session.end_reason == "worker_lost"
    assert not MediaWorker.objects.filter(channel_name="w-slow").exists()


async def test_a_shutting_down_worker_keeps_stamping_with_no_capacity() -> None:
    # Before: stamps stopped at shutdown, which may take 15 s of finalising: another
    # process could judge the worker dead and repair files it was still closing.
    server = rtc.media_server()
    await server.ensure_started()
    server.draining = True
    await database_sync_to_async(MediaWorker.objects.update)(
        heartbeat_at=timezone.now() - timedelta(seconds=5)
    )
    await server.worker_tick()
    row = await database_sync_to_async(MediaWorker.objects.get)(channel_name=server.channel_name)
    assert timezone.now() - row.heartbeat_at < timedelta(seconds=2)
    assert row.capacity == 0
    assert await database_sync_to_async(selectors.media_worker_candidates)() == []
    server.draining = False
    await server.shutdown()


async def test_a_page_closed_during_its_go_live_leaves_no_broadcast(monkeypatch) -> None:
    # End to end: the worker's access check stops the go-live of a page that closed
    # while the denoiser loaded; nothing it opened is left running.
    _slow_denoiser(monkeypatch, 2.5)  # longer than one worker tick (2 s)
    alice = await database_sync_to_async(make_user)("alice")
    server = rtc.media_server()
    page = await _page(alice)
    pc, sdp = await _offer()
    try:
        await page.send_json_to({"type": "broadcast.start", "sdp": sdp, "denoise": True})
        await _until(lambda: server.rooms, "no room")
        room = next(iter(server.rooms.values()))
        await page.disconnect()  # its presence row goes; the worker's tick does the rest
        await _until(lambda: not server.rooms, "the room of a closed page stayed")
        assert room.pc is None or room.pc.connectionState == "closed"
        assert room.runner is None
    finally:
        await pc.close()
