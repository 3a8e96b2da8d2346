"""Live PII windows replayed in content time: how much PII is cleared before it is found.

Usage::

    .venv/bin/python bench/pii_windows.py [--configs 1.5:0.5,1.0:0.5,1.5:1.0] [--delay 3]
                                          [--compute 0.5,1.0] [--explain]

``bench/pii.py`` measures the live path at real-time pace, so its figures move with
the machine's load. This benchmark removes the clock: the spoken-PII corpus of the
tests (``bench/_pii_corpus.py``, 120 s, 22 ground-truth spans, no denoising) is fed
20 ms at a time to a :class:`~streams.media.pii_analysis.PiiAnalyser` with live window
settings, synchronously, and every decision (clear / redact) is stamped with the
*content* time at which its window ran (the buffer end). A window's result reaches the
delay line ``--compute`` seconds later (the ASR + PII time of one window: about
0.4-0.6 s for Whisper base on an idle core pair, more when loaded).

Per configuration (``hop_s:guard_s``; the first listed is the baseline, today's
default ``AnalysisOptions``):

* runs: windows analysed (ASR cost is roughly proportional);
* cleared first: mean share of a PII span's samples that were posted *clear* before a
  later window posted the redaction over them (the leak mechanism: a name misheard
  in one window and recognised in the next);
* content decision lag p50 / p95: from a word's end to the first decision covering it;
* for ``D = --delay`` and each compute time: PII recall at release (share of PII
  samples bleeped or muted when the delay line releases them, i.e. not heard) and
  the share of clean audio muted because it was still undecided.

With ``--explain``, each configuration's row is followed by every span that is heard
at release (first compute time): the share heard, the window that first cleared it
and the one that first redacted it (where the span lay in each, how early or late the
decision reaches the delay line) and what each window read around it, e.g.::

    STREET_ADDRESS 83.00-84.13 s 'Church': 100% heard (compute 0.5 s)
      clear [82.78, 85.00) by window 56 [79.32, 85.50) s: span +3.68 s from its start, ...
        read 'We move to 8 [-church] [lane,] last spring.' -> nothing

Deterministic for a given machine (Whisper greedy decoding); no Django needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._pii_corpus import Span, build, espeak_available  # noqa: E402
from streams.media.asr import Word  # noqa: E402
from streams.media.items import BLOCK_SAMPLES, SAMPLE_RATE, AudioChunk  # noqa: E402
from streams.media.pii import PiiSpan  # noqa: E402
from streams.media.pii_analysis import AnalysisOptions, PiiAnalyser  # noqa: E402
from streams.media.timeline import DecisionTimeline  # noqa: E402

GRID = SAMPLE_RATE // 100
"""Release replay resolution: 10 ms, in samples."""


@dataclass(frozen=True, slots=True)
class Window:
    """One analysed window: its ticks, the words read and the entities found in it."""

    start: int
    end: int
    words: list[Word]
    spans: list[PiiSpan]


@dataclass(frozen=True, slots=True)
class Replay:
    """One configuration's decisions, stamped in content time (48 kHz ticks)."""

    runs: int
    log: list[tuple[int, int, str, int]]  # (start, end, verdict, content tick posted)
    words: list[tuple[int, int]]
    windows: list[Window]
    log_window: list[int]  # index in ``windows`` of the run that posted each log entry


class _Recorder:
    """Wraps the ASR and the detector to keep what each window read and found."""

    def __init__(self, asr: object, pii: object) -> None:
        self.asr, self.pii = asr, pii
        self.name = str(getattr(asr, "name", "asr"))
        self.windows: list[Window] = []

    def transcribe(self, samples: np.ndarray, pts: int) -> list[Word]:
        words = self.asr.transcribe(samples, pts)  # type: ignore[attr-defined]
        self.windows.append(Window(pts, pts + len(samples), words, []))
        return words

    def find(self, words: list[Word]) -> list[PiiSpan]:
        spans = self.pii.find(words)  # type: ignore[attr-defined]
        self.windows[-1].spans.extend(spans)
        return spans


def analyse(samples: np.ndarray, options: AnalysisOptions, asr: object, pii: object) -> Replay:
    """Feed ``samples`` (48 kHz mono float32) block by block; stamp each decision."""
    rec = _Recorder(asr, pii)
    analyser = PiiAnalyser(rec, rec, DecisionTimeline(), options=options)
    stamps: list[int] = []
    owner: list[int] = []
    for i in range(len(samples) // BLOCK_SAMPLES):
        block = samples[i * BLOCK_SAMPLES : (i + 1) * BLOCK_SAMPLES]
        analyser.push(AudioChunk(block.astype(np.float32), i * BLOCK_SAMPLES, 0.0))
        new = len(analyser.log) - len(stamps)
        stamps += [i * BLOCK_SAMPLES + BLOCK_SAMPLES] * new
        owner += [len(rec.windows) - 1] * new
    analyser.finish()
    new = len(analyser.log) - len(stamps)
    stamps += [len(samples)] * new
    owner += [len(rec.windows) - 1] * new
    log = [(r.start, r.end, r.verdict, at) for r, at in zip(analyser.log, stamps, strict=True)]
    words = [(w.word.start, w.word.end) for w in analyser.transcript]
    return Replay(analyser.runs, log, words, rec.windows, owner)


def figures(
    replay: Replay, spans: list[tuple[int, int]], n: int, delay_s: float, computes: list[float]
) -> dict:
    """Cleared-first share, content decision lag and release figures of one replay."""
    cleared_first = []
    for a, b in spans:
        first = np.zeros(b - a, np.int8)  # 0 undecided, 1 clear first, 2 redact first
        redacted = np.zeros(b - a, bool)
        for start, end, verdict, _ in replay.log:
            lo, hi = max(a, start), min(b, end)
            if hi > lo:
                seg = first[lo - a : hi - a]
                seg[seg == 0] = 1 if verdict == "clear" else 2
                if verdict != "clear":
                    redacted[lo - a : hi - a] = True
        cleared_first.append(float(((first == 1) & redacted).mean()))
    lags = []
    for ws, we in replay.words:
        hits = [
            at
            for start, end, verdict, at in replay.log
            if (end >= we if verdict == "clear" else start < we and end > ws)
        ]
        if hits:
            lags.append((min(hits) - we) / SAMPLE_RATE)
    grid = np.arange(0, n, GRID)
    pii = np.zeros(len(grid), bool)
    for a, b in spans:
        pii[(grid >= a) & (grid < b)] = True
    first_clear = np.full(len(grid), np.inf)
    first_redact = np.full(len(grid), np.inf)
    for start, end, verdict, at in replay.log:
        mask = (grid >= start) & (grid < end)
        target = first_clear if verdict == "clear" else first_redact
        target[mask] = np.minimum(target[mask], at)
    release = {}
    for compute in computes:
        # A decision posted at content tick `at` arrives compute s later; a sample at
        # tick t leaves the delay line at t + D.
        due = grid + (delay_s - compute) * SAMPLE_RATE
        hidden = first_redact <= due
        heard = (first_clear <= due) & ~hidden
        release[compute] = (
            1 - float((heard & pii).sum() / pii.sum()),
            float((~hidden & ~heard & ~pii).sum() / (~pii).sum()),
        )
    return {
        "runs": replay.runs,
        "cleared_first": float(np.mean(cleared_first)),
        "lag": np.percentile(lags, [50, 95]) if lags else [float("nan")] * 2,
        "release": release,
    }


def _read(window: Window, a: int, b: int) -> str:
    """What ``window`` read around ``[a, b)``: words from 1.5 s before to 1 s after,
    those mostly inside the span in brackets, then the entities it found there."""
    out = []
    for w in window.words:
        if w.end > a - 3 * SAMPLE_RATE // 2 and w.start < b + SAMPLE_RATE:
            inside = 2 * (min(b, w.end) - max(a, w.start)) >= w.end - w.start
            out.append(f"[{w.text.strip()}]" if inside else w.text.strip())
    found = [f"{s.label}" for s in window.spans if s.start < b and s.end > a]
    return f"'{' '.join(out)}' -> {', '.join(found) or 'nothing'}"


def explain(replay: Replay, spans: list[Span], delay_s: float, compute: float) -> list[str]:
    """Why each leaking span leaks: the window that cleared it first, the one that
    found it, where the span lay in each and what each read (lines to print)."""
    s = float(SAMPLE_RATE)
    lines = []
    for span in spans:
        a, b = span.start, span.end
        grid = np.arange(a - a % GRID + GRID, b, GRID)
        due = grid + (delay_s - compute) * SAMPLE_RATE
        heard = np.zeros(len(grid), bool)
        for i, t in enumerate(grid):
            covers = [e for e in replay.log if e[0] <= t < e[1]]
            clear = min((e[3] for e in covers if e[2] == "clear"), default=np.inf)
            redact = min((e[3] for e in covers if e[2] != "clear"), default=np.inf)
            heard[i] = clear <= due[i] < redact
        if not heard.any():
            continue
        t = int(grid[np.argmax(heard)])
        lines.append(
            f"{span.label} {a / s:.2f}-{b / s:.2f} s {' '.join(span.secrets)!r}: "
            f"{heard.mean():.0%} heard (compute {compute} s)"
        )
        for verdict in ("clear", "redact"):
            hits = [
                (e[3], k)
                for k, e in enumerate(replay.log)
                if e[0] <= t < e[1] and (e[2] == "clear") == (verdict == "clear")
            ]
            if not hits:
                lines.append(f"  never {verdict}ed")
                continue
            at, k = min(hits)
            entry, win = replay.log[k], replay.windows[replay.log_window[k]]
            late = (at + compute * s - (t + delay_s * s)) / s
            lines.append(
                f"  {verdict} [{entry[0] / s:.2f}, {entry[1] / s:.2f}) by window "
                f"{replay.log_window[k]} [{win.start / s:.2f}, {win.end / s:.2f}) s: span "
                f"{(a - win.start) / s:+.2f} s from its start, {(win.end - b) / s:+.2f} s "
                f"before its end; arrives {late:+.2f} s vs release"
            )
            lines.append(f"    read {_read(win, a, b)}")
    return lines


def main() -> int:
    """Parse arguments, build the corpus, replay each configuration, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="1.5:0.5,1.0:0.5,1.5:1.0,1.0:1.0")
    parser.add_argument("--delay", type=float, default=3.0)
    parser.add_argument("--compute", default="0.5,1.0")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="per leaking span (first compute time): which window cleared it, which "
        "found it, and what each read",
    )
    args = parser.parse_args()
    if not espeak_available():
        print("needs Debian espeak-ng", file=sys.stderr)
        return 2
    from streams.media.asr import Transcriber
    from streams.media.pii import PiiDetector
    from streams.media.whisper_model import bundled_base_dir

    computes = [float(c) for c in args.compute.split(",")]
    with tempfile.TemporaryDirectory(prefix="hearth-pii-windows-") as workdir:
        samples, corpus_spans, _ = build(Path(workdir))
    spans = [(s.start, s.end) for s in corpus_spans]
    cache = Path(
        os.environ.get("PII_MODEL_CACHE_DIR", REPO_ROOT / ".venv" / "var" / "hearth-models")
    )
    asr = Transcriber(bundled_base_dir(cache), cpu_threads=len(os.sched_getaffinity(0)))
    pii = PiiDetector()
    head = "| hop s | guard s | runs | cleared first | lag p50 / p95 s |"
    head += "".join(f" recall / clean muted (compute {c} s) |" for c in computes)
    print(f"{len(samples) / SAMPLE_RATE:.0f} s corpus, {len(spans)} PII spans, D = {args.delay} s")
    print(head)
    print("|" + "---:|" * (5 + len(computes)))
    for config in args.configs.split(","):
        hop, guard = (float(x) for x in config.split(":"))
        options = AnalysisOptions(hop_s=hop, guard_s=guard)
        replay = analyse(samples, options, asr, pii)
        got = figures(replay, spans, len(samples), args.delay, computes)
        row = f"| {hop} | {guard} | {got['runs']} | {got['cleared_first']:.3f} | "
        row += f"{got['lag'][0]:.2f} / {got['lag'][1]:.2f} |"
        row += "".join(f" {r:.3f} / {m:.3f} |" for r, m in got["release"].values())
        print(row, flush=True)
        if args.explain:
            print("\n".join(explain(replay, corpus_spans, args.delay, computes[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
