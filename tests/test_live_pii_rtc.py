"""Bleeping personal information live, end to end with aiortc peers in this process:
the broadcaster's page asks for it, a friend listens behind the delay line.

A stalled speech-to-text branch must give muted audio, never raw, also in the
recording's tail when the broadcast stops; a stop keeps the delay line's tail once it
is checked (not muted); real speech with a
phone number (espeak-ng + Whisper base) must leave no digit audible in the recording,
captions must arrive masked, and the redactions must reach the audit trail.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc.contrib.media import MediaPlayer
from channels.db import database_sync_to_async

from bench._pii_corpus import espeak_available, speak
from streams import pii_setup, rtc
from streams.audio import load_audio, write_wav
from streams.media import live_pii
from streams.media.pii_analysis import PiiAnalyser
from streams.models import Recording, RedactionEvent
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

WAIT_S = 30.0
DIGIT_WORDS = {"zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


async def _broadcast(a, b, wav: Path, *, bleep: str, delay_s: float, pcs: list[Any]):
    """Alice goes live with bleeping on; Bob listens. Returns (session id, Bob's sink,
    Alice's player)."""
    player = MediaPlayer(str(wav))
    pc = client_peer()
    pcs.append(pc)
    pc.addTransceiver(player.audio, direction="sendonly")
    await a.send_json_to(
        {
            "type": "broadcast.start",
            "sdp": await offer_sdp(pc),
            "denoise": False,
            "bleep": bleep,
            "delay_s": delay_s,
        }
    )
    answer = await expect_matching(a, "broadcast.answer", timeout=60)
    await accept_answer(pc, answer["sdp"])
    session_id = answer["session_id"]
    listener = client_peer()
    pcs.append(listener)
    listener.addTransceiver("audio", direction="recvonly")
    got: asyncio.Future = asyncio.get_running_loop().create_future()
    listener.on("track", lambda t: got.done() or got.set_result(t))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while rtc.media_server().rooms[session_id].runner is None:
        assert loop.time() < deadline, "no audio from the broadcaster"
        await asyncio.sleep(0.05)
    await b.send_json_to(
        {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(listener)}
    )
    await accept_answer(listener, (await expect_matching(b, "listen.answer"))["sdp"])
    return session_id, AudioSink(await asyncio.wait_for(got, WAIT_S)), player


async def _people():
    def make():
        alice, bob = make_user("alice"), make_user("bob")
        befriend(alice, bob)
        return alice, bob

    return await database_sync_to_async(make)()


class _Stalled:
    """Speech-to-text stuck in its first window (a hung model call)."""

    name = "stalled"

    def __init__(self) -> None:
        self.release = threading.Event()

    def transcribe(self, samples, pts):
        self.release.wait(60)
        return []


async def test_a_stalled_analysis_mutes_the_live_audio(monkeypatch, noisy_jfk_wav: Path) -> None:
    words = _Stalled()
    monkeypatch.setattr(live_pii, "DRAIN_MARGIN_S", 1.0)  # the stop waits D + 1 s for it
    monkeypatch.setattr(
        rtc,
        "build_analyser",
        lambda timeline, **_: PiiAnalyser(words, pii_setup.detector(), timeline),
    )
    alice, bob = await _people()
    a, b = await connected(alice), await connected(bob)
    pcs: list[Any] = []
    player = None
    try:
        _, sink, player = await _broadcast(a, b, noisy_jfk_wav, bleep="tone", delay_s=2.0, pcs=pcs)
        stats = await expect_matching(
            a, "session.stats", lambda f: f.get("pii", {}).get("muted_s", 0) > 2.0, timeout=WAIT_S
        )
        assert stats["pii"]["redacted_s"] == 0
        heard = sink.samples
        assert len(heard) > 48_000 and not heard.any(), "raw audio reached the listener"
        await sink.stop()
        # Stopped while the analysis is still stuck: the stop waits for it only so long
        # (D + the margin), and the delay line's tail reaches the recording muted.
        await a.send_json_to({"type": "broadcast.stop"})
        ended = await expect_matching(a, "broadcast.ended", timeout=WAIT_S)
    finally:
        words.release.set()
        if player is not None and player.audio is not None:
            player.audio.stop()
        await close_all(pcs, [a, b])
    recording = await database_sync_to_async(Recording.objects.get)(id=ended["recording_id"])
    audio = load_audio(Path(recording.file.path))
    assert len(audio) > 2 * 48_000 and not audio.any(), "raw audio reached the recording"


class _HearsNothing:
    """Speech-to-text that finds no words: everything it is given is cleared."""

    name = "nothing"

    def transcribe(self, samples, pts):
        return []


async def test_a_stop_keeps_the_checked_tail_of_the_delay_line(
    monkeypatch, noisy_jfk_wav: Path
) -> None:
    monkeypatch.setattr(
        rtc,
        "build_analyser",
        lambda timeline, **_: PiiAnalyser(_HearsNothing(), pii_setup.detector(), timeline),
    )
    alice, bob = await _people()
    a, b = await connected(alice), await connected(bob)
    pcs: list[Any] = []
    player = None
    try:
        _, sink, player = await _broadcast(a, b, noisy_jfk_wav, bleep="tone", delay_s=2.0, pcs=pcs)
        # Speech has reached the listener for a while (well into the speech): stop.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while len(sink.samples) < 2 * 48_000 or not np.abs(sink.samples).max() > 0.01:
            assert loop.time() < deadline, "no speech reached the listener"
            await asyncio.sleep(0.1)
        await a.send_json_to({"type": "broadcast.stop"})
        ended = await expect_matching(a, "broadcast.ended", timeout=WAIT_S)
        await sink.stop()
    finally:
        if player is not None and player.audio is not None:
            player.audio.stop()
        await close_all(pcs, [a, b])
    recording = await database_sync_to_async(Recording.objects.get)(id=ended["recording_id"])
    audio = load_audio(Path(recording.file.path))
    # The last 2 s were still in the delay line at the stop: the analysis decided them
    # (clear) before they left, so they are the speech, not silence.
    tail = audio[-2 * 48_000 :]
    assert len(audio) > 2.5 * 48_000
    assert np.sqrt(np.mean(tail**2)) > 0.01, "the delay line's tail was muted at the stop"
    muted = await database_sync_to_async(
        lambda: list(RedactionEvent.objects.filter(recording=recording, entity="UNKNOWN"))
    )()
    assert all(r.end_s < recording.duration_s - 2.0 for r in muted), muted


@pytest.mark.skipif(not espeak_available(), reason="needs Debian espeak-ng (.ci/dev installs it)")
async def test_a_phone_number_said_live_is_bleeped_captioned_masked_and_audited(
    tmp_path: Path,
) -> None:
    sentence = (
        "Hi there. You can call me on zero seven seven zero, zero nine zero, "
        "zero one two three. See you soon."
    )
    speech = speak(sentence, "en-gb", 150, tmp_path)
    silence = np.zeros(48_000, np.float32)
    wav = tmp_path / "phone.wav"
    write_wav(wav, np.concatenate([silence, speech, silence, silence]))
    transcriber = pii_setup.transcriber()  # load once, outside the timed broadcast
    alice, bob = await _people()
    a, b = await connected(alice), await connected(bob)
    pcs: list[Any] = []
    player = None
    captions: list[str] = []
    try:
        _, sink, player = await _broadcast(a, b, wav, bleep="tone", delay_s=6.0, pcs=pcs)
        length_s = len(load_audio(wav)) / 48_000
        loop = asyncio.get_running_loop()
        deadline = loop.time() + length_s + 20
        while loop.time() < deadline and len(sink.samples) < (length_s + 5) * 48_000:
            if await b.receive_nothing(timeout=0.5):  # (a timeout would kill the consumer)
                continue
            frame = await b.receive_json_from(timeout=5)
            if frame["type"] == "session.caption":
                captions.append(frame["text"])
        await a.send_json_to({"type": "broadcast.stop"})
        ended = await expect_matching(a, "broadcast.ended", timeout=WAIT_S)
        await sink.stop()
    finally:
        if player is not None and player.audio is not None:
            player.audio.stop()
        await close_all(pcs, [a, b])

    # Nothing the listeners or the recording got lets a digit be heard.
    recording = await database_sync_to_async(Recording.objects.get)(id=ended["recording_id"])
    audio = load_audio(Path(recording.file.path))
    words = await asyncio.to_thread(transcriber.transcribe, audio, 0)
    heard = {w.text.strip(" ,.").lower() for w in words}
    assert not heard & DIGIT_WORDS, f"digits still audible: {sorted(heard & DIGIT_WORDS)}"
    assert not any(ch.isdigit() for w in heard for ch in w), heard
    # Captions came live and masked; the transcript and the audit trail were stored.
    text = " ".join(captions)
    assert captions, "no live captions"
    assert not set(text.lower().replace(",", " ").split()) & DIGIT_WORDS, text
    redactions = await database_sync_to_async(
        lambda: list(RedactionEvent.objects.filter(recording=recording))
    )()
    print("captions:", captions)
    print("redactions:", [(r.entity, round(r.start_s, 2), round(r.end_s, 2)) for r in redactions])
    print("heard:", sorted(heard))
    assert redactions, "no redaction stored"
    assert any(r.entity in {"PHONE_NUMBER", "DIGIT_RUN", "UNKNOWN"} for r in redactions)
    assert recording.transcript and recording.processing["bleep_pii"] == "tone"
    assert "phone" in text or "[number]" in text or "[…]" in text
