"""Live bleeping wiring (streams/media/live_pii.py): the delay line lets out only
decided audio, a stalled analysis mutes instead of passing raw audio, captions follow
what left the delay line with every entity masked, and redactions reach the audit."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from streams.media.items import SAMPLE_RATE, AudioChunk, Event
from streams.media.live_pii import LivePii
from streams.media.pii import PiiDetector
from streams.media.pii_analysis import PiiAnalyser
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
