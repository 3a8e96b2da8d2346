"""Live bleeping of spoken personal information for one broadcast.

Wiring (see :meth:`LivePii.stages` and :meth:`LivePii.tap`)::

    … denoise ──┬── DelayLine (D s) ── recorder, relay (listeners)
                └── tap ─▶ ThreadedPiiAnalyser (own thread) ─▶ DecisionTimeline

The analysis thread reads the processed audio and posts *clear*/*redact* decisions
on the timeline; the delay line lets audio out ``D`` seconds later, judged by the
timeline at that moment: cleared audio passes, redacted audio is bleeped (or
silenced), and audio still undecided — the analysis fell behind, stalled or failed —
is muted. Nothing raw leaves unchecked: that is the fail-closed rule. When the
broadcast stops, the last ``D`` seconds still held wait (up to ``drain_s``, on the
event loop without blocking it) for the analysis to finish, then leave judged the
same way, so the recording keeps the tail with its bleeps instead of muting it.

What left the delay line also drives the rest, so listeners and the audit only ever
see what was decided: captions (:meth:`LivePii.captions_due`) are built from words
whose audio has left, with every entity and every word that overlaps a non-clear
range masked; redaction events (:attr:`LivePii.audit`) are the delay line's own
``Event("redact")`` items.

Imports nothing from Django.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from streams.media.items import SAMPLE_RATE, AudioChunk, Event, Item
from streams.media.pii import MASKS
from streams.media.pii_analysis import PiiAnalyser, ThreadedPiiAnalyser, TranscriptWord
from streams.media.sinks import CallbackSink
from streams.media.stage import Stage
from streams.media.timeline import DecisionTimeline, DelayLine, Redactor, bleep, mute

UNCHECKED_MASK = "[…]"
"""Caption text for words whose audio left the delay line undecided (muted)."""

DRAIN_MARGIN_S = 4.0
"""Seconds beyond ``D`` a stop waits for the analysis to decide the delay line's tail:
about two analysis windows of Whisper base on a loaded 2-core machine (one window
~0.6-1.5 CPU-s, see the README's figures)."""

logger = logging.getLogger("hearth.media.pii")


@dataclass(frozen=True, slots=True)
class RedactedRange:
    """A range that left the delay line bleeped or muted (content ticks, 1/48000 s).

    Attributes:
        start, end: Ticks of the range.
        verdict: ``"redact"`` (PII found) or ``"unknown"`` (undecided: muted).
        label: Entity label for ``redact`` (e.g. ``"PHONE_NUMBER"``), else ``""``.
        confidence: Detector score 0..1 (0 for ``unknown``).
        source: Detector name (e.g. the ASR model), ``""`` for ``unknown``.
    """

    start: int
    end: int
    verdict: str
    label: str
    confidence: float
    source: str


class LivePii:
    """The analysis branch, delay line, captions and audit of one live broadcast.

    Args:
        analyser_factory: Builds the stream's :class:`PiiAnalyser` posting to the
            given timeline (live windows, ``keep_transcript=True``).
        delay_s: Broadcast delay ``D`` in seconds (the issue's default: 3 s).
        bleep_tone: True: redacted ranges become a 1 kHz tone; False: silence.
        max_queue_s: Audio the analysis may fall behind before its oldest queued
            blocks are dropped (that audio stays undecided, hence muted).
        drain_s: At the end of the stream (a stop), how long the delay line's tail
            waits for the analysis to finish deciding it; default ``delay_s`` +
            :data:`DRAIN_MARGIN_S` (the tail is at most D seconds of audio, plus the
            analysis's own backlog and last window). Still undecided then: muted.

    Raises:
        ValueError: ``delay_s`` is not positive, or ``drain_s`` is negative.
    """

    def __init__(
        self,
        analyser_factory: Callable[[DecisionTimeline], PiiAnalyser],
        *,
        delay_s: float,
        bleep_tone: bool,
        max_queue_s: float = 30.0,
        drain_s: float | None = None,
    ) -> None:
        if delay_s <= 0:
            raise ValueError(f"delay_s must be positive, got {delay_s}")
        if drain_s is not None and drain_s < 0:
            raise ValueError(f"drain_s must be >= 0, got {drain_s}")
        self.delay_s = delay_s
        self.drain_s = delay_s + DRAIN_MARGIN_S if drain_s is None else drain_s
        self.drain_timed_out = False  # the analysis had not finished when the tail left
        self.timeline = DecisionTimeline()
        self.analyser = analyser_factory(self.timeline)
        self.threaded = ThreadedPiiAnalyser(self.analyser, max_chunks=int(max_queue_s * 50))
        redactor: Redactor = bleep() if bleep_tone else mute
        self.delay = DelayLine(
            timeline=self.timeline,
            delay_ticks=round(delay_s * SAMPLE_RATE),
            redactor=redactor,
            settle=self._settle,
        )
        self._lock = threading.Lock()
        self.released_start: int | None = None  # tick of the first audio that left
        self.released_end: int | None = None  # tick just past the last audio that left
        self.ranges: list[RedactedRange] = []  # recent non-clear ranges (captions)
        self.audit: list[RedactedRange] = []  # redactions not yet stored (drained)
        self.redacted_ticks = 0
        self.muted_ticks = 0
        self._captioned_until = -(1 << 62)  # words ending before this were captioned

    async def _settle(self) -> None:
        """End of stream (the delay line's ``settle``): tell the analysis the stream
        ended and wait, polling on the loop, until it has finished or ``drain_s``
        passed. Fail closed: a timeout only means the undecided rest is muted."""
        self.threaded.end()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_s
        while not self.threaded.finished.is_set():
            if loop.time() >= deadline:
                self.drain_timed_out = True
                logger.warning(
                    "PII analysis did not finish within %.1f s of the stop; "
                    "the undecided tail is muted",
                    self.drain_s,
                )
                return
            await asyncio.sleep(0.02)

    # -- wiring ----------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        """The stage to put after the processing stages: the delay line."""
        return [self.delay]

    def tap(self) -> CallbackSink:
        """The sink to tap after the last processing stage (feeds the analysis)."""
        return CallbackSink(self.threaded.submit, name="pii-analysis", max_items=2000)

    def released_sink(self) -> CallbackSink:
        """A main sink that notes how far audio has left the delay line."""
        return CallbackSink(self._released, name="pii-released", max_items=2000)

    def _released(self, item: Item) -> None:
        if isinstance(item, AudioChunk):
            if self.released_start is None:
                self.released_start = item.pts
            self.released_end = max(self.released_end or item.end_pts, item.end_pts)

    def on_event(self, event: Event) -> bool:
        """Take the delay line's ``redact`` events; False for any other event."""
        if event.kind != "redact":
            return False
        data = event.data or {}
        verdict = str(data.get("verdict", ""))
        found = RedactedRange(
            start=event.pts,
            end=event.end_pts,
            verdict=verdict,
            label=str(data.get("label", "")),
            confidence=float(data.get("confidence", 0.0)),
            source=str(data.get("source", "")),
        )
        with self._lock:
            _append_merged(self.ranges, found)
            if verdict == "redact":
                self.redacted_ticks += found.end - found.start
                _append_merged(self.audit, found)
            else:
                self.muted_ticks += found.end - found.start
        return True

    # -- figures, audit, captions -------------------------------------------------------
    def stats(self) -> dict[str, float | int | str]:
        """Seconds bleeped and muted (fail closed) so far, and the analysis state."""
        return {
            "delay_s": self.delay_s,
            "redacted_s": round(self.redacted_ticks / SAMPLE_RATE, 2),
            "muted_s": round(self.muted_ticks / SAMPLE_RATE, 2),
            "analysis_dropped_blocks": self.threaded.dropped,
            "analysis_failed": self.threaded.failed,
        }

    def audit_drain(self) -> list[RedactedRange]:
        """The redactions since the last call (for the audit trail), oldest first."""
        with self._lock:
            out, self.audit = self.audit, []
        return out

    def captions_due(self) -> list[tuple[int, int, str]]:
        """New caption cues ``(start_tick, end_tick, text)`` for words whose audio has
        left the delay line, in step with what listeners hear.

        A word is shown only if it belongs to no entity and overlaps no bleeped or
        muted range; each entity becomes one mask (``"[phone number]"``) and each run of
        unchecked words one ``"[…]"``. Words never leave in clear text otherwise.
        """
        horizon = self.released_end
        if horizon is None:
            return []
        with self._lock:
            ranges = list(self.ranges)
            self.ranges = [r for r in ranges if r.end > self._captioned_until - SAMPLE_RATE * 10]
        words = [
            w
            for w in self.analyser.transcript
            if self._captioned_until <= w.word.start and w.word.end <= horizon
        ]
        if not words:
            return []
        self._captioned_until = words[-1].word.end
        return [_cue(words, ranges)]


def _append_merged(ranges: list[RedactedRange], new: RedactedRange) -> None:
    """Append ``new``, or extend the last range when ``new`` continues it (the delay
    line reports a bleep one 20 ms block at a time)."""
    if ranges:
        last = ranges[-1]
        same = (last.verdict, last.label, last.source) == (new.verdict, new.label, new.source)
        if same and last.end == new.start:
            ranges[-1] = RedactedRange(
                last.start,
                new.end,
                last.verdict,
                last.label,
                max(last.confidence, new.confidence),
                last.source,
            )
            return
    ranges.append(new)


def _cue(words: list[TranscriptWord], ranges: list[RedactedRange]) -> tuple[int, int, str]:
    parts: list[str] = []
    last = ""
    for item in words:
        hit = next(
            (r for r in ranges if min(r.end, item.word.end) > max(r.start, item.word.start)),
            None,
        )
        if item.entity >= 0 or (hit is not None and hit.verdict == "redact"):
            label = item.label or (hit.label if hit else "")
            mask = MASKS.get(label, "[redacted]")
        elif hit is not None:
            mask = UNCHECKED_MASK
        else:
            parts.append(item.word.text.strip())
            last = ""
            continue
        if mask != last:
            parts.append(mask)
        last = mask
    return words[0].word.start, words[-1].word.end, " ".join(p for p in parts if p)
