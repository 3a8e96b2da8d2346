"""The media tier scaled out: two web processes (daphne, no media) and two media
workers (``manage.py mediaworker``) sharing the database and one Redis.

Go-lives spread over both workers; a listener on either daphne hears any broadcast;
a worker killed with SIGKILL mid-broadcast has its sessions ended (``worker_lost``)
within seconds with their recordings repaired, and the next go-live lands on the
surviving worker. All traffic is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.contrib.media import MediaPlayer
from channels.db import database_sync_to_async

from streams.models import LiveSession, MediaWorker, Recording
from streams.recording import wav_info
from tests import live_server
from tests.live_server import DEFAULT_TEST_REDIS_URL, WsClient, session_cookie
from tests.rtc_helpers import AudioSink, accept_answer, client_peer, offer_sdp
from users.models import Friendship, User

daphne_factory = live_server.daphne_factory
loopback_ice = live_server.loopback_ice
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TIER_ENV = {"MEDIA_IN_PROCESS": "0", "WORKER_STALE_S": "6", "MEDIA_WORKER_CAPACITY": "2"}


@pytest.fixture
def people(transactional_db):
    names = ("alice", "bob", "dave")
    users = {n: User.objects.create_user(n, password=f"pw-{n}-123") for n in names}
    for a, b in (("alice", "bob"), ("dave", "bob")):
        low, high = sorted((users[a], users[b]), key=lambda u: u.id)
        Friendship.objects.create(user_low=low, user_high=high)
    return {n: (u, session_cookie(u)) for n, u in users.items()}


def audible_seconds(samples: np.ndarray) -> float:
    """Seconds of 20 ms blocks above -60 dBFS."""
    blocks = samples[: len(samples) // 960 * 960].reshape(-1, 960).astype(np.float64)
    return float(np.count_nonzero(np.sqrt(np.mean(blocks**2, axis=1)) > 1e-3) * 0.02)


async def hears(sink: AudioSink, seconds: float, *, after: int = 0, limit_s: float = 30.0) -> None:
    """Wait until ``sink`` received ``seconds`` of audible audio past sample ``after``.

    Bounded by ``limit_s``; on a loaded machine the denoiser may fail some blocks
    closed (silence), so this waits for audio rather than sampling a fixed window.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while audible_seconds(sink.samples[after:]) <= seconds:
        assert loop.time() < deadline, f"under {seconds} s of audible audio in {limit_s} s"
        await asyncio.sleep(0.25)


async def go_live(ws: WsClient, wav: Path, peers: list[Any], players: list[Any]) -> int:
    """Go live on ``ws`` with a looping ``wav``; returns the session id once connected."""
    player = MediaPlayer(str(wav), loop=True)
    players.append(player)
    pc = client_peer()
    peers.append(pc)
    pc.addTransceiver(player.audio, direction="sendonly")
    await ws.send_json({"type": "broadcast.start", "sdp": await offer_sdp(pc), "denoise": True})
    answer = await ws.expect("broadcast.answer", timeout=30)
    await accept_answer(pc, answer["sdp"])
    return int(answer["session_id"])


async def listen(ws: WsClient, session_id: int, peers: list[Any]) -> AudioSink:
    """Listen to ``session_id`` on ``ws``; returns the sink collecting its audio."""
    pc: RTCPeerConnection = client_peer()
    peers.append(pc)
    pc.addTransceiver("audio", direction="recvonly")
    got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    pc.on("track", lambda track: got.done() or got.set_result(track))
    await ws.send_json(
        {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(pc)}
    )
    answer = await ws.expect(
        "listen.answer", timeout=30, match=lambda f: f.get("session_id") == session_id
    )
    await accept_answer(pc, answer["sdp"])
    return AudioSink(await asyncio.wait_for(got, 15))


def worker_metrics(port: int) -> str:
    """The Prometheus text a worker serves with ``--metrics-port`` on loopback."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return response.read().decode()


async def owner_of(session_id: int) -> str:
    session = await database_sync_to_async(LiveSession.objects.get)(id=session_id)
    return session.owner_channel


async def test_two_workers_spread_broadcasts_and_survive_a_killed_worker(
    daphne_factory, loopback_ice, people, noisy_jfk_wav: Path
) -> None:
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_TEST_REDIS_URL
    metrics_port = live_server.free_port()
    procs = {
        name: daphne_factory(
            name,
            redis_url=redis_url,
            extra_env=TIER_ENV,
            wait=False,
            mediaworker=name.startswith("worker"),
            args=["--metrics-port", str(metrics_port)] if name == "worker-1" else [],
        )
        for name in ("web-a", "web-b", "worker-1", "worker-2")
    }
    for proc in procs.values():
        await asyncio.to_thread(proc.wait_healthy, timeout=60)
    web_a, web_b = procs["web-a"], procs["web-b"]
    status, health = web_a.health()
    assert status == 200 and health["media_workers"] == 2

    rows = await database_sync_to_async(lambda: list(MediaWorker.objects.all()))()
    worker_of_channel = {
        row.channel_name: next(
            p for n, p in procs.items() if n.startswith("worker") and p.pid == row.pid
        )
        for row in rows
    }
    assert len(worker_of_channel) == 2

    sockets: list[WsClient] = []
    peers: list[Any] = []
    players: list[Any] = []
    try:
        alice = await WsClient.open(
            web_a.ws_url, people["alice"][1], origin=web_a.origin, name="alice@A"
        )
        dave = await WsClient.open(
            web_b.ws_url, people["dave"][1], origin=web_b.origin, name="dave@B"
        )
        bob = await WsClient.open(web_b.ws_url, people["bob"][1], origin=web_b.origin, name="bob@B")
        sockets += [alice, dave, bob]
        for ws in sockets:
            await ws.expect("hello")

        # Two go-lives, one from each web process, land on the two workers.
        alice_session = await go_live(alice, noisy_jfk_wav, peers, players)
        dave_session = await go_live(dave, noisy_jfk_wav, peers, players)
        alice_owner, dave_owner = await owner_of(alice_session), await owner_of(dave_session)
        assert {alice_owner, dave_owner} == set(worker_of_channel)

        # Worker 1 serves its own metrics (loopback): it holds one of the broadcasts.
        metrics = await asyncio.to_thread(worker_metrics, metrics_port)
        assert "hearth_live_broadcasts 1.0" in metrics, metrics[:2000]

        # Bob, on web B, hears both (one broadcast on each worker).
        alice_sink = await listen(bob, alice_session, peers)
        dave_sink = await listen(bob, dave_session, peers)
        await hears(alice_sink, 1.5)
        await hears(dave_sink, 1.5)

        # SIGKILL the worker holding Alice's broadcast.
        killed = worker_of_channel[alice_owner]
        killed.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(killed.wait, 10) == -signal.SIGKILL
        ended = await alice.expect(
            "session.ended", timeout=30, match=lambda f: f.get("session_id") == alice_session
        )
        assert ended["reason"] == "worker_lost"
        await bob.expect(
            "session.ended", timeout=10, match=lambda f: f.get("session_id") == alice_session
        )

        # Dave's broadcast, on the other worker, goes on reaching Bob.
        await hears(dave_sink, 1.0, after=len(dave_sink.samples))

        # Alice's next go-live lands on the surviving worker.
        await peers[0].close()
        again = await go_live(alice, noisy_jfk_wav, peers, players)
        assert await owner_of(again) == dave_owner
        await alice.send_json({"type": "broadcast.stop"})
        stopped = await alice.expect("broadcast.ended", timeout=30)
        assert stopped["session_id"] == again
        await dave.send_json({"type": "broadcast.stop"})
        assert (await dave.expect("broadcast.ended", timeout=30))["recording_id"]
        await alice_sink.stop()
        await dave_sink.stop()
    finally:
        for pc in peers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 5)
        for player in players:
            if player.audio is not None:
                player.audio.stop()
        for ws in sockets:
            await ws.close()

    # The killed worker's recording was repaired: a readable WAV with the audio so far.
    session = await database_sync_to_async(LiveSession.objects.get)(id=alice_session)
    assert session.end_reason == "worker_lost"
    recording = await database_sync_to_async(Recording.objects.get)(session_id=alice_session)
    assert recording.ended_at is not None and recording.duration_s > 2.0
    info = wav_info(Path(recording.file.path))
    assert info.duration_s == pytest.approx(recording.duration_s)
    assert await database_sync_to_async(MediaWorker.objects.count)() == 1  # dead row gone
    assert procs["worker-2" if killed is procs["worker-1"] else "worker-1"].running
