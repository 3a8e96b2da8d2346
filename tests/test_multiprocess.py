"""Two daphne processes sharing one database and one Redis channel layer.

The broadcaster's WebSocket lands on daphne A; each daphne also runs a media worker
(the default), and the go-live is placed on the least-loaded of the two. The
listener's WebSocket lands on daphne B, whose consumer routes the SDP offer through
Redis to whichever worker owns the session. All traffic is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from aiortc.contrib.media import MediaPlayer
from channels.db import database_sync_to_async

from streams.models import LiveSession, Recording
from tests import live_server
from tests.live_server import DEFAULT_TEST_REDIS_URL, WsClient, session_cookie
from tests.rtc_helpers import AudioSink, accept_answer, client_peer, offer_sdp
from users.models import Friendship, User

daphne_factory = live_server.daphne_factory
loopback_ice = live_server.loopback_ice
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PLAY_S = 8.0


@pytest.fixture
def people(transactional_db):
    alice = User.objects.create_user("alice", password="pw-alice-123")
    bob = User.objects.create_user("bob", password="pw-bob-123")
    carol = User.objects.create_user("carol", password="pw-carol-123")
    low, high = sorted((alice, bob), key=lambda u: u.id)
    Friendship.objects.create(user_low=low, user_high=high)
    return {u.username: (u, session_cookie(u)) for u in (alice, bob, carol)}


async def test_listener_on_other_process_hears_broadcast(
    daphne_factory, loopback_ice, people, noisy_jfk_wav: Path
) -> None:
    redis_url = os.environ.get("REDIS_URL", DEFAULT_TEST_REDIS_URL)
    server_a = daphne_factory("daphne-a", redis_url=redis_url, wait=False)
    server_b = daphne_factory("daphne-b", redis_url=redis_url, wait=False)
    await asyncio.to_thread(server_a.wait_healthy, timeout=60)
    await asyncio.to_thread(server_b.wait_healthy, timeout=60)
    status, health = server_b.health()
    assert status == 200 and health["channel_layer"]["backend"] == "RedisChannelLayer"

    sockets: list[WsClient] = []
    peers = []
    player = None
    try:
        for user, server in (("alice", server_a), ("bob", server_b), ("carol", server_b)):
            name = f"{user}@{'A' if server is server_a else 'B'}"
            ws = await WsClient.open(
                server.ws_url, people[user][1], origin=server.origin, name=name
            )
            sockets.append(ws)
            assert (await ws.expect("hello"))["user"]["username"] == user
        a, b, c = sockets

        # Alice goes live on A.
        player = MediaPlayer(str(noisy_jfk_wav))
        pc_a = client_peer()
        peers.append(pc_a)
        pc_a.addTransceiver(player.audio, direction="sendonly")
        await a.send_json(
            {"type": "broadcast.start", "sdp": await offer_sdp(pc_a), "denoise": True}
        )
        answer = await a.expect("broadcast.answer", timeout=20)
        await accept_answer(pc_a, answer["sdp"])
        session_id = answer["session_id"]
        session = await database_sync_to_async(LiveSession.objects.get)(id=session_id)
        assert "!" in session.owner_channel  # a process-specific channel of a worker

        # Bob, on B, hears she went live (event through Redis) and listens via B.
        live = await b.expect("live", match=lambda f: f.get("session_id") == session_id)
        assert live["live"] is True
        pc_b = client_peer()
        peers.append(pc_b)
        pc_b.addTransceiver("audio", direction="recvonly")
        got_track: asyncio.Future = asyncio.get_running_loop().create_future()
        pc_b.on("track", lambda track: got_track.done() or got_track.set_result(track))
        await b.send_json(
            {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(pc_b)}
        )
        listen = await b.expect("listen.answer", timeout=20)
        assert listen["session_id"] == session_id
        await accept_answer(pc_b, listen["sdp"])
        sink = AudioSink(await asyncio.wait_for(got_track, 10))

        stats = await a.expect("session.stats", match=lambda f: f.get("listeners") == 1)
        assert stats["session_id"] == session_id

        # Carol (not a friend), also on B, is refused.
        pc_c = client_peer()
        peers.append(pc_c)
        pc_c.addTransceiver("audio", direction="recvonly")
        await c.send_json(
            {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(pc_c)}
        )
        refused = await c.expect("error")
        assert refused["code"] == "not_allowed" and refused["ref"] == "listen.start"

        await asyncio.sleep(PLAY_S)
        received = await sink.stop()

        await a.send_json({"type": "broadcast.stop"})
        ended = await a.expect("broadcast.ended", timeout=20)
        assert ended["session_id"] == session_id and ended["recording_id"]
        over = await b.expect("session.ended", match=lambda f: f.get("session_id") == session_id)
        assert over["recording_id"] == ended["recording_id"]
    finally:
        for pc in peers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 5)
        if player is not None and player.audio is not None:
            player.audio.stop()
        for ws in sockets:
            await ws.close()

    # Over 3 s of real audio reached the listener through A, not silence.
    seconds = len(received) / 48_000
    blocks = received[: len(received) // 960 * 960].reshape(-1, 960)
    block_rms = np.sqrt(np.mean(blocks.astype(np.float64) ** 2, axis=1))
    zero_s = np.count_nonzero(np.all(blocks == 0, axis=1)) * 0.02
    audible_s = np.count_nonzero(block_rms > 1e-3) * 0.02  # above -60 dBFS
    rms = float(np.sqrt(np.mean(received.astype(np.float64) ** 2))) if len(received) else 0.0
    print(
        f"listener got {seconds:.2f} s: {audible_s:.2f} s above -60 dBFS, "
        f"{zero_s:.2f} s exact zeros, RMS {rms:.4f}"
    )
    assert seconds > 3.0, f"listener got only {seconds:.2f} s of audio"
    assert audible_s > 3.0, f"only {audible_s:.2f} s of the listener's audio is not silence"
    assert rms > 0.005, f"listener audio is (near) silence: RMS {rms:.5f}"

    recording = await database_sync_to_async(Recording.objects.get)(id=ended["recording_id"])
    session = await database_sync_to_async(LiveSession.objects.get)(id=session_id)
    assert session.end_reason == "stopped" and session.ended_at is not None
    assert recording.ended_at is not None and recording.duration_s > 3.0
    assert server_a.running and server_b.running
