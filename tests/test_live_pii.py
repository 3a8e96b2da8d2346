"""Live bleeping wiring (streams/media/live_pii.py): the delay line lets out only
decided audio, a stalled analysis mutes instead of passing raw audio, captions follow
what left the delay line with every entity masked, and redactions reach the audit.
At a stop the delay line's tail waits (bounded) for the analysis: PII said just
before is still bleeped, clean speech is kept, a stalled analysis leaves it muted."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from streams.media.controls import MuteStage
from streams.media.graph import Graph, GraphRunner, Source
from streams.media.items import SAMPLE_RATE, AudioChunk, Event
from streams.media.live_pii import LivePii
from streams.media.pii import PiiDetector
from streams.media.pii_analysis import PiiAnalyser
from streams.media.sinks import CollectSink
from streams.media.timeline import bleep
from streams.media.workers import Workers
from tests.test_pii_analysis import PHONE, Script, said

pytestmark = pytest.mark.backend_free

S = SAMPLE_RATE
BLOCK = 960


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    return PiiDetector()


def _tone(seconds: float) -> list[AudioChunk]:
    """A loud 440 Hz tone (the 'raw' audio) in 20 ms chunks from pts 0."""
    n = round(seconds * S)
    t = np.arange(n) / S
    samples = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return [AudioChunk(samples[i : i + BLOCK], i, 0.0) for i in range(0, n, BLOCK)]


def _run(live: LivePii, chunks: list[AudioChunk], *, wait_analysis: bool) -> np.ndarray:
    """Feed the tap, then the delay line, as the graph would; returns what left the
    delay line (the listeners' audio) and hands its events to ``live``. With
    ``wait_analysis`` the analysis finishes first (it kept up); otherwise the delay
    line runs while the analysis is stuck."""
    out: list[AudioChunk] = []

    def take(items) -> None:
        for item in items:
            if isinstance(item, Event):
                live.on_event(item)
            else:
                out.append(item)
                live._released(item)

    for chunk in chunks:
        live.threaded.submit(chunk)
    if wait_analysis:  # an analysis that keeps up: it has decided before audio leaves
        live.threaded.close(timeout=30)
    for chunk in chunks:
        take(live.delay.process(chunk))
    take(live.delay.flush(after_pts=chunks[-1].end_pts, block_samples=BLOCK))
    return np.concatenate([c.samples for c in out])


def test_pii_is_bleeped_captions_are_masked_and_redactions_audited(detector) -> None:
    script = Script([*said("please call me on", 0.3), *said(PHONE, 1.6), *said("thank you", 5.2)])
    live = LivePii(
        lambda timeline: PiiAnalyser(script, detector, timeline), delay_s=3.0, bleep_tone=False
    )
    audio = _run(live, _tone(7.0), wait_analysis=True)

    phone_start, phone_end = round(1.6 * S), round((1.6 + 11 * 0.3) * S)
    assert not audio[phone_start:phone_end].any(), "a phone-number sample left unbleeped"
    assert np.abs(audio[: round(1.2 * S)]).max() > 0.4  # speech before it passed
    (redaction,) = live.audit_drain()
    assert redaction.label == "PHONE_NUMBER" and redaction.verdict == "redact"
    assert redaction.start <= phone_start and redaction.end >= phone_end
    assert live.stats()["redacted_s"] >= 3.3

    (cue,) = live.captions_due()
    text = cue[2]
    assert "[phone number]" in text and "please call me" in text and "thank you" in text
    assert not {"zero", "seven", "nine", "one", "two"} & set(text.replace("[", " ").split())
    assert live.captions_due() == []  # each word is captioned once


class _Stalled:
    """A word source stuck in its first window (a hung ASR call)."""

    name = "stalled"

    def __init__(self) -> None:
        self.release = threading.Event()

    def transcribe(self, samples, pts):
        self.release.wait(30)
        return []


def test_a_stalled_analysis_mutes_the_audio_instead_of_passing_it_raw(detector) -> None:
    words = _Stalled()
    live = LivePii(
        lambda timeline: PiiAnalyser(words, detector, timeline), delay_s=1.0, bleep_tone=True
    )
    try:
        audio = _run(live, _tone(4.0), wait_analysis=False)
    finally:
        words.release.set()
        live.threaded.close(timeout=30)
    assert len(audio) == round(4.0 * S) // BLOCK * BLOCK
    assert not audio.any(), "undecided audio left the delay line"
    assert live.stats()["muted_s"] == pytest.approx(4.0, abs=0.05)
    assert live.audit_drain() == []  # nothing was found, so nothing is audited
    assert live.captions_due() == []


# -- stopping: the delay line's tail ------------------------------------------------------


class _ListSource(Source):
    """``chunks`` as fast as the graph takes them, then the end of the stream (a stop)."""

    def __init__(self, chunks: list[AudioChunk]) -> None:
        self.chunks = list(chunks)

    async def read(self) -> AudioChunk | None:
        await asyncio.sleep(0)
        return self.chunks.pop(0) if self.chunks else None


def _stop_after(live: LivePii, chunks: list[AudioChunk]) -> CollectSink:
    """Run the live wiring (mute stage → tap + delay line → sinks) through a
    :class:`GraphRunner` over ``chunks``; the stream then ends as a stop would. Returns
    what the recorder would have got."""
    recorder = CollectSink()
    graph = Graph(
        stages=[MuteStage(), *live.stages()],
        sinks=[recorder, live.released_sink()],
        taps={0: [live.tap()]},
    )
    workers = Workers(load_threads=1, io_threads=1, encode_threads=1)
    runner = GraphRunner(
        graph,
        _ListSource(chunks),
        workers=workers,
        name="stop-test",
        max_lag_s=None,
        on_event=live.on_event,
    )

    async def run() -> None:
        await asyncio.wait_for(runner.run(), timeout=60)

    try:
        asyncio.run(run())
    finally:
        workers.shutdown()
    return recorder


def test_a_stop_right_after_pii_still_bleeps_it_in_the_recording(detector) -> None:
    # The number ends 0.7 s before the stop: most of it is still inside the 3 s delay
    # line when the broadcast stops.
    script = Script([*said("call me on", 1.0), *said(PHONE, 2.0)])
    live = LivePii(
        lambda timeline: PiiAnalyser(script, detector, timeline), delay_s=3.0, bleep_tone=True
    )
    raw = _tone(6.0)
    try:
        out = _stop_after(live, raw).samples
    finally:
        live.threaded.close(timeout=30)
    source = np.concatenate([c.samples for c in raw])
    assert len(out) == len(source)  # nothing of the tail dropped
    phone_start, phone_end = round(2.0 * S), round((2.0 + 11 * 0.3) * S)
    assert not np.any(
        np.isclose(out[phone_start:phone_end], source[phone_start:phone_end])[
            np.abs(source[phone_start:phone_end]) > 0.05
        ]
    ), "raw audio of the number reached the recording"
    # The part still held at the stop was decided, not muted: it is the bleep.
    tail = slice(round(3.0 * S), phone_end)
    expected = bleep()(np.zeros(tail.stop - tail.start, np.float32), tail.start)
    np.testing.assert_allclose(out[tail], expected, atol=1e-6)
    assert "PHONE_NUMBER" in {r.label for r in live.audit_drain()}
    # Muted at most: what left during the stream before the analysis caught up (the
    # source here runs faster than real time); nothing of the 3 s tail.
    assert live.stats()["muted_s"] <= 3.0


def test_clean_speech_at_the_end_of_a_broadcast_is_kept(detector) -> None:
    script = Script([*said("good night everyone and thank you for listening", 2.5)])
    live = LivePii(
        lambda timeline: PiiAnalyser(script, detector, timeline), delay_s=3.0, bleep_tone=True
    )
    raw = _tone(5.5)
    try:
        out = _stop_after(live, raw).samples
    finally:
        live.threaded.close(timeout=30)
    source = np.concatenate([c.samples for c in raw])
    tail = slice(round(2.5 * S), len(source))  # all held in the delay line at the stop
    np.testing.assert_array_equal(out[tail], source[tail])
    (cue,) = [c for c in live.captions_due() if "listening" in c[2]]
    assert "good night everyone" in cue[2] and "[…]" not in cue[2]


def test_a_stalled_analysis_at_the_stop_leaves_the_tail_muted(detector) -> None:
    words = _Stalled()
    live = LivePii(
        lambda timeline: PiiAnalyser(words, detector, timeline),
        delay_s=1.0,
        bleep_tone=True,
        drain_s=0.5,
    )
    try:
        out = _stop_after(live, _tone(3.0)).samples
    finally:
        words.release.set()
        live.threaded.close(timeout=30)
    assert len(out) == round(3.0 * S) // BLOCK * BLOCK
    assert not out.any(), "undecided audio reached the recording at the stop"
    assert live.stats()["muted_s"] == pytest.approx(3.0, abs=0.05)
