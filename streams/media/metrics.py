"""Per-stage timing of a running graph, from the engine itself (no log scraping).

Each :class:`StageTimer` keeps a count and a sum of every observation plus a bounded
window of the most recent ones for quantiles, so memory stays flat however long a
broadcast runs. :meth:`MediaMetrics.snapshot` is what the media server publishes in
``session.stats`` and what ``bench/live.py`` reads.

Process-wide histograms (Prometheus, in ``project.metrics``) need every observation,
not a window: a *stage observer* set with :func:`stage_observer_set` is also handed
each duration a named timer records. The engine stays free of Django and of any
metrics library: the observer is a plain callable, ``None`` (the default) costs one
attribute read per observation, and an observer that raises is ignored, so metrics
can never fail a stream. An observer rather than cumulative buckets kept here because
the bucket bounds, the label names and the exposition belong to the exporter, and
the engine's per-stream figures (:meth:`StageTimer.summary`) do not change.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WINDOW = 3000
"""Recent observations kept per stage for p50/p95 (one minute of 20 ms blocks)."""

StageObserver = Callable[[str, float], None]
"""Called with ``(stage name, seconds)`` for every duration a named timer records."""

_stage_observer: StageObserver | None = None


def stage_observer_set(observer: StageObserver | None) -> StageObserver | None:
    """Hand every later duration of every named :class:`StageTimer` also to ``observer``.

    Process-wide (all streams); ``None`` removes it. The observer runs in whichever
    thread recorded the duration (the event loop, a stream worker, an encoder thread),
    so it must be thread-safe and quick; what it raises is ignored. Returns the
    observer it replaced.
    """
    global _stage_observer
    previous, _stage_observer = _stage_observer, observer
    return previous


class StageTimer:
    """Durations of one stage, in seconds; thread-safe (worker threads add to it).

    Args:
        window: How many recent observations the quantiles are computed over.
        name: The stage's name; only a named timer's durations reach the stage
            observer (see :func:`stage_observer_set`).
    """

    def __init__(self, window: int = WINDOW, *, name: str | None = None) -> None:
        self.name = name
        self.count = 0
        self.total_s = 0.0
        self._recent: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        """Record one duration in seconds (negative values are clamped to 0)."""
        value = max(0.0, seconds)
        with self._lock:
            self.count += 1
            self.total_s += value
            self._recent.append(value)
        observer = _stage_observer
        if observer is not None and self.name is not None:
            with contextlib.suppress(Exception):  # metrics must never fail a stream
                observer(self.name, value)

    def summary(self) -> dict[str, float | int]:
        """``{"count", "p50_ms", "p95_ms", "mean_ms"}``; zeros before any observation."""
        with self._lock:
            recent = np.fromiter(self._recent, dtype=np.float64)
            count, total = self.count, self.total_s
        if not count:
            return {"count": 0, "p50_ms": 0.0, "p95_ms": 0.0, "mean_ms": 0.0}
        p50, p95 = np.quantile(recent, [0.5, 0.95])
        return {
            "count": count,
            "p50_ms": round(float(p50) * 1000, 3),
            "p95_ms": round(float(p95) * 1000, 3),
            "mean_ms": round(total / count * 1000, 3),
        }


@dataclass
class MediaMetrics:
    """Counters and stage timers of one stream's graph.

    Stage names used by the live audio graph: ``receive`` (source frame → block
    ready), ``queue`` (block ready → processing starts), ``process`` (all stages of
    one block, in the stream's worker), one entry per processing stage by its name,
    ``encode`` (shared Opus encoder), ``relay`` (packet ready → a listener's sender
    takes it, pacing included).

    Attributes:
        blocks_in: Blocks that entered the graph.
        blocks_processed: Blocks every stage processed.
        blocks_failed_closed: Blocks that left as a fail-closed output (silence).
        lag_events: Blocks skipped because the stream fell behind real time.
        failed: ``"<stage>: <reason>"`` of the first stage that failed, else "".
        sink_drops: Items each sink's queue dropped (drop-oldest policy).
        gap_samples: Samples of silence filled in where the source's timestamps
            jumped ahead (packets lost or dropped before the graph), at 48 kHz.
        frames_in: Video frames that entered the graph.
        frames_processed: Video frames every stage processed (redacted as asked).
        frames_failed_closed: Video frames that left fully blurred because a stage
            raised, stalled or was skipped, or a detector's result was too old.
        frames_dropped: Video frames a live source dropped, unprocessed and unsent,
            because a newer frame came while the stages were busy (the stream's frame
            rate falls instead of its frames waiting and going stale).
        regions_blurred: Regions blurred per kind, summed over frames (a face in 30
            frames counts 30), e.g. ``{"face": 120, "plate": 4}``.
        stage_errors: Items each per-item stage failed on (see
            ``Stage.fails_per_item``).
    """

    blocks_in: int = 0
    blocks_processed: int = 0
    blocks_failed_closed: int = 0
    lag_events: int = 0
    failed: str = ""
    sink_drops: dict[str, int] = field(default_factory=dict)
    gap_samples: int = 0
    frames_in: int = 0
    frames_processed: int = 0
    frames_failed_closed: int = 0
    frames_dropped: int = 0
    regions_blurred: dict[str, int] = field(default_factory=dict)
    stage_errors: dict[str, int] = field(default_factory=dict)
    timers: dict[str, StageTimer] = field(default_factory=dict)

    def timer(self, name: str) -> StageTimer:
        """The timer called ``name`` (created on first use)."""
        timer = self.timers.get(name)
        if timer is None:
            timer = self.timers.setdefault(name, StageTimer(name=name))
        return timer

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable figures: ``{"stages": {name: summary}, "blocks_in", ...}``."""
        return {
            "stages": {name: timer.summary() for name, timer in list(self.timers.items())},
            "blocks_in": self.blocks_in,
            "blocks_processed": self.blocks_processed,
            "blocks_failed_closed": self.blocks_failed_closed,
            "lag_events": self.lag_events,
            "failed": self.failed,
            "sink_drops": dict(self.sink_drops),
            "gap_ms": round(self.gap_samples / 48, 1),
            "frames_in": self.frames_in,
            "frames_processed": self.frames_processed,
            "frames_failed_closed": self.frames_failed_closed,
            "frames_dropped": self.frames_dropped,
            "regions_blurred": dict(self.regions_blurred),
            "stage_errors": dict(self.stage_errors),
        }
