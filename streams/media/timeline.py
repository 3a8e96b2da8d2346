"""Decisions about time ranges, and the delay line that enforces them.

Delayed analysis (speech-to-text + a PII recogniser, a video detector) runs on a
branch teed off the main path and *posts decisions* for time ranges onto a
:class:`DecisionTimeline`: "clear" (examined, nothing to hide) or "redact". The main
path holds media in a :class:`DelayLine` for ``D`` seconds; as a chunk leaves, the
delay line asks the timeline about its range. Only a range the analysis has
explicitly cleared passes; a redacted range, and a range nobody has decided on yet
(*unknown*: the analysis fell behind, failed or never saw it), leave as the fail-
closed output. This is stricter than a broadcast "dump" button or pipecat's
interruption frames: silence is the default, audio must be cleared to pass.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from streams.media.items import AudioChunk, Event, Item, silence
from streams.media.stage import Stage


class Verdict(enum.Enum):
    """What may happen to a time range."""

    CLEAR = "clear"
    REDACT = "redact"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Decision:
    """A redaction posted for ``[start, end)`` ticks.

    Attributes:
        start: First tick (inclusive), same time base as the stream.
        end: Last tick (exclusive).
        label: What was found (e.g. ``"PHONE_NUMBER"``) — never the content itself.
        confidence: 0..1, from the detector.
        source: Which analyser decided (e.g. ``"whisper-base+presidio"``).
    """

    start: int
    end: int
    label: str = ""
    confidence: float = 1.0
    source: str = ""


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of a queried range with one verdict (``decision`` set for REDACT)."""

    start: int
    end: int
    verdict: Verdict
    decision: Decision | None = None


def _merge(intervals: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """Insert ``[start, end)`` into sorted disjoint ``intervals``, merging overlaps."""
    out: list[tuple[int, int]] = []
    placed = False
    for a, b in intervals:
        if b < start:
            out.append((a, b))
        elif a > end:
            if not placed:
                out.append((start, end))
                placed = True
            out.append((a, b))
        else:
            start, end = min(a, start), max(b, end)
    if not placed:
        out.append((start, end))
    return out


class DecisionTimeline:
    """Thread-safe record of cleared and redacted time ranges of one stream.

    Ticks are integers in the stream's time base (1/48000 s for audio). Redactions
    win over clearances; ranges never posted are :attr:`Verdict.UNKNOWN`.
    """

    def __init__(self) -> None:
        self._cleared: list[tuple[int, int]] = []
        self._redactions: list[Decision] = []
        self._lock = threading.Lock()

    def clear(self, *, start: int, end: int) -> None:
        """Post that ``[start, end)`` was analysed and may pass (unless redacted)."""
        if end <= start:
            return
        with self._lock:
            self._cleared = _merge(self._cleared, start, end)

    def redact(self, decision: Decision) -> None:
        """Post a redaction of ``[decision.start, decision.end)``."""
        if decision.end <= decision.start:
            return
        with self._lock:
            bisect.insort(self._redactions, decision, key=lambda d: d.start)

    def resolve(self, *, start: int, end: int) -> list[Segment]:
        """Split ``[start, end)`` into segments of one verdict each, in order."""
        if end <= start:
            return []
        with self._lock:
            redactions = [d for d in self._redactions if d.start < end and d.end > start]
            cleared = [(a, b) for a, b in self._cleared if a < end and b > start]
        cuts = {start, end}
        for d in redactions:
            cuts.update(x for x in (d.start, d.end) if start < x < end)
        for a, b in cleared:
            cuts.update(x for x in (a, b) if start < x < end)
        bounds = sorted(cuts)
        segments: list[Segment] = []
        for a, b in itertools.pairwise(bounds):
            hit = next((d for d in redactions if d.start < b and d.end > a), None)
            if hit is not None:
                segment = Segment(a, b, Verdict.REDACT, hit)
            elif any(ca <= a and b <= cb for ca, cb in cleared):
                segment = Segment(a, b, Verdict.CLEAR)
            else:
                segment = Segment(a, b, Verdict.UNKNOWN)
            if (
                segments
                and segments[-1].verdict is segment.verdict
                and (segments[-1].decision == segment.decision)
            ):
                segments[-1] = Segment(segments[-1].start, b, segment.verdict, segment.decision)
            else:
                segments.append(segment)
        return segments

    def verdict(self, *, start: int, end: int) -> Verdict:
        """One verdict for the whole range: REDACT if any part is, CLEAR if all is."""
        verdicts = {s.verdict for s in self.resolve(start=start, end=end)}
        if Verdict.REDACT in verdicts:
            return Verdict.REDACT
        if verdicts == {Verdict.CLEAR}:
            return Verdict.CLEAR
        return Verdict.UNKNOWN

    def prune(self, *, before: int) -> None:
        """Forget everything that ends at or before tick ``before`` (bounded memory)."""
        with self._lock:
            self._cleared = [(max(a, before), b) for a, b in self._cleared if b > before]
            self._redactions = [d for d in self._redactions if d.end > before]


Redactor = Callable[[NDArray[np.float32], int], NDArray[np.float32]]
"""``(samples, pts) -> replacement`` for a redacted piece (same length)."""


def mute(samples: NDArray[np.float32], pts: int) -> NDArray[np.float32]:
    """Replace a redacted piece with silence."""
    del pts
    return silence(len(samples))


def bleep(frequency_hz: float = 1000.0, level: float = 0.2) -> Redactor:
    """A redactor that replaces a piece with a sine bleep, phase-continuous by pts.

    Args:
        frequency_hz: Tone frequency (the broadcast-standard 1 kHz by default).
        level: Peak amplitude, 0..1.
    """

    def apply(samples: NDArray[np.float32], pts: int) -> NDArray[np.float32]:
        t = (np.arange(len(samples)) + pts) / 48_000
        return (level * np.sin(2 * np.pi * frequency_hz * t)).astype(np.float32)

    return apply


class DelayLine(Stage):
    """Holds audio for ``delay_ticks``, then lets out only what the timeline cleared.

    Each chunk leaves once the stream has advanced ``delay_ticks`` past its end.
    Pieces the timeline calls REDACT are replaced by ``redactor`` output (silence by
    default, or a bleep); pieces it calls UNKNOWN (analysis behind or failed) are
    muted whatever the redactor. Both are reported as ``Event("redact", ...)`` items with
    ``data={"verdict": ..., "label": ..., "confidence": ..., "source": ...}``.
    At the end of the stream (:meth:`flush`) everything held leaves, judged the same
    way; with ``settle``, the runner first awaits it (:meth:`before_flush`), so a live
    analysis can decide the held tail instead of it being muted as undecided.
    Content timestamps are kept (the delay is wall-clock, not content).

    Args:
        timeline: Where analysis posts its decisions.
        delay_ticks: Hold time in ticks (e.g. ``3 * 48000`` for 3 s at 48 kHz).
        redactor: Replacement for redacted/unknown pieces.
        prune: Forget timeline entries older than what has left (default True).
        settle: Called at the end of the stream, before the tail is judged: returns
            an awaitable that finishes once the analysis has decided what it can
            (it bounds its own wait; whatever is still undecided is then muted).
    """

    name = "delay"
    skippable = False  # cheap, and skipping would break the delay

    def __init__(
        self,
        *,
        timeline: DecisionTimeline,
        delay_ticks: int,
        redactor: Redactor = mute,
        prune: bool = True,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if delay_ticks < 0:
            raise ValueError(f"delay_ticks must be >= 0, got {delay_ticks}")
        self.timeline = timeline
        self.delay_ticks = delay_ticks
        self.redactor = redactor
        self.settle = settle
        self._prune = prune
        self._held: deque[AudioChunk] = deque()

    def before_flush(self) -> Awaitable[None] | None:
        """``settle()`` when given and audio is held (see the class doc), else None."""
        if self.settle is None or not self._held:
            return None
        return self.settle()

    def latency_ticks(self) -> int:
        """0: content timestamps are kept; the wall-clock delay is ``delay_ticks``."""
        return 0

    def process(self, chunk: AudioChunk) -> list[Item]:
        """Hold ``chunk``; release (judged) every chunk older than the delay."""
        self._held.append(chunk)
        horizon = chunk.end_pts - self.delay_ticks
        out: list[Item] = []
        while self._held and self._held[0].end_pts <= horizon:
            out.extend(self._release(self._held.popleft()))
        return out

    def fail_closed(self, chunk: AudioChunk) -> list[Item]:
        """Silence for ``chunk``, and for everything held (it can no longer be judged)."""
        held = list(self._held)
        self._held.clear()
        return [c.replaced(silence(len(c.samples)), failed_closed=True) for c in (*held, chunk)]

    def flush(self, *, after_pts: int, block_samples: int) -> list[Item]:
        """Release everything held, judged as usual."""
        del after_pts, block_samples
        out: list[Item] = []
        while self._held:
            out.extend(self._release(self._held.popleft()))
        return out

    def _release(self, chunk: AudioChunk) -> list[Item]:
        segments = self.timeline.resolve(start=chunk.pts, end=chunk.end_pts)
        if len(segments) == 1 and segments[0].verdict is Verdict.CLEAR:
            out: list[Item] = [chunk]
        else:
            samples = chunk.samples.copy()
            events: list[Item] = []
            for seg in segments:
                if seg.verdict is Verdict.CLEAR:
                    continue
                a, b = seg.start - chunk.pts, seg.end - chunk.pts
                redactor = self.redactor if seg.verdict is Verdict.REDACT else mute
                samples[a:b] = redactor(samples[a:b], seg.start)
                decision = seg.decision
                events.append(
                    Event(
                        "redact",
                        seg.start,
                        seg.end,
                        data={
                            "verdict": seg.verdict.value,
                            "label": decision.label if decision else "",
                            "confidence": decision.confidence if decision else 0.0,
                            "source": decision.source if decision else "",
                        },
                    )
                )
            out = [chunk.replaced(samples, failed_closed=True), *events]
        if self._prune:
            self.timeline.prune(before=chunk.pts)
        return out
