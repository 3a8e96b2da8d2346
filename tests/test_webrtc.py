"""WebRTC end to end in one process: aiortc broadcaster → Hearth server → aiortc listener.

All peers gather ICE host candidates on 127.0.0.1 only (``ICE_HOST_ADDRESSES``),
so every packet stays on loopback.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest
from aiortc.contrib.media import MediaPlayer
from channels.db import database_sync_to_async

from streams.audio import load_audio
from streams.models import LiveSession, Recording
from streams.quality import align, si_snr
from streams.rtc import media_server
from tests.rtc_helpers import (
    AudioSink,
    accept_answer,
    client_peer,
    communicator_for,
    expect,
    offer_sdp,
)
from users.models import Friendship, User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _users() -> tuple[User, User, User]:
    alice = User.objects.create_user("alice", password="pw-alice-123")
    bob = User.objects.create_user("bob", password="pw-bob-123")
    carol = User.objects.create_user("carol", password="pw-carol-123")
    Friendship.objects.create(user_low=alice, user_high=bob)
    return alice, bob, carol


async def _go_live(comm, path: Path, *, denoise: bool = True):
    player = MediaPlayer(str(path))
    pc = client_peer()
    pc.addTransceiver(player.audio, direction="sendonly")
    await comm.send_json_to(
        {"type": "broadcast.start", "sdp": await offer_sdp(pc), "denoise": denoise}
    )
    answer = await expect(comm, "broadcast.answer")
    await accept_answer(pc, answer["sdp"])
    return pc, player, answer["session_id"]


async def _listen(comm, session_id: int):
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


async def test_friend_hears_denoised_speech_and_recording_is_finalised(
    noisy_jfk_speech_level_wav: Path, jfk_48k: np.ndarray, noisy_jfk_speech_level: np.ndarray
) -> None:
    alice, bob, carol = await database_sync_to_async(_users)()
    a, b, c = (communicator_for(u) for u in (alice, bob, carol))
    for comm in (a, b, c):
        connected, _ = await comm.connect()
        assert connected
        await expect(comm, "hello")

    pc_a, player, session_id = await _go_live(a, noisy_jfk_speech_level_wav)
    live = await expect(b, "live")  # bob's page hears alice went live, no reload
    assert live["live"] is True and live["session_id"] == session_id

    pc_b, sink = await _listen(b, session_id)
    stats = await expect(a, "session.stats")
    assert stats["listeners"] == 1

    # A non-friend is refused and gets no media.
    pc_c = client_peer()
    pc_c.addTransceiver("audio", direction="recvonly")
    await c.send_json_to(
        {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(pc_c)}
    )
    refused = await expect(c, "error")
    assert refused["code"] == "not_allowed" and refused["ref"] == "listen.start"

    # Let the whole 11 s file play through (MediaPlayer paces at real time).
    await asyncio.sleep(len(noisy_jfk_speech_level) / 48_000 - 2)
    room = media_server().rooms[session_id]
    listener_track = next(iter(room.listeners.values())).track
    # Encode once: the listener's track is fed by the room's one shared encoder.
    assert room.relay is not None and listener_track in room.relay.tracks
    assert room.relay.packets_encoded > 0 and listener_track.sent > 0
    await asyncio.sleep(3.5)
    received = await sink.stop()

    await a.send_json_to({"type": "broadcast.stop"})
    ended = await expect(a, "broadcast.ended")
    assert (await expect(b, "session.ended"))["session_id"] == session_id
    for pc in (pc_a, pc_b, pc_c):
        await pc.close()
    player.audio.stop()
    for comm in (a, b, c):
        await comm.disconnect()

    # The listener heard speech, denoised: SI-SNR against clean JFK beats the noisy input by 5 dB.
    assert len(received) > 48_000 * 5, "listener got under 5 s of audio"
    est, ref, lag = align(received, jfk_48k, max_lag=len(received))
    start = -lag if lag < 0 else 0
    noisy_part = noisy_jfk_speech_level[start : start + len(ref)]
    listener_db = si_snr(est, ref)
    noisy_db = si_snr(noisy_part, ref)
    print(f"listener SI-SNR {listener_db:.2f} dB vs noisy input {noisy_db:.2f} dB")
    assert listener_db >= noisy_db + 5.0

    # The recording holds the processed audio and is finalised.
    recording = await database_sync_to_async(Recording.objects.get)(id=ended["recording_id"])
    session = await database_sync_to_async(LiveSession.objects.get)(id=session_id)
    assert session.ended_at is not None and session.end_reason == "stopped"
    assert recording.ended_at is not None and recording.processing["denoise"] is True
    path = Path(recording.file.path)
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == 48_000 and wav.getnchannels() == 1
        frames = wav.getnframes()
        assert frames == path.stat().st_size // 2 - 22  # header fixed up: 44-byte header
    assert 9.0 < recording.duration_s < 14.0
    assert abs(recording.duration_s - frames / 48_000) < 0.01
    assert media_server().rooms == {}

    # What was recorded is the processed (denoised) audio, not the raw input.
    recorded = load_audio(path)
    est, ref, lag = align(recorded, jfk_48k, max_lag=len(recorded))
    noisy_part = noisy_jfk_speech_level[max(0, -lag) : max(0, -lag) + len(ref)]
    assert si_snr(est, ref) >= si_snr(noisy_part, ref) + 5.0
