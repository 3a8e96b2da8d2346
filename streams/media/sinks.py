"""Sinks that end a graph: the recorder, an in-memory collector, an event log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
from numpy.typing import NDArray

from streams.media.graph import QueuePolicy, Sink
from streams.media.items import AudioChunk, Event, Item
from streams.recording import RecordingInfo, WavRecorder


class RecorderSink(Sink):
    """Writes every audio chunk to a :class:`~streams.recording.WavRecorder`.

    Lossless queue; writes run in ``executor`` (the engine's io pool), never inside a
    processing job, so a slow disk delays the file, not the live audio. Chunks are
    written in batches of ``batch`` (one executor job per 100 ms of 20 ms blocks, not
    one per block); the batch in hand is written on close. Events are ignored.

    Args:
        recorder: Open recorder; this sink closes it (see :attr:`info`).
        executor: Where writes and the close run.
        max_items: Queue bound (default 30000 chunks: 10 minutes of 20 ms blocks).
        batch: Chunks per write (a crash loses at most this much more audio).
        on_failed: Called on the loop with the error when a write fails (the RIFF size
            limit, a full disk): the sink is then cut off, so its owner should end the
            recording rather than let later audio be dropped unnoticed.
    """

    name = "recorder"
    policy = QueuePolicy.LOSSLESS

    def __init__(
        self,
        recorder: WavRecorder,
        executor: Executor,
        *,
        max_items: int = 30_000,
        batch: int = 5,
        on_failed: Callable[[Exception], None] | None = None,
    ) -> None:
        self.recorder = recorder
        self.executor = executor
        self.max_items = max_items
        self.batch = max(1, batch)
        self._pending: list[NDArray[np.float32]] = []
        self.info: RecordingInfo | None = None
        self.write_errors = 0
        self.failed = False  # a write failed: nothing more reaches the file
        self.on_failed = on_failed
        self.clipped = 0  # samples beyond [-1, 1], clipped by the 16-bit conversion

    async def write(self, item: Item) -> None:
        """Append ``item``'s samples (an :class:`AudioChunk`) to the file, in batches."""
        if not isinstance(item, AudioChunk):
            return
        self._pending.append(item.samples)
        if len(self._pending) >= self.batch:
            await self._write_pending()

    async def _write_pending(self) -> None:
        if not self._pending:
            return
        samples = np.concatenate(self._pending)
        self._pending = []
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self._write, samples)
        except (ValueError, OSError) as exc:  # closed under us, the RIFF limit, disk full
            self.write_errors += 1
            self.failed = True
            if self.on_failed is not None:
                self.on_failed(exc)
            raise

    def _write(self, samples: NDArray[np.float32]) -> None:
        self.recorder.write(samples)
        self.clipped += int(np.count_nonzero(np.abs(samples) > 1.0))

    async def close(self) -> None:
        """Finalise the WAV header and close the file (in the executor)."""
        try:
            await self._write_pending()
        finally:
            loop = asyncio.get_running_loop()
            self.info = await loop.run_in_executor(self.executor, self.recorder.close)


class CollectSink(Sink):
    """Keeps every chunk in memory (batch output, tests). Lossless, unbounded."""

    name = "collect"
    policy = QueuePolicy.LOSSLESS
    max_items = 1 << 30

    def __init__(self) -> None:
        self.chunks: list[AudioChunk] = []
        self.events: list[Event] = []

    async def write(self, item: Item) -> None:
        """Store a chunk or an event."""
        if isinstance(item, AudioChunk):
            self.chunks.append(item)
        elif isinstance(item, Event):
            self.events.append(item)

    @property
    def samples(self) -> NDArray[np.float32]:
        """All collected samples joined, float32 shape ``(n,)``."""
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([c.samples for c in self.chunks]).astype(np.float32, copy=False)


class CallbackSink(Sink):
    """Hands every item to ``callback`` on the loop (analysis branches, stats).

    Args:
        callback: Called with each item; must not block.
        name: Sink name.
        policy: Queue policy (default drop-oldest).
        max_items: Queue bound.
    """

    def __init__(
        self,
        callback: Callable[[Item], None],
        *,
        name: str = "callback",
        policy: QueuePolicy = QueuePolicy.DROP_OLDEST,
        max_items: int = 500,
    ) -> None:
        self.callback = callback
        self.name = name
        self.policy = policy
        self.max_items = max_items

    async def write(self, item: Item) -> None:
        """Call the callback."""
        self.callback(item)
