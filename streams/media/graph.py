"""A media graph and the runner that drives it, the same live and over files.

Audio graphs (below) cut their source into 20 ms blocks; a video graph runs the same
runner over :class:`~streams.media.items.VideoFrame` items, one frame at a time (no
re-blocking, no trimming: each frame is its own unit), e.g. decode → detect faces →
detect plates → track/hold → blur (:mod:`streams.media.video`). Every rule below —
stages in the stream's worker with a deadline, fail-closed output for a stage that
raised, stalled or was skipped to catch up, sink queues with policies — holds for
frames as for blocks; a video stage's fail-closed output is the whole frame blurred.

::

    Source ──▶ re-block (960) ──▶ [stage 0 ─▶ stage 1 ─▶ …] ──▶ trim ──▶ tee ─┬▶ sink (queue policy)
    (track or file)                  │ taps: a stage's output teed to        ├▶ sink
                                     └▶ analysis sinks (e.g. ASR → timeline) └▶ sink

* The **source** yields :class:`AudioChunk` items with the source's content pts
  (relative to its first frame). A WebRTC track (:class:`TrackSource`) or a file
  decoded by PyAV (:class:`FileSource`).
* **Stages** run in order, per block, in the stream's own worker thread with a
  deadline (:mod:`streams.media.workers`). A stage that raises is marked failed; one
  that overruns the deadline is marked stalled and its thread abandoned. From then on
  its :meth:`Stage.fail_closed` output (silence) replaces its output, so sinks keep
  getting one block of audio per block of input — never the raw input.
* Falling behind real time by more than ``max_lag_s`` skips the expensive stages
  (``Stage.skippable``) for a block: fail-closed output, to catch up.
* **Trim** keeps only content inside the source's range: the priming output of a
  delaying stage (pts before the first input) and the padding flushed at the end are
  dropped, which makes batch output sample-exact with the input (the delay is
  compensated by the pts, not by a second code path).
* **Sinks** each own a queue with a policy, GStreamer-``queue`` style: listeners
  ``DROP_OLDEST`` (a slow consumer loses old audio, never delays others), the
  recorder ``LOSSLESS``. A sink that fails is logged and cut off alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from numpy.typing import NDArray

from streams.audio import FrameToMono
from streams.media.items import (
    AUDIO_TIME_BASE,
    BLOCK_SAMPLES,
    SAMPLE_RATE,
    AudioChunk,
    Event,
    Item,
    MediaItem,
    VideoFrame,
    silence,
)
from streams.media.metrics import MediaMetrics
from streams.media.stage import Stage
from streams.media.workers import DeadlineExceeded, StreamWorker, Workers

logger = logging.getLogger("hearth.media")

MAX_GAP_S = 1.0
"""A source pts jump larger than this (either way) is a discontinuity: the stream
re-anchors instead of filling the gap with silence."""


# -- sources --------------------------------------------------------------------
class Source(ABC):
    """Where a graph's media comes from: audio chunks, or video frames.

    Attributes:
        newest_only: The source keeps only its newest item while the graph is busy
            (a live camera): the runner then asks for the next item only when it is
            ready to process it, so nothing queues in front of the stages and every
            processed frame is fresh. Items the source replaced are never processed
            nor sent: they are counted in :attr:`dropped`.
        dropped: Items the source dropped because a newer one came (``newest_only``).
    """

    newest_only: bool = False
    dropped: int = 0

    @abstractmethod
    async def read(self) -> MediaItem | None:
        """The next chunk (float32 mono 48 kHz) or video frame; None at the end."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the source (idempotent)."""


class _PtsMapper:
    """Maps source timestamps to contiguous 48 kHz pts starting at ``start`` (0).

    RTP timestamps (aiortc's frame pts) start at a random value and wrap at 2**32
    (RFC 3550 §5.1); jumps over :data:`MAX_GAP_S` either way re-anchor.
    """

    def __init__(self, start: int = 0) -> None:
        self._offset: int | None = None
        self._expected = start

    @property
    def expected(self) -> int:
        """pts the next sample is expected at."""
        return self._expected

    def map(self, raw_pts: int | None, time_base: object, samples: int) -> int:
        expected = self._expected
        pts = expected
        if raw_pts is not None and time_base is not None:
            raw = round(raw_pts * time_base * SAMPLE_RATE)  # type: ignore[operator]
            if self._offset is None:  # the first frame starts where the stream is
                self._offset = expected - raw
            candidate = raw + self._offset
            gap = candidate - expected
            if gap < -(1 << 31):  # 32-bit RTP wrap-around
                self._offset += 1 << 32
                candidate += 1 << 32
                gap = candidate - expected
            if abs(gap) <= MAX_GAP_S * SAMPLE_RATE:
                pts = candidate
            else:  # discontinuity: continue where we were
                self._offset = expected - raw
        self._expected = pts + samples
        return pts


class TrackSource(Source):
    """Audio from an aiortc ``MediaStreamTrack`` (any format, layout, rate), whose track
    may be replaced mid-stream by the same sender's new peer connection.

    Frames are converted with :class:`streams.audio.FrameToMono`; pts come from the
    frames' own ``pts``/``time_base`` (see :class:`_PtsMapper`).

    A replacement (:meth:`replace`; WebRTC has no ICE restart in aiortc, so a peer
    whose media path failed reconnects with a new peer connection) continues the same
    timeline: its first frame is placed after the wall-clock time without frames since
    the previous track's last one (at most ``MAX_REPLACE_GAP_S``), and the graph's
    :class:`Reblocker` fills that gap with silence, so a recording stays one file as
    long as the broadcast in real time.

    Args:
        track: The first track.
        hold_s: When a track ends, wait this many seconds for a :meth:`replace` before
            ending the stream; 0 ends it at once.
        on_track_end: Called (no arguments, on the loop) when a track ends and the
            source waits for a replacement.
    """

    MAX_REPLACE_GAP_S = 60.0
    """Longest gap (seconds) a replacement fills with silence; a longer one is cut."""

    def __init__(
        self,
        track: MediaStreamTrack,
        *,
        hold_s: float = 0.0,
        on_track_end: Callable[[], None] | None = None,
    ) -> None:
        self.track: MediaStreamTrack | None = track
        self.hold_s = hold_s
        self.on_track_end = on_track_end
        self.replacements = 0  # tracks taken over by replace()
        self._convert = FrameToMono(SAMPLE_RATE)
        self._pts = _PtsMapper()
        self._recv: asyncio.Future[Any] | None = None  # the pending track.recv()
        self._replaced = asyncio.Event()
        self._last_arrived: float | None = None  # monotonic time of the last frame
        self._gap_due = False  # the next frame is a replacement's first

    def replace(self, track: MediaStreamTrack) -> None:
        """Read ``track`` from now on instead of the current one (ended or not).

        A read waiting on the previous track gives up on it and reads this one.
        """
        self.track = track
        self.replacements += 1
        self._gap_due = True
        self._replaced.set()
        if self._recv is not None and not self._recv.done():
            self._recv.cancel()

    async def _replacement(self) -> bool:
        """Wait up to ``hold_s`` for :meth:`replace`; whether one came."""
        self._replaced.clear()
        if self.on_track_end is not None:
            self.on_track_end()
        try:
            await asyncio.wait_for(self._replaced.wait(), self.hold_s)
        except TimeoutError:
            return False
        return True

    async def read(self) -> AudioChunk | None:
        """Receive and convert the next frame; None once the track ends (and no
        replacement came within ``hold_s``)."""
        while True:
            track = self.track
            if track is None:
                if not await self._replacement():
                    return None
                continue
            recv = self._recv = asyncio.ensure_future(track.recv())
            try:
                await asyncio.wait({recv})
            finally:
                if not recv.done():  # this read was cancelled: so is its recv()
                    recv.cancel()
                self._recv = None
            if recv.cancelled() or self.track is not track:
                continue  # replaced meanwhile: read the new track
            error = recv.exception()
            if isinstance(error, MediaStreamError):
                if self.hold_s <= 0:
                    return None
                self.track = None
                continue
            if error is not None:
                raise error
            frame = recv.result()
            arrived = time.monotonic()
            samples = self._convert.convert(frame)
            if not len(samples):
                continue
            if self._gap_due:
                self._gap_due = False
                self._pts = _PtsMapper(start=self._pts.expected + self._gap(arrived, len(samples)))
            pts = self._pts.map(frame.pts, frame.time_base, len(samples))
            self._last_arrived = arrived
            return AudioChunk(samples=samples, pts=pts, arrived=arrived)

    def _gap(self, arrived: float, samples: int) -> int:
        """Samples of silence before a replacement's first frame (of ``samples``
        samples, arrived at ``arrived``): the time without frames, at most
        ``MAX_REPLACE_GAP_S``."""
        if self._last_arrived is None:
            return 0
        missing = arrived - self._last_arrived - samples / SAMPLE_RATE
        return round(min(max(0.0, missing), self.MAX_REPLACE_GAP_S) * SAMPLE_RATE)


class FileSource(Source):
    """Audio of the first audio stream of any file PyAV reads, decoded as it goes.

    Yields exactly the samples :func:`streams.audio.load_audio` returns for the same
    file (same converter, flushed at the end), with pts counted from 0.

    Raises (from :meth:`open`):
        streams.audio.AudioDecodeError: unreadable file or no audio stream.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._container: av.container.InputContainer | None = None
        self._frames: object = None
        self._convert = FrameToMono(SAMPLE_RATE)
        self._pts = 0
        self._done = False

    def open(self) -> None:
        """Open the file (blocking; call from a worker thread or before the loop)."""
        from streams.audio import AudioDecodeError

        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise AudioDecodeError(f"{self.path}: cannot decode audio ({exc})") from exc
        if not self._container.streams.audio:
            self.close()
            raise AudioDecodeError(f"{self.path}: no audio stream")
        self._frames = self._container.decode(self._container.streams.audio[0])

    def _next(self) -> NDArray[np.float32] | None:
        from streams.audio import AudioDecodeError

        if self._done:
            return None
        if self._container is None:
            self.open()
        try:
            while True:
                frame = next(self._frames, None)  # type: ignore[call-overload]
                if frame is None:
                    self._done = True
                    tail = self._convert.flush()
                    return tail if len(tail) else None
                samples = self._convert.convert(frame)
                if len(samples):
                    return samples
        except (av.FFmpegError, ValueError) as exc:
            raise AudioDecodeError(f"{self.path}: cannot decode audio ({exc})") from exc

    async def read(self) -> AudioChunk | None:
        """Decode the next frame in a thread; None at the end of the file."""
        samples = await asyncio.to_thread(self._next)
        if samples is None:
            return None
        chunk = AudioChunk(samples=samples, pts=self._pts, arrived=time.monotonic())
        self._pts += len(samples)
        return chunk

    def close(self) -> None:
        """Close the container (idempotent)."""
        if self._container is not None:
            self._container.close()
            self._container = None


class Reblocker:
    """Cuts a chunk stream into fixed blocks with contiguous pts.

    Forward pts gaps (lost packets) are filled with silence so the stream and the
    recording keep the source's timeline; overlapping samples are dropped.

    Args:
        block_samples: Block length in samples (960 = 20 ms).
    """

    def __init__(self, block_samples: int = BLOCK_SAMPLES) -> None:
        self.block = block_samples
        self._parts: list[NDArray[np.float32]] = []
        self._pending = 0
        self._start: int | None = None  # pts of the first pending sample
        self._arrived = 0.0
        self.gap_samples = 0

    @property
    def next_pts(self) -> int | None:
        """pts the next sample is expected at (None before the first chunk)."""
        return None if self._start is None else self._start + self._pending

    def push(self, chunk: AudioChunk) -> list[AudioChunk]:
        """Add ``chunk``; return the blocks completed by it."""
        samples = chunk.samples
        if self._start is None:
            self._start = chunk.pts
        expected = self._start + self._pending
        if chunk.pts > expected:
            gap = chunk.pts - expected
            self.gap_samples += gap
            samples = np.concatenate([silence(gap), samples])
        elif chunk.pts < expected:
            samples = samples[expected - chunk.pts :]
        if not self._pending:
            self._arrived = chunk.arrived
        self._parts.append(samples)
        self._pending += len(samples)
        blocks: list[AudioChunk] = []
        if self._pending < self.block:
            return blocks
        joined = np.concatenate(self._parts)
        arrived = chunk.arrived
        offset = 0
        while self._pending - offset >= self.block:
            blocks.append(
                AudioChunk(
                    samples=np.ascontiguousarray(joined[offset : offset + self.block]),
                    pts=self._start + offset,
                    arrived=arrived,
                )
            )
            offset += self.block
        rest = joined[offset:]
        self._start += offset
        self._pending = len(rest)
        self._parts = [rest] if len(rest) else []
        return blocks

    def finish(self) -> AudioChunk | None:
        """The last partial block, zero-padded to full size (None if nothing pends)."""
        if not self._pending or self._start is None:
            return None
        samples = np.zeros(self.block, dtype=np.float32)
        samples[: self._pending] = np.concatenate(self._parts)
        block = AudioChunk(samples=samples, pts=self._start, arrived=self._arrived)
        self._start += self._pending
        self._parts, self._pending = [], 0
        return block


# -- sinks ----------------------------------------------------------------------
class QueuePolicy(enum.Enum):
    """What a sink's queue does when its consumer is slower than the stream."""

    DROP_OLDEST = "drop_oldest"
    """Bounded; the oldest item is dropped (live listeners: latency never grows)."""

    LOSSLESS = "lossless"
    """Never drops while under ``max_items``; past that (a stuck disk for minutes) the
    newest items are refused and counted, so memory stays bounded."""


class Sink(ABC):
    """A consumer at the end of a graph (or of a tap). Runs on the event loop; blocking
    work belongs in an executor (e.g. :attr:`Workers.io`).

    Attributes:
        name: For metrics and logs.
        policy: Queue policy of its input queue.
        max_items: Queue bound.
    """

    name: str = "sink"
    policy: QueuePolicy = QueuePolicy.DROP_OLDEST
    max_items: int = 50

    @abstractmethod
    async def write(self, item: Item) -> None:
        """Consume one item (chunks, and events beside them)."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Called once after the last item was written."""


class _SinkQueue:
    """A sink's input queue and the task that drains it."""

    def __init__(self, sink: Sink, metrics: MediaMetrics) -> None:
        self.sink = sink
        self.metrics = metrics
        self.items: deque[Item] = deque()
        self.wakeup = asyncio.Event()
        self.room = asyncio.Event()  # set whenever the drain takes an item
        self.closed = False
        self.failed = False
        self.task = asyncio.ensure_future(self._drain())

    def push(self, item: Item) -> None:
        if self.failed or self.closed:
            return
        if len(self.items) >= self.sink.max_items:
            name = self.sink.name
            self.metrics.sink_drops[name] = self.metrics.sink_drops.get(name, 0) + 1
            if self.sink.policy is QueuePolicy.DROP_OLDEST:
                self.items.popleft()
            else:
                logger.error("sink %s is %d items behind; refusing more", name, len(self.items))
                return
        self.items.append(item)
        self.wakeup.set()

    def finish(self) -> None:
        self.closed = True
        self.wakeup.set()

    async def wait_room(self) -> None:
        """Wait until the queue is below its bound (or its sink failed)."""
        while len(self.items) >= self.sink.max_items and not self.failed and not self.closed:
            self.room.clear()
            await self.room.wait()

    async def _drain(self) -> None:
        try:
            while True:
                while self.items:
                    item = self.items.popleft()
                    self.room.set()
                    if self.failed:
                        continue
                    try:
                        await self.sink.write(item)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        logger.exception("sink %s failed; it gets no more items", self.sink.name)
                        self.failed = True
                if self.closed:
                    break
                self.wakeup.clear()
                await self.wakeup.wait()
        finally:
            with contextlib.suppress(Exception):
                await self.sink.close()


# -- graph and runner -----------------------------------------------------------
@dataclass
class Graph:
    """Stages in order, main sinks after the last stage, and taps.

    Attributes:
        stages: Processing stages, first applied first; the graph owns them.
        sinks: Receive every item leaving the last stage (after trimming).
        taps: ``{stage index: [sinks]}``: receive the output of that stage
            (trimmed), e.g. an analysis branch after denoising, before a delay line.
        block_samples: Block size the source is cut into (960 = 20 ms).
    """

    stages: list[Stage]
    sinks: list[Sink] = field(default_factory=list)
    taps: dict[int, list[Sink]] = field(default_factory=dict)
    block_samples: int = BLOCK_SAMPLES

    def latency_ticks(self) -> int:
        """Sum of the stages' current latencies (48 kHz ticks): how far the content
        leaving the graph lags the position of its input."""
        return sum(stage.latency_ticks() for stage in self.stages)


@dataclass
class _ChainResult:
    outputs: list[Item]
    taps: dict[int, list[Item]]


class GraphRunner:
    """Pumps a :class:`Source` through a :class:`Graph`, live or over a file.

    Args:
        graph: What to run.
        source: Where audio comes from.
        workers: Executors; a per-stream worker is taken from it.
        name: Stream name for threads and logs.
        deadline_s: Longest a block's stage calls may take before the running stage
            is marked stalled and the worker abandoned.
        max_lag_s: Live only: a block that waited longer than this since its source
            frame arrived skips the skippable stages (fail closed) to catch up.
            None (files): never skip.
        on_event: Called on the loop for every :class:`Event` (stage failures too).
        metrics: Where to count (shared with a relay); a new one by default.
        backpressure: Files only: before the next block, wait until every sink queue
            is below its bound, so a sink slower than the stages (an H.264 encoder)
            slows the run instead of overflowing its queue. Live streams leave it
            off: a slow consumer must never delay the others.
    """

    def __init__(
        self,
        graph: Graph,
        source: Source,
        *,
        workers: Workers,
        name: str,
        deadline_s: float = 2.0,
        max_lag_s: float | None = 0.25,
        on_event: Callable[[Event], None] | None = None,
        metrics: MediaMetrics | None = None,
        backpressure: bool = False,
    ) -> None:
        self.graph = graph
        self.source = source
        self.workers = workers
        self.name = name
        self.deadline_s = deadline_s
        self.max_lag_s = max_lag_s
        self.on_event = on_event
        self.metrics = metrics if metrics is not None else MediaMetrics()
        self.backpressure = backpressure
        self.stage_failed: dict[int, str] = {}
        self.source_error = ""
        self._worker: StreamWorker | None = None
        self._current: tuple[int, MediaItem] | None = None  # set by the worker thread
        self._generation = 0  # bumped when a worker is abandoned: its late work is void
        self._range_start: int | None = None
        self._range_end: int | None = None
        self._queues: list[_SinkQueue] = []
        self._tap_queues: dict[int, list[_SinkQueue]] = {}
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()  # set while run() waits for the next block
        self._video = False  # set by the first video frame
        self._reader: asyncio.Task[None] | None = None

    # -- worker side ------------------------------------------------------------
    def _run_chain(self, first: int, chunks: list[Item], lagging: bool) -> _ChainResult:
        """Run stages ``first..`` over ``chunks`` (in the stream's worker thread)."""
        taps: dict[int, list[Item]] = {}
        items = chunks
        generation = self._generation
        for index in range(first, len(self.graph.stages)):
            if generation != self._generation:  # abandoned while stuck: touch nothing
                raise DeadlineExceeded("abandoned chain")
            stage = self.graph.stages[index]
            out: list[Item] = []
            for item in items:
                if not isinstance(item, AudioChunk | VideoFrame):
                    out.append(item)
                    continue
                if generation != self._generation:
                    raise DeadlineExceeded("abandoned chain")
                self._current = (index, item)
                if index in self.stage_failed or (lagging and stage.skippable):
                    out.extend(stage.fail_closed(item))
                    continue
                started = time.perf_counter()
                try:
                    out.extend(stage.process(item))
                except Exception as exc:
                    if stage.fails_per_item:
                        self._item_failed(stage, exc)
                    else:
                        logger.exception(
                            "stage %s of %s failed; fails closed", stage.name, self.name
                        )
                        self._mark_failed(index, f"{type(exc).__name__}: {exc}")
                    out.extend(stage.fail_closed(item))
                self.metrics.timer(stage.name).add(time.perf_counter() - started)
            self._current = None
            items = out
            if index in self.graph.taps:
                taps[index] = list(items)
        return _ChainResult(items, taps)

    def _fail_closed_chain(self, block: MediaItem) -> list[Item]:
        """Every stage's fail-closed output in turn (cheap by the stage contract)."""
        items: list[Item] = [block]
        for stage in self.graph.stages:
            items = [
                out
                for item in items
                for out in (
                    stage.fail_closed(item) if isinstance(item, AudioChunk | VideoFrame) else [item]
                )
            ]
        return items

    def _item_failed(self, stage: Stage, exc: Exception) -> None:
        """A per-item stage raised: count it; log the first and every 100th."""
        errors = self.metrics.stage_errors
        errors[stage.name] = errors.get(stage.name, 0) + 1
        if errors[stage.name] % 100 == 1:
            logger.error(
                "stage %s of %s failed on an item (%d so far); that item fails closed: %s: %s",
                stage.name,
                self.name,
                errors[stage.name],
                type(exc).__name__,
                exc,
            )

    def _mark_failed(self, index: int, reason: str) -> None:
        if index not in self.stage_failed:
            self.stage_failed[index] = reason
            name = self.graph.stages[index].name
            if not self.metrics.failed:
                self.metrics.failed = f"{name}: {reason}"

    # -- loop side --------------------------------------------------------------
    def _worker_now(self) -> StreamWorker:
        if self._worker is None or self._worker.abandoned:
            self._worker = self.workers.stream_worker(self.name, video=self._video)
        return self._worker

    async def _run_blocks(self, first: int, chunks: list[Item], lagging: bool) -> _ChainResult:
        if any(isinstance(item, VideoFrame) for item in chunks):
            self._video = True  # video: a lower-priority worker and a capped slot
        worker = self._worker_now()
        video_slot = self.workers.video_slots if self._video else contextlib.nullcontext()
        try:
            async with video_slot, self.workers.processing_slots:
                return await worker.run(
                    lambda: self._run_chain(first, chunks, lagging), deadline_s=self.deadline_s
                )
        except DeadlineExceeded:
            self._generation += 1
            index, stuck = self._current or (first, _first_chunk(chunks))
            stage = self.graph.stages[index]
            logger.error(
                "stage %s of %s overran %.2f s; abandoned, it fails closed",
                stage.name,
                self.name,
                self.deadline_s,
            )
            self._mark_failed(index, "stalled")
            data = {"stage": stage.name, "reason": "stalled"}
            self._emit_event(Event("stage.failed", stuck.pts, stuck.pts, data=data))
            rest: list[Item] = list(stage.fail_closed(stuck))
            if index + 1 < len(self.graph.stages):
                return await self._run_blocks(index + 1, rest, lagging)
            return _ChainResult(rest, {})

    def _emit_event(self, event: Event) -> None:
        for queue in self._queues:
            queue.push(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                logger.exception("event callback failed")

    def _trim(self, chunk: AudioChunk) -> AudioChunk | None:
        start = self._range_start if self._range_start is not None else chunk.pts
        end = self._range_end
        a = max(chunk.pts, start)
        b = chunk.end_pts if end is None else min(chunk.end_pts, end)
        if b <= a:
            return None
        if a == chunk.pts and b == chunk.end_pts:
            return chunk
        return AudioChunk(
            samples=chunk.samples[a - chunk.pts : b - chunk.pts],
            pts=a,
            arrived=chunk.arrived,
            failed_closed=chunk.failed_closed,
        )

    def _deliver(self, result: _ChainResult, *, count_blocks: bool) -> None:
        metrics = self.metrics
        for index, items in result.taps.items():
            for item in items:
                trimmed = self._trim(item) if isinstance(item, AudioChunk) else item
                if trimmed is not None:
                    for queue in self._tap_queues.get(index, []):
                        queue.push(trimmed)
        for item in result.outputs:
            if isinstance(item, Event):
                self._emit_event(item)
                continue
            if isinstance(item, VideoFrame):
                if item.failed_closed:
                    metrics.frames_failed_closed += 1
                else:
                    metrics.frames_processed += 1
                for kind, count in item.blurred.items():
                    metrics.regions_blurred[kind] = metrics.regions_blurred.get(kind, 0) + count
                for queue in self._queues:
                    queue.push(item)
                continue
            if not isinstance(item, AudioChunk):
                continue
            if count_blocks:
                if item.failed_closed:
                    self.metrics.blocks_failed_closed += 1
                else:
                    self.metrics.blocks_processed += 1
            trimmed = self._trim(item)
            if trimmed is not None:
                for queue in self._queues:
                    queue.push(trimmed)

    async def _process_block(self, block: MediaItem, ready: float) -> None:
        now = time.monotonic()
        if isinstance(block, VideoFrame):
            self.metrics.frames_in += 1
        else:
            self.metrics.blocks_in += 1
        self.metrics.timer("queue").add(now - ready)
        lagging = self.max_lag_s is not None and now - block.arrived > self.max_lag_s
        if lagging:
            self.metrics.lag_events += 1
        started = time.perf_counter()
        if lagging and all(stage.skippable for stage in self.graph.stages):
            # Too late for anyone: the fail-closed output straight away, on the loop
            # (zeros; no worker hop), so a backlog clears in a few loop turns.
            result = _ChainResult(self._fail_closed_chain(block), {})
        else:
            result = await self._run_blocks(0, [block], lagging)
        self.metrics.timer("process").add(time.perf_counter() - started)
        self._deliver(result, count_blocks=True)

    async def _read(self, blocks: asyncio.Queue[tuple[MediaItem, float] | None]) -> None:
        reblocker = Reblocker(self.graph.block_samples)
        try:
            while not self._stop.is_set():
                if self.source.newest_only:  # read only when the stages are free
                    await self._idle.wait()
                chunk = await self.source.read()
                if chunk is None:
                    break
                if isinstance(chunk, VideoFrame):  # a frame is its own block
                    ready = time.monotonic()
                    self.metrics.timer("receive").add(ready - chunk.arrived)
                    self.metrics.frames_dropped = self.source.dropped
                    await blocks.put((chunk, ready))
                    if self.source.newest_only:
                        self._idle.clear()  # the runner sets it when it wants the next
                    continue
                if self._range_start is None:
                    self._range_start = chunk.pts
                blocks_ready = reblocker.push(chunk)
                self.metrics.gap_samples = reblocker.gap_samples
                for block in blocks_ready:
                    ready = time.monotonic()
                    self.metrics.timer("receive").add(ready - block.arrived)
                    await blocks.put((block, ready))
            self._range_end = reblocker.next_pts
            last = reblocker.finish()
            if last is not None:
                await blocks.put((last, time.monotonic()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("source of %s failed; ending the stream", self.name)
            self.source_error = str(exc) or type(exc).__name__
        finally:
            if self._range_end is None:  # stopped or failed: the range ends here
                self._range_end = reblocker.next_pts
            self.metrics.frames_dropped = self.source.dropped
            await blocks.put(None)

    async def run(self) -> MediaMetrics:
        """Run until the source ends or :meth:`stop`; deliver everything to the sinks,
        close their queues and wait for them to drain. Never raises for a source,
        stage or sink failure (each is logged and fails closed)."""
        self._queues = [_SinkQueue(sink, self.metrics) for sink in self.graph.sinks]
        self._tap_queues = {
            index: [_SinkQueue(sink, self.metrics) for sink in sinks]
            for index, sinks in self.graph.taps.items()
        }
        blocks: asyncio.Queue[tuple[MediaItem, float] | None] = asyncio.Queue(maxsize=500)
        reader = self._reader = asyncio.ensure_future(self._read(blocks))
        after_pts: int | None = None
        try:
            while True:
                self._idle.set()
                entry = await blocks.get()
                if entry is None:
                    break
                block, ready = entry
                await self._process_block(block, ready)
                after_pts = block.end_pts
                if self.backpressure:
                    for queue in self._all_queues():
                        await queue.wait_room()
            if after_pts is not None:
                await self._flush(after_pts)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            for queue in self._all_queues():
                queue.finish()
            with contextlib.suppress(Exception):
                await asyncio.gather(*(q.task for q in self._all_queues()))
            if self._worker is not None:
                self._worker.stop()
            if self.source.newest_only:  # its receiving task ends with the graph
                self.source.close()
        return self.metrics

    def _all_queues(self) -> list[_SinkQueue]:
        return [*self._queues, *(q for qs in self._tap_queues.values() for q in qs)]

    async def _flush(self, after_pts: int) -> None:
        """End of stream: each stage's held content, through the stages after it (and
        to the stage's own taps). A stage that asks to wait first
        (:meth:`Stage.before_flush`) is awaited once the taps before it have drained."""
        for index, stage in enumerate(self.graph.stages):
            if index in self.stage_failed:
                continue
            waiting = stage.before_flush()
            if waiting is not None:
                await self._taps_drain(before=index)
                try:
                    await waiting
                except Exception:
                    logger.exception(
                        "stage %s of %s: wait before flush failed", stage.name, self.name
                    )
            worker = self._worker_now()
            pts = after_pts - sum(s.latency_ticks() for s in self.graph.stages[:index])
            try:
                held = await worker.run(
                    lambda stage=stage, pts=pts: stage.flush(
                        after_pts=pts, block_samples=self.graph.block_samples
                    ),
                    deadline_s=self.deadline_s,
                )
            except Exception:
                logger.exception("flushing stage %s of %s failed", stage.name, self.name)
                continue
            if held:
                result = await self._run_blocks(index + 1, held, False)
                if index in self.graph.taps:  # the tap reads this stage's output
                    result.taps[index] = list(held)
                self._deliver(result, count_blocks=False)

    async def _taps_drain(self, *, before: int) -> None:
        """End the taps of stages ``< before`` (flushed: nothing more comes to them)
        and wait until their sinks have taken every item."""
        queues = [q for index, qs in self._tap_queues.items() if index < before for q in qs]
        for queue in queues:
            queue.finish()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(q.task for q in queues))

    def stop(self) -> None:
        """Stop reading the source now (a pending read is cancelled: a track that never
        connected never ends by itself); :meth:`run` then flushes and returns."""
        self._stop.set()
        if self._reader is not None:
            self._reader.cancel()

    def stages_close(self) -> None:
        """Close every stage that is not stalled (a stalled stage's native state may
        still be in use by its abandoned thread: it is leaked, never freed under it)."""
        for index, stage in enumerate(self.graph.stages):
            if self.stage_failed.get(index) == "stalled":
                continue
            try:
                stage.close()
            except Exception:
                logger.exception("closing stage %s failed", stage.name)


def _first_chunk(items: list[Item]) -> MediaItem:
    return next(i for i in items if isinstance(i, AudioChunk | VideoFrame))


__all__ = [
    "AUDIO_TIME_BASE",
    "FileSource",
    "Graph",
    "GraphRunner",
    "QueuePolicy",
    "Reblocker",
    "Sink",
    "Source",
    "TrackSource",
]
