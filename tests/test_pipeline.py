"""The live pipeline alone: fan-out, pacing, and failing closed."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from streams.audio import load_audio
from streams.pipeline import BLOCK_SAMPLES, AudioPipeline, ListenerTrack
from streams.processors.base import PassThrough
from streams.recording import WavRecorder


class ToneTrack(MediaStreamTrack):
    """``count`` frames of a 440 Hz tone, s16 stereo 48 kHz 960 samples (like Opus), paced."""

    kind = "audio"

    def __init__(self, count: int, *, pace_s: float = 0.0) -> None:
        super().__init__()
        self.count = count
        self.sent = 0
        self.pace_s = pace_s

    async def recv(self) -> AudioFrame:
        if self.sent >= self.count:
            self.stop()
            raise MediaStreamError
        if self.pace_s:
            await asyncio.sleep(self.pace_s)
        t = (np.arange(BLOCK_SAMPLES) + self.sent * BLOCK_SAMPLES) / 48_000
        mono = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
        frame = AudioFrame.from_ndarray(
            np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = 48_000
        frame.pts = self.sent * BLOCK_SAMPLES
        frame.time_base = Fraction(1, 48_000)
        self.sent += 1
        return frame


class Exploding(PassThrough):
    """Fails on its third block."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def process(self, block: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("model crashed")
        return super().process(block)


class Slow(PassThrough):
    """Takes 60 ms per 20 ms block: three times slower than real time."""

    def process(self, block: np.ndarray) -> np.ndarray:
        time.sleep(0.06)
        return super().process(block)


class Hanging(PassThrough):
    def process(self, block: np.ndarray) -> np.ndarray:
        time.sleep(1.0)
        return super().process(block)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _assert_recorded_as_heard(tmp_path, blocks: list[np.ndarray]) -> None:
    """The recorder got exactly what the listener got: silence where it got silence."""
    recorded = load_audio(tmp_path / "rec.wav")
    assert len(recorded) == len(blocks) * BLOCK_SAMPLES
    for i, block in enumerate(blocks):
        written = recorded[i * BLOCK_SAMPLES : (i + 1) * BLOCK_SAMPLES]
        if np.any(block):
            np.testing.assert_allclose(written, block, atol=2 / 32768)  # 16-bit on disk
        else:
            assert not np.any(written), f"block {i}: silent for listeners, not in the file"


async def _run(processor, source, tmp_path, **kwargs):
    executor = ThreadPoolExecutor(max_workers=2)
    recorder = WavRecorder(tmp_path / "rec.wav")
    pipeline = AudioPipeline(
        source=source, processor=processor, executor=executor, recorder=recorder, **kwargs
    )
    listener = ListenerTrack(max_queue_blocks=1000)
    pipeline.fanout.add(listener)
    ended = asyncio.Event()
    pipeline._on_end = ended.set
    await asyncio.wait_for(pipeline.run(), timeout=20)
    assert ended.is_set()
    recorder.close()
    blocks = [block for block, _ in listener._queue]
    executor.shutdown(wait=False)
    return pipeline, blocks


async def test_passthrough_reaches_listener_and_recorder(tmp_path) -> None:
    pipeline, blocks = await _run(PassThrough(), ToneTrack(25), tmp_path)
    assert pipeline.stats.blocks_in == 25 and pipeline.stats.blocks_processed == 25
    assert len(blocks) == 25 and all(len(b) == BLOCK_SAMPLES for b in blocks)
    assert _rms(np.concatenate(blocks)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    assert pipeline.recorder.frames_written == 25 * BLOCK_SAMPLES


async def test_processor_error_fails_closed_to_silence(tmp_path) -> None:
    pipeline, blocks = await _run(Exploding(), ToneTrack(10), tmp_path)
    assert "model crashed" in pipeline.stats.failed
    assert _rms(np.concatenate(blocks[:2])) > 0.3  # before the failure: processed audio
    assert all(not np.any(b) for b in blocks[2:])  # from the failure on: silence, never raw
    assert pipeline.stats.blocks_silenced == 8
    assert len(blocks) == 10
    _assert_recorded_as_heard(tmp_path, blocks)


async def test_processor_falling_behind_silences_instead_of_leaking(tmp_path) -> None:
    # The source delivers in real time; the processor needs 3x real time.
    pipeline, blocks = await _run(Slow(), ToneTrack(50, pace_s=0.02), tmp_path, max_lag_s=0.1)
    assert pipeline.stats.lag_events > 0
    assert pipeline.stats.blocks_silenced == pipeline.stats.lag_events
    silent = [b for b in blocks if not np.any(b)]
    assert len(silent) == pipeline.stats.blocks_silenced
    assert len(blocks) == 50
    _assert_recorded_as_heard(tmp_path, blocks)


async def test_hanging_processor_is_abandoned(tmp_path) -> None:
    pipeline, blocks = await _run(Hanging(), ToneTrack(4), tmp_path, stall_timeout_s=0.2)
    assert pipeline.stats.failed == "stalled"
    assert len(blocks) == 4  # not vacuous: every block arrived, as silence
    assert all(not np.any(b) for b in blocks)


async def test_listener_track_paces_and_fills_underruns_with_silence() -> None:
    track = ListenerTrack(prebuffer_blocks=1)
    track.push(np.full(BLOCK_SAMPLES, 0.25, np.float32), time.monotonic())
    started = time.monotonic()
    frames = [await track.recv() for _ in range(6)]
    elapsed = time.monotonic() - started
    assert 0.08 <= elapsed < 0.5  # 5 frame intervals of 20 ms after the first
    assert [f.pts for f in frames] == [i * BLOCK_SAMPLES for i in range(6)]
    assert frames[0].sample_rate == 48_000 and frames[0].samples == BLOCK_SAMPLES
    assert np.any(frames[0].to_ndarray()) and not np.any(frames[1].to_ndarray())
    assert track.underruns == 5 and track.frames_sent == 6
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_listener_track_starts_after_its_playout_buffer_fills() -> None:
    track = ListenerTrack(prebuffer_blocks=2)
    track.push(np.full(BLOCK_SAMPLES, 0.25, np.float32), time.monotonic())
    pending = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.05)
    assert not pending.done()  # one block is not enough to start
    track.push(np.full(BLOCK_SAMPLES, 0.5, np.float32), time.monotonic())
    frame = await asyncio.wait_for(pending, 1)
    assert frame.pts == 0 and np.any(frame.to_ndarray())
    track.stop()


def test_listener_queue_is_bounded() -> None:
    track = ListenerTrack(max_queue_blocks=3)
    for _ in range(5):
        track.push(np.zeros(BLOCK_SAMPLES, np.float32), time.monotonic())
    assert len(track._queue) == 3 and track.dropped == 2
