"""SIGTERM / SIGINT to a daphne process with a live broadcast: it finalises and exits.

The media server's Twisted "before shutdown" trigger must end every live session
(``end_reason="server_shutdown"``), close the WAV file with a correct header, and
let the reactor stop; the process must not hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import wave
from pathlib import Path

import pytest
from aiortc.contrib.media import MediaPlayer
from channels.db import database_sync_to_async

from streams.models import LiveSession, Recording
from tests import live_server
from tests.live_server import WsClient, session_cookie
from tests.rtc_helpers import accept_answer, client_peer, offer_sdp
from users.models import User

daphne_factory = live_server.daphne_factory
loopback_ice = live_server.loopback_ice

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LIVE_S = 3.0
EXIT_WITHIN_S = 15.0


@pytest.fixture
def alice(transactional_db):
    user = User.objects.create_user("alice", password="pw-alice-123")
    return user, session_cookie(user)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_finalises_live_session_and_exits(
    daphne_factory, loopback_ice, alice, noisy_jfk_wav: Path, sig: signal.Signals
) -> None:
    # REDIS_URL when the run has one (both layers must shut down cleanly), else in-memory.
    server = daphne_factory("daphne", redis_url=os.environ.get("REDIS_URL") or None)
    _, cookie = alice
    player = MediaPlayer(str(noisy_jfk_wav))
    pc = client_peer()
    ws = await WsClient.open(server.ws_url, cookie, origin=server.origin, name="alice")
    try:
        await ws.expect("hello")
        pc.addTransceiver(player.audio, direction="sendonly")
        await ws.send_json({"type": "broadcast.start", "sdp": await offer_sdp(pc), "denoise": True})
        answer = await ws.expect("broadcast.answer", timeout=20)
        await accept_answer(pc, answer["sdp"])
        session_id = answer["session_id"]
        await asyncio.sleep(LIVE_S)

        server.send_signal(sig)
        started = time.monotonic()
        code = await asyncio.to_thread(server.wait, EXIT_WITHIN_S)
        took = time.monotonic() - started
        print(f"daphne exited with {code} {took:.2f} s after {sig.name}")
        assert code is not None, (
            f"daphne still running {EXIT_WITHIN_S} s after {sig.name}\n{server.log_tail()}"
        )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pc.close(), 5)
        if player.audio is not None:
            player.audio.stop()
        await ws.close()

    log = server.log_text()
    assert "media server shutting down: 1 live session(s)" in log, server.log_tail()

    session = await database_sync_to_async(LiveSession.objects.get)(id=session_id)
    assert session.ended_at is not None, "the live session was left open"
    assert session.end_reason == "server_shutdown", (
        f"end_reason {session.end_reason!r}\n{server.log_tail()}"
    )
    recording = await database_sync_to_async(Recording.objects.get)(session_id=session_id)
    assert recording.ended_at is not None
    assert recording.duration_s > 1.0, f"recording is {recording.duration_s:.2f} s"

    path = Path(recording.file.path)
    size = path.stat().st_size
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48_000, 1, 2)
        frames = wav.getnframes()
    assert frames == (size - 44) // 2, "WAV header sizes were not fixed up"
    assert frames > 48_000
    assert abs(recording.duration_s - frames / 48_000) < 0.01
    assert recording.size_bytes == size
