"""Regression tests of the media server (``streams/rtc.py``) on the streams/media engine.

Each test names the bug it guards against and what the code before the rewrite
onto ``streams/media/`` (commit b7b7342) did wrong. Waits are bounded; nothing
depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from channels.db import database_sync_to_async
from django.utils import timezone

from streams import rtc, services
from streams.models import LiveSession, Recording
from streams.processors.base import PassThrough
from streams.processors.denoise import ALGORITHMIC_DELAY_SAMPLES
from tests import live_server
from tests.factories import make_recording, make_user
from tests.rtc_helpers import (
    accept_answer,
    client_peer,
    close_all,
    connected,
    expect,
    friends_make,
    offer_sdp,
)

daphne_factory = live_server.daphne_factory

WAIT_S = 10.0  # upper bound of every wait for something that should happen at once


# -- helpers ---------------------------------------------------------------------------
@pytest.fixture
async def server():
    """A bare MediaServer on this test's loop (no channel, no background loops)."""
    server = rtc.MediaServer()
    yield server
    server.workers.shutdown()


async def _settle(rounds: int = 50) -> None:
    """Let every ready task on the loop run for a while (no I/O is involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def _go_live(comm, *tracks):
    pc = client_peer()
    for track in tracks:
        pc.addTransceiver(track, direction="sendonly")
    await comm.send_json_to(
        {"type": "broadcast.start", "sdp": await offer_sdp(pc), "denoise": False}
    )
    answer = await expect(comm, "broadcast.answer", timeout=WAIT_S)
    await accept_answer(pc, answer["sdp"])
    return pc, answer


def _directions(sdp: str) -> list[tuple[str, str | None]]:
    """(kind, direction attribute) of each m-section of ``sdp``, in order."""
    directions = {"sendrecv", "sendonly", "recvonly", "inactive"}
    sections = []
    for section in sdp.replace("\r\n", "\n").split("\nm=")[1:]:
        lines = section.split("\n")
        kind = lines[0].split(" ", 1)[0]
        found = [line[2:] for line in lines if line.startswith("a=") and line[2:] in directions]
        sections.append((kind, found[0] if found else None))
    return sections


class _Room:
    """Stand-in for a BroadcastRoom: the heartbeat only looks at ``server.rooms``' keys."""


# -- 2. heartbeat ------------------------------------------------------------------------
async def test_heartbeat_does_not_stop_a_broadcast_that_started_during_its_database_call(
    server, monkeypatch
) -> None:
    # Before: the heartbeat loop sent ``list(self.rooms)`` to the database and then
    # stopped ``set(self.rooms) - live`` as "lost", reading ``self.rooms`` again *after*
    # the await. A broadcast that went live while the call was in flight was in the
    # second read but not in the stamped list, so it was never returned as live and
    # was killed seconds after it started. Now only ids from the snapshot are judged.
    entered, release = threading.Event(), threading.Event()
    stamped: list[list[int]] = []

    def heartbeat_blocking(*, session_ids):
        stamped.append(list(session_ids))
        entered.set()
        assert release.wait(WAIT_S), "the test never released the heartbeat"
        return {2}  # 1 and 3 were ended elsewhere; 2 is still live

    stopped: list[tuple[int, str]] = []
    monkeypatch.setattr(services, "live_session_heartbeat", heartbeat_blocking)
    monkeypatch.setattr(
        server, "broadcast_stop_soon", lambda sid, *, reason: stopped.append((sid, reason))
    )
    server.rooms.update({1: _Room(), 2: _Room(), 3: _Room()})

    beat = asyncio.ensure_future(server.heartbeat())
    try:
        assert await asyncio.to_thread(entered.wait, WAIT_S), "heartbeat never hit the database"
        server.rooms[4] = _Room()  # goes live while the database call is in flight
        del server.rooms[3]  # and 3 is stopped meanwhile by someone else
    finally:
        release.set()
    await asyncio.wait_for(beat, WAIT_S)

    assert stamped == [[1, 2, 3]]
    # 1: in the snapshot, not live any more -> stopped. 4: not in the snapshot -> kept.
    # 3: already gone from the rooms -> not stopped twice. 2: live -> kept.
    assert stopped == [(1, "lost")]


# -- 3. per-page message ordering --------------------------------------------------------
async def test_messages_of_one_page_run_one_after_another_in_arrival_order(
    server, monkeypatch
) -> None:
    # Before: ``_handle_in_order`` kept one asyncio.Lock per reply_channel and deleted
    # it in ``finally`` when ``not lock.locked()``. Releasing the lock with message 2
    # waiting on it leaves it unlocked until 2 is woken, so message 1 deleted a lock
    # that 2 was about to take; message 3, arriving then, made a fresh lock and ran
    # beside message 2 (e.g. a listen.stop overtaking the listen.start it follows).
    log: list[tuple[str, str]] = []
    gates = {name: asyncio.Event() for name in ("1", "2", "3")}

    async def handle(message):
        name = message["name"]
        log.append(("start", name))
        await gates[name].wait()
        log.append(("end", name))

    monkeypatch.setattr(server, "_handle", handle)
    page = "specific.page-a"
    tasks = []

    def third_arrives(_finished) -> None:
        # Runs as soon as message 1's task is done, before message 2 has been woken.
        tasks.append(server.handle_in_order({"reply_channel": page, "name": "3"}))

    first = server.handle_in_order({"reply_channel": page, "name": "1"})
    first.add_done_callback(third_arrives)
    tasks += [first, server.handle_in_order({"reply_channel": page, "name": "2"})]
    await _settle()
    assert log == [("start", "1")], "message 2 started before message 1 ended"

    gates["1"].set()
    await asyncio.wait_for(first, WAIT_S)
    await _settle()
    assert len(tasks) == 3
    assert log == [("start", "1"), ("end", "1"), ("start", "2")], (
        f"message 3 ran beside message 2: {log}"
    )

    gates["2"].set()
    await _settle()
    assert log[-2:] == [("end", "2"), ("start", "3")]
    gates["3"].set()
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert log == [(step, name) for name in "123" for step in ("start", "end")]
    assert server._key_tails == {}, "a finished page's chain was kept"


async def test_messages_of_different_pages_run_concurrently(server, monkeypatch) -> None:
    # One page's slow SDP answer must not hold up another page's.
    started = {name: asyncio.Event() for name in ("a", "b")}
    release = asyncio.Event()

    async def handle(message):
        started[message["name"]].set()
        await release.wait()

    monkeypatch.setattr(server, "_handle", handle)
    tasks = [
        server.handle_in_order({"reply_channel": f"specific.page-{name}", "name": name})
        for name in ("a", "b")
    ]
    try:
        # Both are running at once: neither has finished while the other started.
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), WAIT_S)
        assert not any(task.done() for task in tasks)
    finally:
        release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)


async def test_a_failing_message_does_not_block_the_pages_next_one(server, monkeypatch) -> None:
    # The chain waits for the previous task whatever its outcome.
    handled: list[str] = []

    async def handle(message):
        handled.append(message["name"])
        if message["name"] == "1":
            raise RuntimeError("handler fault")

    monkeypatch.setattr(server, "_handle", handle)
    tasks = [
        server.handle_in_order({"reply_channel": "specific.page", "name": name})
        for name in ("1", "2")
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)  # the fault is logged, not raised
    assert handled == ["1", "2"]


# -- 5. housekeeping starts with the server ------------------------------------------
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
async def test_daphne_ends_a_crashed_session_at_start_up_without_any_go_live(
    daphne_factory,
) -> None:
    # Before: the media server (and with it the heartbeat, the stale-session cleanup
    # and, on the in-memory layer, ``live_session_end_orphaned``) was only started by
    # the first go-live, so a session a crash left "live" stayed live, visible to
    # friends and with an unrepaired WAV, until somebody happened to broadcast. Now
    # ``project/asgi.py`` starts it when daphne's reactor runs.
    frames = 48_000

    def crashed_session():
        user = make_user("crashed")
        long_ago = timezone.now() - timedelta(hours=1)
        session = LiveSession.objects.create(
            broadcaster=user, owner_channel="specific.gone!dead", heartbeat_at=long_ago
        )
        recording = make_recording(user, ended=False, frames=frames)
        recording.session = session
        recording.duration_s = recording.size_bytes = 0  # as live_session_start leaves them
        recording.save()
        return session, recording

    session, recording = await database_sync_to_async(crashed_session)()
    path = services.recording_path(recording)
    # The writer died before patching the header: RIFF and data sizes still 0.
    with open(path, "r+b") as handle:
        handle.seek(4)
        handle.write(struct.pack("<I", 0))
        handle.seek(40)
        handle.write(struct.pack("<I", 0))
    old = time.time() - 3600  # last written long ago: not "busy", so it may be repaired
    os.utime(path, (old, old))

    # REDIS_URL when the run has one (then the housekeeping's stale cleanup ends it),
    # else the in-memory layer (then the start-up orphan cleanup does).
    daphne = await asyncio.to_thread(
        daphne_factory, "daphne", redis_url=os.environ.get("REDIS_URL") or None
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0
    while True:
        session = await database_sync_to_async(LiveSession.objects.get)(id=session.id)
        if session.ended_at is not None or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert session.ended_at is not None, (
        "daphne did not end the crashed session without a go-live\n" + daphne.log_tail()
    )
    assert session.end_reason == "lost"
    recording = await database_sync_to_async(Recording.objects.get)(id=recording.id)
    assert recording.ended_at is not None
    assert recording.duration_s == pytest.approx(frames / 48_000)  # header repaired
    assert recording.size_bytes == 44 + 2 * frames
    # The worker logs its start once registered, after the orphan cleanup above has
    # run, so the line may still be on its way when the session is seen ended.
    deadline = loop.time() + 15.0
    while "media worker on" not in daphne.log_text():
        assert loop.time() < deadline, "no 'media worker on' line\n" + daphne.log_tail()
        await asyncio.sleep(0.2)


# -- 6. unused tracks are not received ----------------------------------------------
@pytest.mark.django_db(transaction=True)
async def test_unused_tracks_are_answered_inactive_or_not_received() -> None:
    # Before: the server answered a broadcaster's camera ``recvonly`` (received,
    # decoded and drained into a MediaBlackhole for the whole broadcast) and a
    # listener's own microphone ``sendrecv`` (received and drained likewise): media
    # Hearth never uses still cost bandwidth and CPU. Now such sections are answered
    # ``inactive``, and a listener's audio ``sendonly``. The broadcaster's first camera
    # is received since live video (it is redacted and relayed); a second one is not.
    ann, ben = await friends_make()
    a, b = await connected(ann), await connected(ben)
    pc_a = pc_b = None
    try:
        pc_a, answer = await _go_live(a, AudioStreamTrack(), VideoStreamTrack(), VideoStreamTrack())
        session_id = answer["session_id"]
        assert _directions(answer["sdp"]) == [
            ("audio", "recvonly"),
            ("video", "recvonly"),
            ("video", "inactive"),
        ]
        room = rtc.media_server().rooms[session_id]
        current = [(t.kind, t.currentDirection) for t in room.pc.getTransceivers()]
        assert current == [("audio", "recvonly"), ("video", "recvonly"), ("video", "inactive")]

        pc_b = client_peer()
        pc_b.addTransceiver(AudioStreamTrack(), direction="sendrecv")  # the listener's mic
        await b.send_json_to(
            {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(pc_b)}
        )
        listen = await expect(b, "listen.answer", timeout=WAIT_S)
        assert _directions(listen["sdp"]) == [("audio", "sendonly")]
        await accept_answer(pc_b, listen["sdp"])
        (listener,) = room.listeners.values()
        assert [t.currentDirection for t in listener.pc.getTransceivers()] == ["sendonly"]

        await a.send_json_to({"type": "broadcast.stop"})
        assert (await expect(a, "broadcast.ended", timeout=WAIT_S))["session_id"] == session_id
    finally:
        await close_all([pc_a, pc_b], [a, b])


# -- 10. the listener's answer does not wait for publish_stats ----------------------------
@pytest.mark.django_db(transaction=True)
async def test_listener_answer_does_not_wait_for_publishing_the_listener_count(
    monkeypatch,
) -> None:
    # Before: ``add_listener`` awaited ``publish_stats()`` (a database query, then one
    # group_send per friend) before returning the SDP answer, so a slow database or
    # channel layer, or many friends, delayed every listener's audio. Now it is spawned
    # beside the answer: here it never finishes, and the answer still arrives.
    entered = asyncio.Event()
    never = asyncio.Event()  # set only in the cleanup, so the stuck tasks can end

    async def publish_stats_stuck(self) -> None:
        entered.set()
        await never.wait()

    monkeypatch.setattr(rtc.BroadcastRoom, "publish_stats", publish_stats_stuck)
    ann, ben = await friends_make()
    a, b = await connected(ann), await connected(ben)
    pc_a = pc_b = None
    try:
        pc_a, answer = await _go_live(a, AudioStreamTrack())
        session_id = answer["session_id"]
        pc_b = client_peer()
        pc_b.addTransceiver("audio", direction="recvonly")
        await b.send_json_to(
            {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(pc_b)}
        )
        listen = await expect(b, "listen.answer", timeout=WAIT_S)
        assert listen["session_id"] == session_id
        await asyncio.wait_for(entered.wait(), WAIT_S)  # it was called...
        assert not never.is_set()  # ...and was still stuck when the answer arrived
        await accept_answer(pc_b, listen["sdp"])
        await a.send_json_to({"type": "broadcast.stop"})
        await expect(a, "broadcast.ended", timeout=WAIT_S)
    finally:
        never.set()
        for pc in (pc_a, pc_b):
            if pc is not None:
                await pc.close()
        for comm in (a, b):
            await comm.disconnect()


# -- 11. a failed open does not leak the processor ------------------------------------
class _ClosingPassThrough(PassThrough):
    """A pass-through processor that records whether it was closed; it declares the
    denoiser's latency, as the live denoise stage requires of its processor."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    @property
    def latency_samples(self) -> int:
        return ALGORITHMIC_DELAY_SAMPLES

    def close(self) -> None:
        self.closed = True
        super().close()


@pytest.mark.django_db(transaction=True)
async def test_failed_open_closes_the_processor_it_already_built(monkeypatch) -> None:
    # Before: ``BroadcastRoom.open`` built the processor (DeepFilterNet: a native model
    # state) into a local variable and only stored it on the room after making the
    # recorder and the peer connection. When ``WavRecorder`` raised (disk full, no
    # permission), ``close()`` found no processor and it was never closed: each failed
    # go-live leaked one. Now the room owns it from the moment it exists.
    built: list[_ClosingPassThrough] = []

    def chain_build(*, denoise: bool):
        built.append(_ClosingPassThrough())
        return built[-1]

    def recorder_fails(path: Path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(rtc, "audio_chain_build", chain_build)
    monkeypatch.setattr(rtc, "WavRecorder", recorder_fails)
    (ann,) = await database_sync_to_async(lambda: [make_user("ann")])()
    a = await connected(ann)
    pc = client_peer()
    try:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await a.send_json_to(
            {"type": "broadcast.start", "sdp": await offer_sdp(pc), "denoise": True}
        )
        error = await expect(a, "error", timeout=WAIT_S)
        assert error["ref"] == "broadcast.start" and error["code"] == "internal"
        assert "space" not in error["message"]  # no server details to the page

        (processor,) = built
        assert processor.closed, "the processor of the failed go-live was never closed"
        assert rtc.media_server().rooms == {}
        session = await database_sync_to_async(LiveSession.objects.get)(broadcaster=ann)
        assert session.ended_at is not None and session.end_reason == "failed"
        # The page can try again at once (nothing is left "live").
        await a.send_json_to({"type": "ping"})
        await expect(a, "pong", timeout=WAIT_S)
    finally:
        with contextlib.suppress(Exception):
            await pc.close()
        await a.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_broadcaster_receiver_holds_one_frame_for_reordering() -> None:
    # aiortc's audio receivers hold 4 frames (80 ms) before decoding; the server keeps
    # HEARTH["RECEIVE_REORDER_FRAMES"]. Fails loudly if an aiortc upgrade moves the buffer.
    from aiortc.jitterbuffer import JitterBuffer

    ann, _ = await friends_make()
    comm = await connected(ann)
    pc = client_peer()
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await comm.send_json_to({"type": "broadcast.start", "sdp": await offer_sdp(pc)})
    answer = await expect(comm, "broadcast.answer")
    room = rtc.media_server().rooms[answer["session_id"]]
    receiver = next(t.receiver for t in room.pc.getTransceivers() if t.kind == "audio")
    buffer = receiver._RTCRtpReceiver__jitter_buffer
    assert isinstance(buffer, JitterBuffer) and buffer._prefetch == 1
    await comm.send_json_to({"type": "broadcast.stop"})
    await expect(comm, "broadcast.ended")
    await pc.close()
    await comm.disconnect()


# -- recording limits ------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
async def test_housekeeping_deletes_recordings_past_the_retention(server, settings) -> None:
    # Before: recordings were kept for ever; nothing ran recording_delete_expired.
    settings.HEARTH = {**settings.HEARTH, "RECORDING_RETENTION_DAYS": 1, "HOUSEKEEPING_S": 0.05}

    def make():
        user = make_user("old")
        return make_recording(user, age_s=2 * 86400), make_recording(user, age_s=60)

    old, recent = await database_sync_to_async(make)()
    task = asyncio.ensure_future(server._housekeeping_loop())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while True:
            if not services.recording_path(old).exists() or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not services.recording_path(old).exists()
    ids = await database_sync_to_async(lambda: list(Recording.objects.values_list("id")))()
    assert ids == [(recent.id,)]


async def _broadcast_until_ended(ann) -> tuple[list[dict], dict]:
    """Go live with a silent track and read the page's frames until ``session.ended``."""
    tab = await connected(ann)
    pc, answer = await _go_live(tab, AudioStreamTrack())
    frames: list[dict] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * WAIT_S
    try:
        while not frames or frames[-1]["type"] != "session.ended":
            assert loop.time() < deadline, f"no session.ended within {2 * WAIT_S} s: {frames}"
            frames.append(await tab.receive_json_from(timeout=WAIT_S))
    finally:
        await close_all([pc], [tab])
    assert frames[-1]["session_id"] == answer["session_id"]
    return frames, frames[-1]


async def _finalised_recording(recording_id: int) -> Recording:
    """The recording, checked to be finalised and playable (header matches the file)."""
    import wave

    recording = await database_sync_to_async(Recording.objects.get)(id=recording_id)
    path = services.recording_path(recording)
    with wave.open(str(path)) as wav:
        frames = wav.getnframes()
    assert frames > 0 and frames == (path.stat().st_size - 44) // 2
    assert recording.ended_at is not None and recording.size_bytes == path.stat().st_size
    assert recording.duration_s == pytest.approx(frames / 48_000)
    return recording


@pytest.mark.django_db(transaction=True)
async def test_broadcast_is_ended_at_the_duration_cap_with_a_warning_first(settings) -> None:
    # Before: a broadcast ran (and recorded) for as long as its peer stayed connected.
    settings.HEARTH = {**settings.HEARTH, "MAX_BROADCAST_S": 1.0}
    ann, _ = await friends_make()
    frames, ended = await _broadcast_until_ended(ann)
    warning = next(f for f in frames if f["type"] == "session.warning")
    assert warning["reason"] == "limit_duration" and 0 < warning["seconds_left"] <= 1
    assert ended["reason"] == "limit_duration"
    recording = await _finalised_recording(ended["recording_id"])
    assert 0.5 < recording.duration_s < 1.0 + WAIT_S
    session = await database_sync_to_async(LiveSession.objects.get)(id=ended["session_id"])
    assert session.end_reason == "limit_duration"
    assert rtc.media_server().rooms == {}


@pytest.mark.django_db(transaction=True)
async def test_broadcast_is_ended_when_the_recorder_reaches_the_wav_size_limit(
    monkeypatch,
) -> None:
    # Before: the recorder's ValueError at the RIFF limit cut the recorder sink off and
    # the broadcast went on with every later block silently dropped from the recording.
    monkeypatch.setattr("streams.recording.MAX_DATA_BYTES", 2 * 48_000 // 2)  # 0.5 s
    ann, _ = await friends_make()
    _, ended = await _broadcast_until_ended(ann)
    assert ended["reason"] == "limit_size"
    recording = await _finalised_recording(ended["recording_id"])
    assert recording.duration_s <= 0.5


@pytest.mark.django_db(transaction=True)
async def test_broadcast_is_ended_when_the_disk_floor_is_crossed(settings, monkeypatch) -> None:
    settings.HEARTH = {**settings.HEARTH, "LIMIT_CHECK_S": 0.2, "MIN_FREE_DISK_BYTES": 1000}
    real_disk_usage = __import__("shutil").disk_usage
    calls = []

    def disk_usage(path):  # plenty at go-live, then full
        calls.append(path)
        usage = real_disk_usage(path)
        return usage if len(calls) == 1 else usage._replace(free=999)

    monkeypatch.setattr("shutil.disk_usage", disk_usage)
    ann, _ = await friends_make()
    _, ended = await _broadcast_until_ended(ann)
    assert ended["reason"] == "limit_disk"
    await _finalised_recording(ended["recording_id"])
