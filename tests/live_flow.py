"""A real go-live and listen, in-process, for the metrics and logging tests:
an aiortc broadcaster playing a WAV file and an aiortc listener, over communicators."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiortc.contrib.media import MediaPlayer

from tests.rtc_helpers import AudioSink, accept_answer, client_peer, expect, offer_sdp


async def go_live(comm, path: Path, *, denoise: bool = False) -> tuple[Any, MediaPlayer, int]:
    """Go live from ``comm``'s page with ``path``'s audio; (peer, player, session id)."""
    player = MediaPlayer(str(path))
    pc = client_peer()
    pc.addTransceiver(player.audio, direction="sendonly")
    await comm.send_json_to(
        {"type": "broadcast.start", "sdp": await offer_sdp(pc), "denoise": denoise}
    )
    answer = await expect(comm, "broadcast.answer")
    await accept_answer(pc, answer["sdp"])
    return pc, player, answer["session_id"]


async def listen(comm, session_id: int) -> tuple[Any, AudioSink]:
    """Listen to ``session_id`` from ``comm``'s page; (peer, sink of the audio)."""
    pc = client_peer()
    pc.addTransceiver("audio", direction="recvonly")
    got_track: asyncio.Future = asyncio.get_running_loop().create_future()
    pc.on("track", lambda track: got_track.done() or got_track.set_result(track))
    await comm.send_json_to(
        {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(pc)}
    )
    answer = await expect(comm, "listen.answer")
    await accept_answer(pc, answer["sdp"])
    track = await asyncio.wait_for(got_track, 10)
    return pc, AudioSink(track)


async def until(predicate, *, timeout: float = 15.0, step: float = 0.1) -> None:
    """Wait until ``predicate()`` is true (AssertionError after ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(step)
