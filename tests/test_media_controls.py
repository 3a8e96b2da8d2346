"""The broadcaster's live switches as engine stages: mute, and denoise on/off."""

from __future__ import annotations

import numpy as np
import pytest

from streams.media.controls import DenoiseSwitchStage, MuteStage
from streams.media.items import BLOCK_SAMPLES, AudioChunk
from streams.processors.base import PassThrough

pytestmark = pytest.mark.backend_free

LATENCY = 1440


class _Scaled(PassThrough):
    """Halves its input, delayed by ``LATENCY`` samples (a stand-in denoiser)."""

    def __init__(self) -> None:
        super().__init__()
        self._held = np.zeros(LATENCY, np.float32)
        self.closed = False

    @property
    def latency_samples(self) -> int:
        return LATENCY

    def process(self, block: np.ndarray) -> np.ndarray:
        joined = np.concatenate([self._held, block * 0.5])
        out, self._held = joined[: len(block)], joined[len(block) :]
        return out.astype(np.float32)

    def close(self) -> None:
        self.closed = True


def _ramp(blocks: int) -> list[AudioChunk]:
    """Consecutive 20 ms chunks whose sample values are their own index + 1."""
    return [
        AudioChunk(
            samples=np.arange(i * BLOCK_SAMPLES, (i + 1) * BLOCK_SAMPLES, dtype=np.float32) + 1,
            pts=i * BLOCK_SAMPLES,
            arrived=0.0,
        )
        for i in range(blocks)
    ]


def _run(stage, chunks):
    out = [item for chunk in chunks for item in stage.process(chunk)]
    return np.concatenate([c.samples for c in out]), [c.pts for c in out]


def test_mute_replaces_samples_with_silence_and_keeps_timing() -> None:
    stage = MuteStage()
    chunks = _ramp(3)
    assert stage.process(chunks[0])[0] is chunks[0]
    stage.muted = True
    (muted,) = stage.process(chunks[1])
    assert muted.pts == chunks[1].pts and not muted.samples.any()
    assert len(muted.samples) == BLOCK_SAMPLES
    stage.muted = False
    assert stage.process(chunks[2])[0] is chunks[2]


def test_denoise_switch_keeps_one_latency_whether_on_off_or_unloaded() -> None:
    chunks = _ramp(12)
    off = DenoiseSwitchStage(None, latency=LATENCY, enabled=True)  # on, but nothing loaded
    samples, pts = _run(off, chunks[:4])
    assert pts == [c.pts - LATENCY for c in chunks[:4]]
    expected = np.concatenate([np.zeros(LATENCY), np.arange(1, 4 * BLOCK_SAMPLES - LATENCY + 1)])
    np.testing.assert_array_equal(samples, expected)  # the input, delayed exactly

    stage = DenoiseSwitchStage(_Scaled(), latency=LATENCY, enabled=True)
    on, on_pts = _run(stage, chunks[:4])
    np.testing.assert_array_equal(on, expected * 0.5)
    stage.enabled = False  # switched off live: raw audio, same delay, no stale tail
    bypass, bypass_pts = _run(stage, chunks[4:8])
    assert on_pts + bypass_pts == [c.pts - LATENCY for c in chunks[:8]]
    assert not bypass[:LATENCY].any()
    np.testing.assert_array_equal(
        bypass[LATENCY:], np.arange(4 * BLOCK_SAMPLES + 1, 8 * BLOCK_SAMPLES - LATENCY + 1)
    )
    stage.enabled = True
    again, _ = _run(stage, chunks[8:])
    assert np.allclose(
        again[LATENCY:], np.arange(8 * BLOCK_SAMPLES + 1, 12 * BLOCK_SAMPLES - LATENCY + 1) * 0.5
    )


def test_denoise_processor_loaded_later_must_match_the_latency_and_is_closed() -> None:
    stage = DenoiseSwitchStage(None, latency=LATENCY, enabled=False)
    assert not stage.has_processor
    with pytest.raises(ValueError):
        stage.processor_set(PassThrough())  # latency 0 would shift the timeline
    processor = _Scaled()
    stage.processor_set(processor)
    with pytest.raises(ValueError):
        stage.processor_set(_Scaled())
    stage.close()
    assert processor.closed


def test_denoise_switch_flush_emits_what_it_holds() -> None:
    stage = DenoiseSwitchStage(None, latency=LATENCY, enabled=False)
    _run(stage, _ramp(2))
    (tail,) = stage.flush(after_pts=2 * BLOCK_SAMPLES, block_samples=BLOCK_SAMPLES)
    assert tail.pts == 2 * BLOCK_SAMPLES - LATENCY
    np.testing.assert_array_equal(
        tail.samples, np.arange(2 * BLOCK_SAMPLES - LATENCY + 1, 2 * BLOCK_SAMPLES + 1)
    )
