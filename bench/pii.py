"""Benchmark live PII bleeping: CPU per audio second, decision delay, concurrent streams.

Usage::

    .venv/bin/python bench/pii.py [--streams 1,2] [--seconds 60] [--delay 3]

Material: the spoken-PII corpus of the tests (``bench/_pii_corpus.py``: espeak-ng
sentences, some in real noise, then JFK), cut to ``--seconds``, with its
ground-truth PII spans. For each N, a fresh subprocess runs N broadcasts at once,
each fed at real-time pace (one 20 ms block every 20 ms, by an absolute schedule) the
way the live path would: DeepFilterNet3 on the block (the processed 48 kHz stream),
then :class:`~streams.media.pii_analysis.ThreadedPiiAnalyser` (its own thread, live
windows: 1.5 s hop, 0.5 s guard, 3 s context) posting to a
:class:`~streams.media.timeline.DecisionTimeline`. One Whisper base model (int8,
CTranslate2) is shared by the N streams. The baseline, measured in the same run,
is the same N streams with denoising only (today's live path).

Reported per N:

* CPU s / audio s / stream: process CPU time (``time.process_time``) / (N * S), and
  the same less the baseline's: the ASR+PII cost alone (its real-time factor on one
  core; the windows re-read 3 s of context, so this is ~2-3x one pass over the audio).
* decision p95 / max: for every transcribed word, wall time from its end being fed
  to the first decision (clear or redact) covering it: the delay ``D`` actually
  needed.
* With ``D = --delay`` s, a replay of the decisions in the order they were posted
  against a delay line releasing each block ``D`` after it was fed: PII recall at
  release (share of ground-truth PII samples bleeped or muted, i.e. not let through),
  and the share of non-PII audio muted because it was still undecided (the cost of
  falling behind). ``keeps up`` = the analysis backlog at the end of the feed < D.

No Django needed. Shared test audio: ``$HEARTH_SHARED_DIR/data`` or ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._pii_corpus import build, espeak_available  # noqa: E402
from bench.denoise import cpu_model  # noqa: E402
from streams.audio import SAMPLE_RATE  # noqa: E402
from streams.media.items import BLOCK_SAMPLES, AudioChunk  # noqa: E402
from streams.media.timeline import Decision, DecisionTimeline, Verdict  # noqa: E402

KINDS = ("denoise", "denoise+pii")


def make_material(seconds: float, workdir: Path) -> Path:
    """Save the corpus (cut to ``seconds``) and its spans as ``material.npz``."""
    samples, spans, _ = build(workdir)
    n = min(len(samples), int(seconds * SAMPLE_RATE)) // BLOCK_SAMPLES * BLOCK_SAMPLES
    table = np.array([(s.start, s.end) for s in spans if s.end <= n], dtype=np.int64)
    path = workdir / "material.npz"
    np.savez(path, samples=samples[:n], spans=table.reshape(-1, 2))
    return path


def stream(index: int, blocks: np.ndarray, start: float, pii: bool, shared: dict) -> dict:
    """Feed one broadcast at real-time pace; return its timing records."""
    from streams.media.pii_analysis import PiiAnalyser, ThreadedPiiAnalyser
    from streams.processors.factory import audio_chain_build

    chain = audio_chain_build(denoise=True)
    timeline = DecisionTimeline()
    threaded = None
    if pii:
        analyser = PiiAnalyser(shared["asr"], shared["pii"], timeline)
        threaded = ThreadedPiiAnalyser(analyser)
    fed: list[float] = []
    late = 0
    for i, block in enumerate(blocks):
        due = start + (i + 1) * BLOCK_SAMPLES / SAMPLE_RATE  # the block has been "spoken"
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        elif wait < -0.1:
            late += 1
        out = chain.process(block)
        now = time.monotonic()
        fed.append(now)
        if threaded is not None:
            # Content pts less the denoiser's delay, as ProcessorStage stamps it.
            pts = i * BLOCK_SAMPLES - chain.latency_samples
            threaded.submit(AudioChunk(np.asarray(out, np.float32), pts, now))
    feed_end = time.monotonic()
    chain.close()
    result: dict = {"fed": fed, "late": late, "latency": chain.latency_samples}
    if threaded is not None:
        threaded.close()
        a = threaded.analyser
        result.update(
            backlog_s=time.monotonic() - feed_end,
            log=[(r.start, r.end, r.verdict, r.at) for r in a.log],
            decisions=[(d.start, d.end) for d in a.decisions],
            words=[(w.word.start, w.word.end) for w in a.transcript],
            dropped=threaded.dropped,
            failed=threaded.failed,
        )
    return result


def fed_at(tick: int, fed: list[float], latency: int) -> float:
    """Wall time at which content tick ``tick`` had been fed (after the denoiser)."""
    block = min(len(fed) - 1, max(0, (tick + latency) // BLOCK_SAMPLES))
    return fed[block]


def decision_delays(result: dict) -> list[float]:
    """Seconds from each word's end being fed to the first decision covering it."""
    delays = []
    for start, end in result["words"]:
        # Clears are posted as contiguous ranges from the start: the first reaching the
        # word's end decides it; a redaction over it decides it too.
        times = [at for _, b, v, at in result["log"] if v == "clear" and b >= end]
        times += [at for a, b, v, at in result["log"] if v == "redact" and a < end and b > start]
        if times:
            delays.append(min(times) - fed_at(end, result["fed"], result["latency"]))
    return delays


def replay(result: dict, spans: np.ndarray, delay_s: float) -> tuple[float, float]:
    """PII recall at release and share of non-PII audio muted, with a delay line of D."""
    log = sorted(result["log"], key=lambda r: r[3])
    timeline = DecisionTimeline()
    pii = np.zeros(len(result["fed"]) * BLOCK_SAMPLES, dtype=bool)
    for a, b in spans:
        pii[a:b] = True
    caught = muted_clean = 0
    posted = 0
    for i, fed in enumerate(result["fed"]):
        release = fed + delay_s
        while posted < len(log) and log[posted][3] <= release:
            a, b, verdict, _ = log[posted]
            if verdict == "clear":
                timeline.clear(start=a, end=b)
            else:
                timeline.redact(Decision(a, b, "PII"))
            posted += 1
        lo = i * BLOCK_SAMPLES - result["latency"]
        for seg in timeline.resolve(start=lo, end=lo + BLOCK_SAMPLES):
            a, b = max(0, seg.start), max(0, seg.end)
            hidden = seg.verdict is not Verdict.CLEAR
            caught += int(pii[a:b].sum()) if hidden else 0
            muted_clean += int((~pii[a:b]).sum()) if seg.verdict is Verdict.UNKNOWN else 0
    recall = caught / max(1, int(pii.sum()))
    return recall, muted_clean / max(1, int((~pii).sum()))


def worker(kind: str, streams: int, material: Path, delay_s: float) -> dict:
    """One measurement in this (fresh) process."""
    data = np.load(material)
    samples, spans = data["samples"], data["spans"]
    blocks = samples.reshape(-1, BLOCK_SAMPLES)
    seconds = samples.size / SAMPLE_RATE
    shared: dict = {}
    init_s = 0.0
    if kind == "denoise+pii":
        from streams.media.asr import Transcriber
        from streams.media.pii import PiiDetector
        from streams.media.whisper_model import bundled_base_dir

        started = time.perf_counter()
        cache = Path(sys.prefix) / "var" / "hearth-models"
        shared["asr"] = Transcriber(
            bundled_base_dir(cache), cpu_threads=len(os.sched_getaffinity(0))
        )
        shared["pii"] = PiiDetector()
        init_s = time.perf_counter() - started
    results: list[dict] = [{}] * streams
    start = time.monotonic() + 0.5
    cpu0 = time.process_time()

    def run(i: int) -> None:
        results[i] = stream(i, blocks, start, kind == "denoise+pii", shared)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu = time.process_time() - cpu0
    out = {
        "cpu_per_audio_s": cpu / (streams * seconds),
        "late_blocks": sum(r["late"] for r in results),
        "init_s": init_s,
        "seconds": seconds,
    }
    if kind == "denoise+pii":
        delays = [d for r in results for d in decision_delays(r)]
        replays = [replay(r, spans, delay_s) for r in results]
        out.update(
            decision_p50_s=float(np.percentile(delays, 50)),
            decision_p95_s=float(np.percentile(delays, 95)),
            decision_max_s=float(np.max(delays)),
            words=len(delays),
            recall_at_release=min(r for r, _ in replays),
            muted_clean=max(m for _, m in replays),
            backlog_s=max(r["backlog_s"] for r in results),
            dropped=sum(r["dropped"] for r in results),
            failed=[r["failed"] for r in results if r["failed"]],
        )
    return out


def measure(kind: str, streams: int, material: Path, delay_s: float) -> dict:
    """Run :func:`worker` in a fresh subprocess."""
    result = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(streams), str(material), str(delay_s)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per stream")
    parser.add_argument("--streams", default="1,2", help="comma-separated N")
    parser.add_argument("--delay", type=float, default=3.0, help="delay line D, seconds")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, n, path, delay = args.worker
        print(json.dumps(worker(kind, int(n), Path(path), float(delay))))
        return
    if not espeak_available():
        sys.exit("bench/pii.py needs Debian espeak-ng for its corpus")

    counts = [int(n) for n in args.streams.split(",") if n.strip()]
    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        material = make_material(args.seconds, Path(tmp))
        results = {(k, n): measure(k, n, material, args.delay) for n in counts for k in KINDS}
    seconds = results[(KINDS[0], counts[0])]["seconds"]
    load = os.getloadavg()[0]
    print(
        f"PII bench: {seconds:.0f} s of the spoken-PII corpus per stream, fed in real time "
        f"(20 ms blocks); Whisper base int8 shared by the N streams; D = {args.delay:g} s; "
        f"{cpus} CPUs ({cpu_model()}), load average {load:.1f}, Python "
        f"{platform.python_version()}\n"
    )
    print(
        "| N | path | CPU s / audio s / stream | ASR+PII CPU s / audio s | decision p50 / p95 / "
        "max s | PII recall at release | clean audio muted | backlog s | keeps up |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|:---:|")
    for n in counts:
        base = results[("denoise", n)]
        print(
            f"| {n} | denoise (baseline) | {base['cpu_per_audio_s']:.3f} | - | - | - | - | - | - |"
        )
        r = results[("denoise+pii", n)]
        keeps_up = r["backlog_s"] < args.delay and not r["failed"] and not r["dropped"]
        print(
            f"| {n} | denoise + PII | {r['cpu_per_audio_s']:.3f} | "
            f"{r['cpu_per_audio_s'] - base['cpu_per_audio_s']:.3f} | "
            f"{r['decision_p50_s']:.2f} / {r['decision_p95_s']:.2f} / {r['decision_max_s']:.2f} | "
            f"{r['recall_at_release']:.3f} | {r['muted_clean']:.3f} | {r['backlog_s']:.2f} | "
            f"{'yes' if keeps_up else 'NO'} |"
        )
    init = results[("denoise+pii", counts[0])]["init_s"]
    print(f"\nModel load (verify + Whisper + spaCy): {init:.1f} s per process.")


if __name__ == "__main__":
    main()
