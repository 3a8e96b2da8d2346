"""Stages the broadcaster controls while live: mute, and denoise on/off.

Both are switched from the event loop (a plain attribute write, atomic in CPython)
and read by the stream's worker thread at the next chunk, so a switch takes effect
within one block (20 ms). Neither changes the stream's timing: the muted stage
keeps pts, and the denoise switch declares one constant latency whether its
processor runs or not, so the recording and the listeners' timeline never jump.
"""

from __future__ import annotations

import threading

import numpy as np

from streams.media.items import AudioChunk, Item, silence
from streams.media.stage import ProcessorStage, Stage
from streams.processors.base import AudioProcessor


class MuteStage(Stage):
    """Passes audio through, or silence while :attr:`muted` (latency 0).

    Silence, not a gap: listeners keep a running stream and the recording keeps the
    muted time as digital silence, so its duration matches the broadcast.
    """

    name = "mute"
    skippable = False  # costs nothing; skipping would only fail closed to silence

    def __init__(self, *, muted: bool = False) -> None:
        self.muted = muted

    def latency_ticks(self) -> int:
        """0: the stage only replaces samples."""
        return 0

    def process(self, chunk: AudioChunk) -> list[Item]:
        """``chunk`` unchanged, or a chunk of zeros of the same length and pts."""
        if not self.muted:
            return [chunk]
        return [
            AudioChunk(samples=silence(len(chunk.samples)), pts=chunk.pts, arrived=chunk.arrived)
        ]


class _DelayBuffer:
    """A FIFO that delays a float32 sample stream by a fixed number of samples."""

    def __init__(self, delay: int) -> None:
        self._held = np.zeros(delay, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append ``samples``; return as many samples, ``delay`` samples older."""
        joined = np.concatenate([self._held, samples.astype(np.float32, copy=False)])
        out, self._held = joined[: len(samples)], joined[len(samples) :]
        return out


class DenoiseSwitchStage(Stage):
    """A denoiser the broadcaster can turn off and on while live.

    While :attr:`enabled` and a processor is set, chunks go through it (a
    :class:`~streams.media.stage.ProcessorStage`: its failures fail the stage
    closed, to silence, as before). Otherwise the input leaves unchanged, delayed by
    the same ``latency`` the processor has, so switching never shifts the timeline.
    A broadcast that started without denoise gets its processor later with
    :meth:`processor_set` (loaded off the stream's thread).

    Args:
        processor: The denoiser, or None to start without one.
        latency: Samples at 48 kHz the stage always delays by: the processor's
            latency (1440 for DeepFilterNet3 with 960-sample blocks, see
            ``streams.processors.denoise``).
        enabled: Whether denoise starts on (ignored until a processor is set).

    Raises:
        ValueError: a processor whose latency differs from ``latency``.
    """

    name = "denoise"

    def __init__(self, processor: AudioProcessor | None, *, latency: int, enabled: bool) -> None:
        self._latency = latency
        self._lock = threading.Lock()  # processor_set (loop) vs close (any thread)
        self._inner: ProcessorStage | None = None
        self._bypass = _DelayBuffer(latency)
        self._bypassing = True
        self.enabled = enabled
        if processor is not None:
            self.processor_set(processor)

    @property
    def has_processor(self) -> bool:
        """Whether a denoiser is loaded (it may still be switched off)."""
        return self._inner is not None

    def processor_set(self, processor: AudioProcessor) -> None:
        """Use ``processor`` from the next chunk on (the stage owns and closes it).

        Raises:
            ValueError: its latency differs from the stage's, or one is set already.
        """
        if processor.latency_samples != self._latency:
            raise ValueError(
                f"{processor.name} delays by {processor.latency_samples} samples, "
                f"the stage by {self._latency}"
            )
        with self._lock:
            if self._inner is not None:
                raise ValueError("the denoise stage has a processor already")
            self._inner = ProcessorStage(processor)

    def latency_ticks(self) -> int:
        """The constant delay, in 48 kHz ticks."""
        return self._latency

    def process(self, chunk: AudioChunk) -> list[Item]:
        """Denoise ``chunk`` (when on and loaded), else pass it through delayed.

        Raises:
            StageError, ProcessorError: the denoiser failed (the graph fails closed).
        """
        inner = self._inner
        if self.enabled and inner is not None:
            self._bypassing = False
            return inner.process(chunk)
        if not self._bypassing:  # just switched off: never replay an older bypass tail
            self._bypass = _DelayBuffer(self._latency)
            self._bypassing = True
        delayed = self._bypass.push(chunk.samples)
        return [AudioChunk(samples=delayed, pts=chunk.pts - self._latency, arrived=chunk.arrived)]

    def flush(self, *, after_pts: int, block_samples: int) -> list[Item]:
        """Emit the ``latency`` samples still held (by the denoiser or the bypass)."""
        inner = self._inner
        if self.enabled and inner is not None:
            return inner.flush(after_pts=after_pts, block_samples=block_samples)
        tail = self._bypass.push(silence(self._latency))
        return [AudioChunk(samples=tail, pts=after_pts - self._latency, arrived=0.0)]

    def close(self) -> None:
        """Close the denoiser, if any (idempotent)."""
        with self._lock:
            if self._inner is not None:
                self._inner.close()
