"""Live audio pipeline: broadcaster track → processor → fan-out to listener tracks.

No Django here: this module is driven by ``streams.rtc`` in the server and used
alone by tests and ``bench/live.py``.

Data path (all audio float32 mono at 48 kHz, in 20 ms blocks of 960 samples)::

    source track ──recv──▶ FrameToMono ──▶ re-block 960 ──▶ executor:
        processor.process(block) + recorder.write(out) ──▶ FanOut ──▶ ListenerTrack × N

Fail closed: listeners only ever get processor output or silence. When the
processor raises, hangs past ``stall_timeout_s``, or falls behind real time by more
than ``max_lag_s``, the affected blocks become silence (recorded as silence too);
raw input never reaches a listener or the recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from streams.audio import SAMPLE_RATE, FrameToMono, samples_to_frame
from streams.processors.base import AudioProcessor
from streams.recording import WavRecorder

logger = logging.getLogger("hearth.pipeline")

BLOCK_SAMPLES = 960  # 20 ms at 48 kHz: the Opus frame size browsers send
BLOCK_S = BLOCK_SAMPLES / SAMPLE_RATE


@dataclass
class LatencyStats:
    """Running figures of one listener track, in seconds (``count`` blocks seen)."""

    count: int = 0
    total: float = 0.0
    maximum: float = 0.0

    def add(self, value: float) -> None:
        """Add one observation in seconds."""
        self.count += 1
        self.total += value
        self.maximum = max(self.maximum, value)

    @property
    def mean(self) -> float:
        """Mean in seconds (0 before any observation)."""
        return self.total / self.count if self.count else 0.0


class ListenerTrack(MediaStreamTrack):
    """An outgoing audio track for one listener, fed by :class:`FanOut`.

    ``recv()`` paces itself at real time (one 20 ms frame per 20 ms, like aiortc's
    ``AudioStreamTrack``) and returns s16 mono 48 kHz frames. Its clock starts once
    ``prebuffer_blocks`` blocks are queued (a 40 ms playout buffer by default, so
    the processing thread's scheduling jitter does not turn into gaps). When no
    processed block is queued at a frame's due time it sends silence (an
    *underrun*, fail closed). The queue holds at most ``max_queue_blocks`` blocks;
    older blocks are dropped so a slow listener never builds up latency or memory.
    """

    kind = "audio"

    def __init__(self, *, max_queue_blocks: int = 10, prebuffer_blocks: int = 2) -> None:
        super().__init__()
        self._queue: deque[tuple[np.ndarray, float]] = deque(maxlen=max_queue_blocks)
        self._prebuffer = max(1, min(prebuffer_blocks, max_queue_blocks))
        self._ready = asyncio.Event()
        self._start: float | None = None
        self._pts = 0
        self.frames_sent = 0
        self.underruns = 0
        self.dropped = 0
        self.latency = LatencyStats()

    def push(self, block: np.ndarray, produced_at: float) -> None:
        """Queue one processed 960-sample float32 block produced at ``produced_at``
        (``time.monotonic()`` of the source frame's arrival)."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((block, produced_at))
        if len(self._queue) >= self._prebuffer:
            self._ready.set()

    async def recv(self) -> AudioFrame:
        """Next 20 ms frame (s16 mono, 48 kHz, pts in samples).

        Raises:
            MediaStreamError: the track was stopped.
        """
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            await self._ready.wait()  # start the clock at the first processed block
            self._start = time.monotonic()
        else:
            self._pts += BLOCK_SAMPLES
            delay = self._start + self._pts / SAMPLE_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:  # we were not scheduled for a while: re-anchor, no burst
                self._start = time.monotonic() - self._pts / SAMPLE_RATE
        if self.readyState != "live":
            raise MediaStreamError
        if self._queue:
            block, produced_at = self._queue.popleft()
            self.latency.add(time.monotonic() - produced_at)
        else:
            block = np.zeros(BLOCK_SAMPLES, dtype=np.float32)
            self.underruns += 1
        self.frames_sent += 1
        return samples_to_frame(block, pts=self._pts, sample_rate=SAMPLE_RATE)


class FanOut:
    """Delivers each processed block to every subscribed :class:`ListenerTrack`."""

    def __init__(self) -> None:
        self._tracks: set[ListenerTrack] = set()

    def add(self, track: ListenerTrack) -> None:
        """Subscribe ``track``."""
        self._tracks.add(track)

    def discard(self, track: ListenerTrack) -> None:
        """Unsubscribe ``track`` (no error if absent)."""
        self._tracks.discard(track)

    def __len__(self) -> int:
        return len(self._tracks)

    def push(self, block: np.ndarray, produced_at: float) -> None:
        """Queue ``block`` on every live subscriber; ended tracks are dropped."""
        for track in list(self._tracks):
            if track.readyState == "live":
                track.push(block, produced_at)
            else:
                self._tracks.discard(track)


@dataclass
class PipelineStats:
    """Counters of one pipeline; times in seconds."""

    blocks_in: int = 0
    blocks_processed: int = 0
    blocks_silenced: int = 0
    processing_s: float = 0.0
    failed: str = ""
    lag_events: int = 0
    processing_times: list[float] = field(default_factory=list)


class AudioPipeline:
    """Reads a broadcaster's audio track and runs it through ``processor``.

    Args:
        source: the broadcaster's track (aiortc ``RemoteStreamTrack`` or any audio
            ``MediaStreamTrack``); frames of any format, layout and sample rate.
        processor: float32 mono 48 kHz processor (see ``AudioProcessor``), used
            from one executor thread at a time.
        executor: where ``process`` and the recorder's writes run (off the event loop).
        recorder: receives exactly what listeners get (processed audio or silence).
        max_lag_s: the pipeline may fall this far behind real time before it
            silences blocks (skipping the processor) to catch up.
        stall_timeout_s: a single ``process`` call slower than this marks the
            processor failed; the stream continues as silence.
        on_end: called once when the source ends or fails.
    """

    def __init__(
        self,
        *,
        source: MediaStreamTrack,
        processor: AudioProcessor,
        executor: Executor,
        recorder: WavRecorder | None = None,
        max_lag_s: float = 0.25,
        stall_timeout_s: float = 2.0,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.processor = processor
        self.executor = executor
        self.recorder = recorder
        self.fanout = FanOut()
        self.stats = PipelineStats()
        self._max_lag_s = max_lag_s
        self._stall_timeout_s = stall_timeout_s
        self._on_end = on_end
        self._converter = FrameToMono()
        self._pending = np.zeros(0, dtype=np.float32)
        self._debt_s = 0.0

    # -- executor side ---------------------------------------------------------
    def _process_block(self, block: np.ndarray) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        out: np.ndarray
        if self.stats.failed:
            out = np.zeros_like(block)
        else:
            try:
                out = np.asarray(self.processor.process(block), dtype=np.float32)
                if out.shape != block.shape or not np.all(np.isfinite(out)):
                    raise ValueError(f"processor returned {out.shape} / non-finite samples")
            except Exception as exc:
                logger.exception("processor %s failed; stream continues as silence", self.processor)
                self.stats.failed = f"{type(exc).__name__}: {exc}"
                out = np.zeros_like(block)
        if self.stats.failed != "stalled":  # a stalled call's late result is dropped
            self._record(out)
        return out, time.perf_counter() - started

    def _record(self, samples: np.ndarray) -> None:
        if self.recorder is None:
            return
        try:
            self.recorder.write(samples)
        except ValueError:  # closed: the broadcast stopped while this block was in flight
            logger.debug("dropped a block finished after the recording closed")

    def _silence_block(self, block: np.ndarray) -> np.ndarray:
        silence = np.zeros_like(block)
        self._record(silence)
        return silence

    # -- event-loop side -------------------------------------------------------
    async def _handle_block(self, block: np.ndarray, arrived: float) -> None:
        loop = asyncio.get_running_loop()
        self.stats.blocks_in += 1
        if self._debt_s > self._max_lag_s and not self.stats.failed:
            # Behind real time: silence this block to catch up (fail closed).
            self.stats.lag_events += 1
            out = await loop.run_in_executor(self.executor, self._silence_block, block)
            self._debt_s = max(0.0, self._debt_s - BLOCK_S)
            self.stats.blocks_silenced += 1
        else:
            future = loop.run_in_executor(self.executor, self._process_block, block)
            try:
                out, elapsed = await asyncio.wait_for(future, timeout=self._stall_timeout_s)
            except TimeoutError:
                logger.error(
                    "processor stalled > %.1f s; stream continues as silence", self._stall_timeout_s
                )
                self.stats.failed = "stalled"
                out = await loop.run_in_executor(self.executor, self._silence_block, block)
                elapsed = self._stall_timeout_s
            waited = time.monotonic() - arrived
            self._debt_s = max(0.0, self._debt_s + waited - BLOCK_S)
            self.stats.processing_s += elapsed
            if len(self.stats.processing_times) < 100_000:
                self.stats.processing_times.append(elapsed)
            if self.stats.failed:
                self.stats.blocks_silenced += 1
            else:
                self.stats.blocks_processed += 1
        self.fanout.push(out, arrived)

    async def run(self) -> None:
        """Pump the source until it ends; never raises for a source or processor error."""
        try:
            while True:
                try:
                    frame = await self.source.recv()
                except MediaStreamError:
                    break
                arrived = time.monotonic()
                samples = self._converter.convert(frame)
                self._pending = np.concatenate([self._pending, samples])
                while len(self._pending) >= BLOCK_SAMPLES:
                    block = np.ascontiguousarray(self._pending[:BLOCK_SAMPLES])
                    self._pending = self._pending[BLOCK_SAMPLES:]
                    await self._handle_block(block, arrived)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("audio pipeline stopped on an error")
        finally:
            if self._on_end is not None:
                with contextlib.suppress(Exception):
                    self._on_end()
