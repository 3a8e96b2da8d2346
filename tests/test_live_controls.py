"""Going live with a title, muting and switching denoise while live, and the
broadcaster's list of who is listening — through the page's socket, with real aiortc
peers in this process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from aiortc.contrib.media import MediaPlayer
from channels.db import database_sync_to_async

from streams import rtc
from streams.models import LiveSession, Recording
from streams.recording import wav_info
from tests.factories import befriend, make_user
from tests.rtc_helpers import (
    AudioSink,
    accept_answer,
    client_peer,
    close_all,
    connected,
    expect_matching,
    offer_sdp,
)

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_S = 15.0


async def _level(sink: AudioSink, seconds: float) -> float:
    """RMS of what ``sink`` receives over the next ``seconds``."""
    start = len(sink.samples)
    await asyncio.sleep(seconds)
    got = sink.samples[start:]
    return float(np.sqrt(np.mean(got.astype(np.float64) ** 2))) if len(got) else 0.0


async def test_title_mute_denoise_switch_and_listener_names(noisy_jfk_wav: Path) -> None:
    def people():
        alice, bob = make_user("alice"), make_user("bob")
        befriend(alice, bob)
        return alice, bob

    alice, bob = await database_sync_to_async(people)()
    a, b = await connected(alice), await connected(bob)
    player = MediaPlayer(str(noisy_jfk_wav), loop=True)
    pcs = []
    try:
        # A title that cannot be stored is refused before anything is created.
        pc = client_peer()
        pcs.append(pc)
        pc.addTransceiver(player.audio, direction="sendonly")
        sdp = await offer_sdp(pc)
        await a.send_json_to({"type": "broadcast.start", "sdp": sdp, "title": "x\x00y"})
        assert (await expect_matching(a, "error"))["ref"] == "broadcast.start"
        await a.send_json_to({"type": "broadcast.start", "sdp": sdp, "title": "t" * 121})
        assert (await expect_matching(a, "error"))["ref"] == "broadcast.start"

        await a.send_json_to(
            {"type": "broadcast.start", "sdp": sdp, "denoise": False, "title": " Friday jam "}
        )
        answer = await expect_matching(a, "broadcast.answer")
        session_id = answer["session_id"]
        live = await expect_matching(b, "live", lambda f: f["session_id"] == session_id)
        assert live["title"] == "Friday jam"
        await accept_answer(pc, answer["sdp"])
        room = rtc.media_server().rooms[session_id]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while room.runner is None:
            assert loop.time() < deadline, "no audio from the broadcaster"
            await asyncio.sleep(0.05)

        # Bob listens; Alice's page (only hers) learns his name.
        listener = client_peer()
        pcs.append(listener)
        listener.addTransceiver("audio", direction="recvonly")
        got: asyncio.Future = loop.create_future()
        listener.on("track", lambda t: got.done() or got.set_result(t))
        await b.send_json_to(
            {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(listener)}
        )
        await accept_answer(listener, (await expect_matching(b, "listen.answer"))["sdp"])
        sink = AudioSink(await asyncio.wait_for(got, WAIT_S))
        names = await expect_matching(a, "session.listeners", lambda f: f["listeners"])
        assert names["listeners"] == [
            {"id": bob.id, "username": "bob", "display_name": "", "avatar_url": None}
        ]
        assert await _level(sink, 2.0) > 0.01

        # Muted: listeners get silence (and are told), the recording keeps it.
        await a.send_json_to({"type": "broadcast.control", "muted": True})
        state = await expect_matching(b, "session.state")
        assert state == {
            "type": "session.state",
            "session_id": session_id,
            "muted": True,
            "denoise": False,
        }
        await asyncio.sleep(0.5)  # what was already encoded drains
        assert await _level(sink, 2.0) < 1e-3
        await a.send_json_to({"type": "broadcast.control", "muted": False})
        assert (await expect_matching(b, "session.state"))["muted"] is False
        await asyncio.sleep(0.5)
        assert await _level(sink, 2.0) > 0.01

        # Denoise switched on live (loaded now) and off again; audio keeps flowing.
        await a.send_json_to({"type": "broadcast.control", "denoise": True})
        assert (await expect_matching(b, "session.state"))["denoise"] is True
        assert room.stage is not None and room.stage.has_processor
        assert await _level(sink, 2.0) > 0.005
        await a.send_json_to({"type": "broadcast.control", "denoise": "yes"})
        assert (await expect_matching(a, "error"))["ref"] == "broadcast.control"
        await b.send_json_to({"type": "broadcast.control", "muted": True})  # not live
        assert (await expect_matching(b, "error"))["code"] == "not_live"

        await a.send_json_to({"type": "broadcast.stop"})
        ended = await expect_matching(a, "broadcast.ended")
        await sink.stop()
    finally:
        if player.audio is not None:
            player.audio.stop()
        await close_all(pcs, [a, b])

    session = await database_sync_to_async(LiveSession.objects.get)(id=session_id)
    recording = await database_sync_to_async(Recording.objects.get)(id=ended["recording_id"])
    assert session.title == recording.title == "Friday jam"
    samples = np.frombuffer(Path(recording.file.path).read_bytes()[44:], dtype=np.int16)
    assert wav_info(Path(recording.file.path)).frames == len(samples)
    # The muted stretch is in the recording as digital silence (over 1.5 s of zeros).
    zero_blocks = np.all(samples[: len(samples) // 960 * 960].reshape(-1, 960) == 0, axis=1)
    longest = max(
        (len(run) for run in "".join("1" if z else "0" for z in zero_blocks).split("0")), default=0
    )
    assert longest * 0.02 > 1.5
