"""Speech -> words -> PII -> decisions on a :class:`DecisionTimeline`, window by window.

:class:`PiiAnalyser` is fed the *processed* 48 kHz stream (after denoise) chunk by
chunk, and posts to a :class:`~streams.media.timeline.DecisionTimeline`:

* ``redact`` for every PII entity found, from its first word's start to its last
  word's end, padded by ``pad_s`` (150-250 ms, default 200 ms) each side;
* ``clear`` for everything up to the *stable edge*: the buffer end less ``guard_s``
  (Whisper's last word of a window is often cut or wrong), moved back to the start of
  a word that straddles it, and back to the start of a trailing run of digits /
  number words / "at" / "dot" (a phone number or e-mail still being spoken).

Windows: every ``hop_s`` of new audio, the buffer ``[buffer_start, now)`` (at most
``max_window_s``) is transcribed and analysed whole. After a run the buffer start moves
up to ``context_s`` before the stable edge, to a gap between words, so each window
re-reads the tail of the previous one: an entity said across a window boundary is
seen whole in the later window (its redaction then also covers the part already
cleared: redactions win in the timeline). A word is committed to the transcript the
first time it falls before a stable edge; its entity label comes from every entity
found in any window that covers it (:attr:`PiiAnalyser.transcript`).

The same analyser runs over a file (:class:`PiiAnalysisStage`, synchronously in the
graph, a content-time :class:`~streams.media.timeline.DelayLine` after it) and live
(:class:`ThreadedPiiAnalyser`, its own thread fed by a tap, so slow ASR never holds
the audio path; the delay line then mutes whatever is still undecided after ``D``).

Imports nothing from Django.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from streams.media.asr import Word
from streams.media.items import SAMPLE_RATE, AudioChunk, Item
from streams.media.pii import MASKS, PiiSpan
from streams.media.stage import Stage
from streams.media.timeline import Decision, DecisionTimeline

logger = logging.getLogger("hearth.media.pii")

_OPEN_TOKEN = re.compile(
    r"(?i)^[\s,.\-]*(?:\d[\d,.\-]*|zero|oh|o|one|two|three|four|five|six|seven|eight|nine|"
    r"double|triple|dot|at|underscore|dash)[\s,.\-]*$"
)


class WordSource(Protocol):
    """Turns a 48 kHz window into words (a :class:`~streams.media.asr.Transcriber`)."""

    name: str

    def transcribe(self, samples: NDArray[np.float32], pts: int) -> list[Word]:
        """Words in ``samples`` (48 kHz mono float32) with absolute ticks, ``pts`` at [0]."""
        ...


class SpanFinder(Protocol):
    """Anything that finds PII entities in words (a :class:`~streams.media.pii.PiiDetector`)."""

    def find(self, words: list[Word]) -> list[PiiSpan]:
        """Entities covering ``words``, in word order."""
        ...


@dataclass(frozen=True, slots=True)
class AnalysisOptions:
    """Window and padding settings of a :class:`PiiAnalyser` (seconds).

    Attributes:
        hop_s: New audio between two runs.
        guard_s: Tail of each window not cleared yet (the last word may be cut).
        context_s: Audio before the stable edge re-read by the next window.
        max_window_s: Longest window (Whisper's limit is 30 s).
        pad_s: Padding each side of a redacted entity (the issue asks 150-250 ms).
    """

    hop_s: float = 1.5
    guard_s: float = 0.5
    context_s: float = 3.0
    max_window_s: float = 10.0
    pad_s: float = 0.2

    @classmethod
    def for_files(cls, pad_s: float = 0.2) -> AnalysisOptions:
        """Longer hops for files, where no listener waits: ~3x fewer windows per audio
        second (each costs at least the encoder), same context and guard."""
        return cls(hop_s=4.0, guard_s=0.5, context_s=3.0, max_window_s=12.0, pad_s=pad_s)


@dataclass(frozen=True, slots=True)
class TranscriptWord:
    """A final word of the transcript.

    Attributes:
        word: The recognised word and its ticks.
        label: Entity label when the word is part of PII (``""`` otherwise).
        entity: Id shared by the words of one entity (``-1`` otherwise).
    """

    word: Word
    label: str = ""
    entity: int = -1


@dataclass(slots=True)
class DecisionRecord:
    """When a range was decided (for latency figures): ticks and ``time.monotonic()``."""

    start: int
    end: int
    verdict: str
    at: float


class PiiAnalyser:
    """Streaming speech-to-text + PII analysis that posts decisions (see module doc).

    Not thread-safe: one thread pushes (the graph's worker, or
    :class:`ThreadedPiiAnalyser`'s thread).

    Args:
        words: Speech-to-text (48 kHz windows -> :class:`Word`).
        finder: PII detector.
        timeline: Where decisions go.
        options: Window settings.
        on_decision: Called with each new redaction :class:`Decision` (events, logs).
        keep_transcript: Keep committed words for :attr:`transcript` (files, tests;
            live, captions would consume them instead).

    Attributes:
        decisions: Every redaction posted.
        log: Every clear/redact posted, with when (latency figures).
        runs: Windows analysed so far.
    """

    def __init__(
        self,
        words: WordSource,
        finder: SpanFinder,
        timeline: DecisionTimeline,
        *,
        options: AnalysisOptions | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        keep_transcript: bool = True,
    ) -> None:
        self.words = words
        self.finder = finder
        self.timeline = timeline
        self.options = options or AnalysisOptions()
        self.on_decision = on_decision
        self.keep_transcript = keep_transcript
        self._words: list[Word] = []  # committed words (keep_transcript)
        self._committed = -(1 << 62)  # tick up to which words are committed
        self._spans: list[tuple[int, int, str]] = []  # unpadded entity ranges found
        self.decisions: list[Decision] = []
        self.log: list[DecisionRecord] = []
        self.runs = 0
        self._parts: list[NDArray[np.float32]] = []
        self._start: int | None = None  # tick of the buffer's first sample
        self._end = 0  # tick just past the buffer
        self._last_run = 0
        self._cleared = 0
        self._posted: list[tuple[int, int]] = []

    def _ticks(self, seconds: float) -> int:
        return round(seconds * SAMPLE_RATE)

    @property
    def decided_until(self) -> int:
        """Tick up to which every range has a decision (clear or redact)."""
        return self._cleared

    def push(self, chunk: AudioChunk) -> None:
        """Add a processed chunk (contiguous pts expected); run when ``hop_s`` is due."""
        if self._start is None:
            self._start = self._last_run = self._cleared = chunk.pts
        elif chunk.pts != self._end:  # a gap or overlap: close this run, start anew
            self.finish()
            self._start = self._last_run = chunk.pts
            self._cleared = max(self._cleared, chunk.pts)
        self._parts.append(chunk.samples)
        self._end = chunk.end_pts
        if self._end - self._last_run >= self._ticks(self.options.hop_s):
            self._run(final=False)

    def finish(self) -> None:
        """End of stream: analyse what is left and decide everything up to the end."""
        if self._start is not None and self._end > self._start:
            self._run(final=True)
        self._finalise_all()

    # -- internals --------------------------------------------------------------
    def _run(self, *, final: bool) -> None:
        assert self._start is not None
        audio = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = [audio]
        self._last_run = self._end
        self.runs += 1
        words = self.words.transcribe(audio, self._start)
        spans = self.finder.find(words) if words else []
        pad = self._ticks(self.options.pad_s)
        for span in spans:
            self._redact(max(0, span.start - pad), span.end + pad, span)
        edge = self._end if final else self._stable_edge(words)
        self._commit(words, edge)
        if edge > self._cleared:
            self.timeline.clear(start=self._cleared, end=edge)
            self.log.append(DecisionRecord(self._cleared, edge, "clear", time.monotonic()))
            self._cleared = edge
        cut = self._end if final else self._cut(words, edge)
        self._trim(cut)

    def _redact(self, start: int, end: int, span: PiiSpan) -> None:
        # A later window sees the same entity again: post only what is new.
        if any(a <= start and end <= b for a, b in self._posted):
            return
        self._posted.append((start, end))
        if self.keep_transcript:
            self._spans.append((span.start, span.end, span.label))
        decision = Decision(start, end, span.label, span.score, self.words.name)
        self.timeline.redact(decision)
        self.decisions.append(decision)
        self.log.append(DecisionRecord(start, end, "redact", time.monotonic()))
        if self.on_decision is not None:
            self.on_decision(decision)

    def _stable_edge(self, words: list[Word]) -> int:
        edge = self._end - self._ticks(self.options.guard_s)
        for word in words:  # never cut through a word
            if word.start < edge < word.end:
                edge = word.start
        stable = [w for w in words if w.end <= edge]
        later = [w for w in words if w.start >= edge]
        if stable and (later or self._end - stable[-1].end < self._ticks(self.options.hop_s)):
            # A trailing digit/e-mail run may go on: decide it with what follows.
            i = len(stable)
            while i > 0 and _OPEN_TOKEN.match(stable[i - 1].text):
                i -= 1
            if i < len(stable):
                edge = stable[i].start
        return max(self._start or 0, edge)

    def _cut(self, words: list[Word], edge: int) -> int:
        """Where the next window starts: ``context_s`` before ``edge``, between words."""
        assert self._start is not None
        keep = self._ticks(self.options.context_s)
        longest = self._ticks(self.options.max_window_s - self.options.hop_s)
        cut = max(edge - keep, self._end - longest, self._start)
        cut = min(cut, edge)
        for word in words:
            if word.start < cut < word.end:
                cut = word.start
        return max(cut, self._start)

    def _commit(self, words: list[Word], edge: int) -> None:
        """Add the words before ``edge`` not committed yet (first stable reading wins)."""
        tolerance = SAMPLE_RATE // 20  # 50 ms: a re-read word's start may move a little
        for word in words:
            if word.end <= edge and word.start >= self._committed - tolerance:
                if word.end > self._committed and self.keep_transcript:
                    self._words.append(word)
                self._committed = max(self._committed, word.end)

    def _trim(self, cut: int) -> None:
        """Drop buffered audio before ``cut`` (and redactions that ended before it)."""
        assert self._start is not None
        self._posted = [(a, b) for a, b in self._posted if b > cut]
        drop = cut - self._start
        if drop > 0:
            self._parts = [self._parts[0][drop:]]
            self._start = cut

    @property
    def transcript(self) -> list[TranscriptWord]:
        """Committed words with the entity each belongs to (overlapping finds merged).

        A word is PII when most of its time range lies in an entity's (unpadded) range
        found in any window (word times move a little between windows); overlapping
        entities form one, labelled by the longest.
        """
        groups: list[list[tuple[int, int, str]]] = []
        for span in sorted(self._spans):
            if groups and span[0] < max(b for _, b, _ in groups[-1]):
                groups[-1].append(span)
            else:
                groups.append([span])
        merged = [
            (min(a for a, _, _ in g), max(b for _, b, _ in g), max(g, key=lambda x: x[1] - x[0])[2])
            for g in groups
        ]
        out: list[TranscriptWord] = []
        for word in self._words:
            hit = next((i for i, (a, b, _) in enumerate(merged) if _mostly_in(word, a, b)), -1)
            out.append(TranscriptWord(word, merged[hit][2] if hit >= 0 else "", hit))
        return out

    def _finalise_all(self) -> None:
        self._parts = []
        self._start = None


def merged_decisions(decisions: list[Decision]) -> list[Decision]:
    """Overlapping redactions as one each (later windows re-find and extend entities).

    Returns:
        Disjoint decisions by start: the union range, the longest member's label, the
        highest confidence.
    """
    out: list[Decision] = []
    longest: Decision | None = None
    for d in sorted(decisions, key=lambda d: d.start):
        if out and d.start < out[-1].end:
            last = out[-1]
            if longest is None or d.end - d.start > longest.end - longest.start:
                longest = d
            out[-1] = Decision(
                last.start,
                max(last.end, d.end),
                longest.label,
                max(last.confidence, d.confidence),
                last.source,
            )
        else:
            out.append(d)
            longest = d
    return out


def _mostly_in(word: Word, start: int, end: int) -> bool:
    """Whether more than half of ``word`` (at least 1 tick) lies in ``[start, end)``."""
    overlap = min(end, word.end) - max(start, word.start)
    return overlap > 0 and 2 * overlap >= word.end - word.start


class PiiAnalysisStage(Stage):
    """The analyser as a graph stage: audio passes unchanged, decisions are posted.

    For files (``manage.py process_media --bleep-pii``): ASR runs synchronously in the
    stream's worker thread, so a :class:`~streams.media.timeline.DelayLine` placed
    after it (content-time delay of a window or so) finds the decisions already posted.
    Live, use :class:`ThreadedPiiAnalyser` on a tap instead (never blocks the audio).
    Fails closed to silence (the default): audio that was not analysed never passes.
    """

    name = "pii"
    skippable = False

    def __init__(self, analyser: PiiAnalyser) -> None:
        self.analyser = analyser

    def latency_ticks(self) -> int:
        """0: audio is passed through as it came."""
        return 0

    def process(self, chunk: AudioChunk) -> list[Item]:
        """Analyse ``chunk`` (maybe running a window); return it unchanged."""
        self.analyser.push(chunk)
        return [chunk]

    def flush(self, *, after_pts: int, block_samples: int) -> list[Item]:
        """Analyse the rest and decide up to the end; nothing is emitted."""
        del after_pts, block_samples
        self.analyser.finish()
        return []


class ThreadedPiiAnalyser:
    """Runs a :class:`PiiAnalyser` on its own thread, fed without blocking (live path).

    :meth:`submit` is called from the event loop (e.g. by a tap's
    :class:`~streams.media.sinks.CallbackSink`); chunks queue up to ``max_chunks``
    (then the oldest are dropped: that audio stays undecided, so the delay line mutes
    it). :meth:`end` marks the end of the stream (the queue is then drained and the
    analysis finished; :attr:`finished` is set once it is); :meth:`close` also waits.

    Args:
        analyser: The analyser it owns.
        max_chunks: Queue bound (default 1500 blocks = 30 s of 20 ms blocks).

    Attributes:
        finished: Set when the thread is done: everything queued before :meth:`end`
            was analysed and :meth:`PiiAnalyser.finish` ran (or the analysis failed).
    """

    def __init__(self, analyser: PiiAnalyser, *, max_chunks: int = 1500) -> None:
        self.analyser = analyser
        self.dropped = 0
        self.failed = ""
        self.finished = threading.Event()
        self._queue: queue.Queue[AudioChunk | None] = queue.Queue()
        self._max = max_chunks
        self._ended = False
        self._thread = threading.Thread(target=self._loop, name="pii-analysis", daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> None:
        """Queue an audio chunk (other items, and anything after :meth:`end`, are ignored)."""
        if not isinstance(item, AudioChunk) or self._ended:
            return
        if self._queue.qsize() >= self._max:
            try:
                self._queue.get_nowait()
                self.dropped += 1
            except queue.Empty:
                pass
        self._queue.put(item)

    def end(self) -> None:
        """End of the stream: analyse what is queued, finish, stop (returns at once;
        idempotent; chunks submitted later are ignored)."""
        if not self._ended:
            self._ended = True
            self._queue.put(None)

    def close(self, timeout: float | None = None) -> None:
        """:meth:`end`, then wait up to ``timeout`` seconds for the thread to stop."""
        self.end()
        self._thread.join(timeout)

    def _loop(self) -> None:
        try:
            self._analyse()
        finally:
            self.finished.set()

    def _analyse(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                break
            if self.failed:
                continue
            try:
                self.analyser.push(chunk)
            except Exception as exc:  # undecided audio is muted by the delay line
                logger.exception("PII analysis failed; the rest of the stream stays muted")
                self.failed = f"{type(exc).__name__}: {exc}"
        if not self.failed:
            try:
                self.analyser.finish()
            except Exception as exc:
                logger.exception("PII analysis failed at the end of the stream")
                self.failed = f"{type(exc).__name__}: {exc}"


def transcript_cues(
    words: list[TranscriptWord], *, max_words: int = 12, pause_s: float = 0.8
) -> list[tuple[int, int, str]]:
    """Group final words into cues ``(start_tick, end_tick, redacted text)``.

    A cue ends after ``max_words`` words or at a pause longer than ``pause_s``. Each
    entity's words become one mask (:data:`~streams.media.pii.MASKS`, e.g.
    ``"[phone number]"``); the words themselves never appear.
    """
    cues: list[tuple[int, int, str]] = []
    current: list[TranscriptWord] = []
    pause = round(pause_s * SAMPLE_RATE)

    def close() -> None:
        if not current:
            return
        parts: list[str] = []
        last_entity = -1
        for item in current:
            if item.entity >= 0:
                if item.entity != last_entity:
                    parts.append(MASKS.get(item.label, "[redacted]"))
                last_entity = item.entity
            else:
                parts.append(item.word.text.strip())
                last_entity = -1
        cues.append((current[0].word.start, current[-1].word.end, " ".join(p for p in parts if p)))
        current.clear()

    for item in words:
        inside_entity = 0 <= item.entity == current[-1].entity if current else False
        full = len(current) >= max_words and not inside_entity
        if current and (full or item.word.start - current[-1].word.end > pause):
            close()
        current.append(item)
    close()
    return cues


def _vtt_time(ticks: int) -> str:
    ms = max(0, round(ticks * 1000 / SAMPLE_RATE))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{ms:03d}"


def transcript_vtt(words: list[TranscriptWord]) -> str:
    """The redacted transcript as WebVTT (W3C WebVTT), one cue per :func:`transcript_cues`."""
    lines = ["WEBVTT", ""]
    for start, end, text in transcript_cues(words):
        lines += [f"{_vtt_time(start)} --> {_vtt_time(end)}", text, ""]
    return "\n".join(lines)
