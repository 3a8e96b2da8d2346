"""Stages: one job each, a declared latency, a fail-closed output.

A stage turns audio chunks into audio chunks, or video frames into video frames (and
may emit :class:`Event` items beside them); a graph carries one kind of media, and
its stages are written for that kind (video stages: :mod:`streams.media.video`).
It runs in its stream's worker thread, never on the event loop. Like a
pipecat ``FrameProcessor`` it sees items in order; like a GStreamer element it
answers a latency query (:meth:`Stage.latency_ticks`). Unlike either, every stage
states what leaves in place of its output when it cannot produce it
(:meth:`Stage.fail_closed`): silence, a bleep, a blurred frame — never its input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable

import numpy as np

from streams.media.items import AudioChunk, Item, silence
from streams.processors.base import AudioProcessor


class StageError(RuntimeError):
    """A stage produced unusable output (wrong shape, non-finite samples)."""


class Stage(ABC):
    """Base class of graph stages.

    Attributes:
        name: Short identifier for metrics, logs and events.
        skippable: Whether the runner may skip it for blocks that are late.
        fails_per_item: What an exception from :meth:`process` means. False (audio
            kernels with state that an error may have corrupted): the stage is marked
            failed and fails closed for this and every later item. True (stateless
            per-frame detectors): only this item fails closed, counted in
            ``MediaMetrics.stage_errors``; the next item is tried again.
    """

    name: str = "stage"
    skippable: bool = True
    """May be skipped (fail closed) for a block when the stream falls behind."""
    fails_per_item: bool = False

    @abstractmethod
    def latency_ticks(self) -> int:
        """How far output content lags input position, in ``time_base`` ticks.

        An input chunk at pts ``P`` yields output whose content is from ``P - L``:
        the stage keeps content timestamps, so its output chunk is stamped
        ``P - L``. 0 for stateless stages.
        """

    @abstractmethod
    def process(self, chunk: AudioChunk) -> list[Item]:
        """Process one chunk (worker thread); return the chunks/events it yields.

        Raises:
            Exception: any failure; the graph then uses :meth:`fail_closed` for this
                chunk and (unless :attr:`fails_per_item`) every later one.
        """

    def fail_closed(self, chunk: AudioChunk) -> list[Item]:
        """What leaves instead of this stage's output for ``chunk``: silence by default.

        Cheap and safe to call on any thread, also after the stage failed or hung;
        must not touch the stage's native state. Keeps the stage's content timing.
        """
        out = AudioChunk(
            samples=silence(len(chunk.samples)),
            pts=chunk.pts - self.latency_ticks(),
            arrived=chunk.arrived,
            failed_closed=True,
        )
        return [out]

    def before_flush(self) -> Awaitable[None] | None:
        """End of stream, before :meth:`flush`: something for the runner to await on
        the event loop first, or None (the default) to flush at once.

        For a stage whose held output depends on work elsewhere: a live delay line
        lets its analysis decide the tail. The runner has flushed the stages before
        this one and drained their taps when it awaits. The awaitable must bound its
        own wait and never block the loop; an error it raises is logged and the
        stage is flushed anyway (its usual judgement then applies).
        """
        return None

    def flush(self, *, after_pts: int, block_samples: int) -> list[Item]:
        """End of stream: emit what the stage still holds (default: nothing).

        Args:
            after_pts: pts just past the last input chunk (where padding continues).
            block_samples: Block size to feed padding in, in samples.
        """
        del after_pts, block_samples
        return []

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release resources; idempotent (default: nothing)."""


class ProcessorStage(Stage):
    """An :class:`~streams.processors.base.AudioProcessor` kernel inside a stage.

    The processor (e.g. DeepFilterNet3, 1440 samples = 30 ms algorithmic delay) is
    called with float32 mono 48 kHz blocks and must return as many samples, all
    finite; anything else raises :class:`StageError`. Output chunks are stamped with
    their content time, ``pts - processor.latency_samples``.

    Args:
        processor: The kernel; the stage owns it and closes it.
        name: Stage name (default: the processor's ``name``).
    """

    def __init__(self, processor: AudioProcessor, *, name: str | None = None) -> None:
        self.processor = processor
        self.name = name or processor.name
        self._latency = processor.latency_samples

    def latency_ticks(self) -> int:
        """The processor's current ``latency_samples`` (48 kHz ticks)."""
        return self._latency

    def process(self, chunk: AudioChunk) -> list[Item]:
        """Run the kernel on ``chunk.samples`` (shape ``(n,)``).

        Raises:
            StageError: wrong output shape or non-finite samples.
            ProcessorError: the kernel failed.
        """
        out = np.asarray(self.processor.process(chunk.samples), dtype=np.float32)
        if out.shape != chunk.samples.shape or not np.all(np.isfinite(out)):
            raise StageError(
                f"{self.name} returned shape {out.shape} or non-finite samples "
                f"for input shape {chunk.samples.shape}"
            )
        self._latency = self.processor.latency_samples
        return [AudioChunk(samples=out, pts=chunk.pts - self._latency, arrived=chunk.arrived)]

    def flush(self, *, after_pts: int, block_samples: int) -> list[Item]:
        """Feed zero blocks after the last input until the ``latency`` samples held
        inside the kernel have come out (as ``processors.base.process_offline`` does)."""
        items: list[Item] = []
        held = self._latency
        pts = after_pts
        while held > 0:
            pad = AudioChunk(samples=silence(block_samples), pts=pts, arrived=0.0)
            items.extend(self.process(pad))
            held -= block_samples
            pts += block_samples
        return items

    def close(self) -> None:
        """Close the kernel (idempotent)."""
        self.processor.close()
