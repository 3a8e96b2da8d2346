"""Live PII windows replayed in content time: how much PII is cleared before it is found.

Usage::

    .venv/bin/python bench/pii_windows.py [--configs 1.5:0.5,1.0:0.5,1.5:1.0] [--delay 3]
                                          [--compute 0.5,1.0]

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

from bench._pii_corpus import build, espeak_available  # noqa: E402
from streams.media.items import BLOCK_SAMPLES, SAMPLE_RATE, AudioChunk  # noqa: E402
from streams.media.pii_analysis import AnalysisOptions, PiiAnalyser  # noqa: E402
from streams.media.timeline import DecisionTimeline  # noqa: E402

GRID = SAMPLE_RATE // 100
"""Release replay resolution: 10 ms, in samples."""


@dataclass(frozen=True, slots=True)
class Replay:
    """One configuration's decisions, stamped in content time (48 kHz ticks)."""

    runs: int
    log: list[tuple[int, int, str, int]]  # (start, end, verdict, content tick posted)
    words: list[tuple[int, int]]


def analyse(samples: np.ndarray, options: AnalysisOptions, asr: object, pii: object) -> Replay:
    """Feed ``samples`` (48 kHz mono float32) block by block; stamp each decision."""
    analyser = PiiAnalyser(asr, pii, DecisionTimeline(), options=options)  # type: ignore[arg-type]
    stamps: list[int] = []
    for i in range(len(samples) // BLOCK_SAMPLES):
        block = samples[i * BLOCK_SAMPLES : (i + 1) * BLOCK_SAMPLES]
        analyser.push(AudioChunk(block.astype(np.float32), i * BLOCK_SAMPLES, 0.0))
        stamps += [i * BLOCK_SAMPLES + BLOCK_SAMPLES] * (len(analyser.log) - len(stamps))
    analyser.finish()
    stamps += [len(samples)] * (len(analyser.log) - len(stamps))
    log = [(r.start, r.end, r.verdict, at) for r, at in zip(analyser.log, stamps, strict=True)]
    words = [(w.word.start, w.word.end) for w in analyser.transcript]
    return Replay(analyser.runs, log, words)


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


def main() -> int:
    """Parse arguments, build the corpus, replay each configuration, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="1.5:0.5,1.0:0.5,1.5:1.0,1.0:1.0")
    parser.add_argument("--delay", type=float, default=3.0)
    parser.add_argument("--compute", default="0.5,1.0")
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
        got = figures(
            analyse(samples, options, asr, pii), spans, len(samples), args.delay, computes
        )
        row = f"| {hop} | {guard} | {got['runs']} | {got['cleared_first']:.3f} | "
        row += f"{got['lag'][0]:.2f} / {got['lag'][1]:.2f} |"
        row += "".join(f" {r:.3f} / {m:.3f} |" for r, m in got["release"].values())
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
