"""Benchmark DeepFilterNet3 denoising for N concurrent streams, against a pass-through.

Usage::

    .venv/bin/python bench/denoise.py [--seconds S] [--streams 1,4,8,16]

For each chain (``passthrough``, ``denoise``, both built by the live path's
``audio_chain_build``) and each N, a fresh subprocess creates N chains and runs them
concurrently in a ``ThreadPoolExecutor(max_workers=N)``, each over S seconds of the
0 dB noisy JFK mix in 960-sample (20 ms) frames, as fast as possible. Reported:

* CPU s per audio s per stream: process CPU time (``time.process_time``) / (N * S);
  the real-time factor (RTF) one stream costs on one core.
* wall RTF: wall time / S for all N streams together; real time holds when < 1.
* p99 frame: 99th percentile of the wall time of one ``process`` call (20 ms frame).
* RSS per stream: (peak RSS of the run - peak RSS of an identical process that
  imported everything, loaded the library and the audio, and created no chain) / N,
  from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``.
* init: wall time to create one chain (model load).

No Django needed. Shared test audio: ``$HEARTH_SHARED_DIR/data`` or ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._common import shared_data_dir  # noqa: E402
from streams.audio import SAMPLE_RATE, load_audio, make_noisy_mix  # noqa: E402
from streams.processors.base import LIVE_BLOCK_SAMPLES, AudioProcessor  # noqa: E402
from streams.processors.denoise import load_library  # noqa: E402
from streams.processors.factory import audio_chain_build  # noqa: E402

KINDS = ("passthrough", "denoise")


def make_material(seconds: float, path: Path) -> None:
    """Save S seconds of the 0 dB noisy JFK mix (looped) as float32 .npy."""
    data = shared_data_dir()
    clean = load_audio(data / "jfk.flac")
    noise = load_audio(data / "noise_freesound_573577.wav")
    mix = make_noisy_mix(clean, noise, 0.0)
    n = int(seconds * SAMPLE_RATE) // LIVE_BLOCK_SAMPLES * LIVE_BLOCK_SAMPLES
    np.save(path, np.resize(mix, n).astype(np.float32))


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else ``platform.machine()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_stream(chain: AudioProcessor, frames: np.ndarray) -> list[float]:
    """Process every frame through ``chain``; return per-frame wall times in seconds."""
    times = []
    for frame in frames:
        started = time.perf_counter()
        chain.process(frame)
        times.append(time.perf_counter() - started)
    return times


def worker(kind: str, streams: int, material: Path) -> dict[str, float]:
    """One measurement in this (fresh) process; returns the figures as a dict."""
    load_library()
    frames = np.load(material).reshape(-1, LIVE_BLOCK_SAMPLES)
    seconds = frames.size / SAMPLE_RATE
    if streams == 0:
        return {"peak_rss_mib": peak_rss_mib()}
    started = time.perf_counter()
    chains = [audio_chain_build(denoise=kind == "denoise") for _ in range(streams)]
    init_s = (time.perf_counter() - started) / streams
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=streams) as pool:
        times = list(pool.map(run_stream, chains, [frames] * streams))
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    for chain in chains:
        chain.close()
    frame_times = np.concatenate([np.asarray(t) for t in times])
    return {
        "cpu_per_audio_s": cpu / (streams * seconds),
        "wall_rtf": wall / seconds,
        "p99_frame_ms": float(np.percentile(frame_times, 99) * 1000),
        "peak_rss_mib": peak_rss_mib(),
        "init_s": init_s,
    }


def measure(kind: str, streams: int, material: Path) -> dict[str, float]:
    """Run :func:`worker` in a fresh subprocess so its peak RSS is its own."""
    result = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(streams), str(material)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=11.0, help="audio per stream")
    parser.add_argument("--streams", default="1,4,8,16", help="comma-separated N")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "N", "NPY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, n, path = args.worker
        print(json.dumps(worker(kind, int(n), Path(path))))
        return

    counts = [int(n) for n in args.streams.split(",") if n.strip()]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        material = Path(tmp) / "mix.npy"
        make_material(args.seconds, material)
        seconds = np.load(material).size / SAMPLE_RATE
        base_rss = measure("none", 0, material)["peak_rss_mib"]
        results = {(k, n): measure(k, n, material) for k in KINDS for n in counts}

    print(
        f"DeepFilterNet3 bench: {seconds:.2f} s of 0 dB noisy JFK per stream, 960-sample "
        f"frames, ThreadPoolExecutor(max_workers=N); {cpus} CPUs "
        f"({cpu_model()}), Python {platform.python_version()}; "
        f"baseline peak RSS {base_rss:.0f} MiB\n"
    )
    print(
        "| N | chain | CPU s / audio s / stream | wall RTF (all N) | real time "
        "| p99 frame ms | RSS / stream MiB | init s / stream |"
    )
    print("|---:|---|---:|---:|:---:|---:|---:|---:|")
    for n in counts:
        for kind in KINDS:
            r = results[(kind, n)]
            print(
                f"| {n} | {kind} | {r['cpu_per_audio_s']:.4f} | {r['wall_rtf']:.4f} | "
                f"{'yes' if r['wall_rtf'] < 1 else 'NO'} | {r['p99_frame_ms']:.2f} | "
                f"{(r['peak_rss_mib'] - base_rss) / n:.1f} | {r['init_s']:.3f} |"
            )
    print("\n| N | CPU ratio denoise / passthrough | wall RTF ratio | real time (denoise) |")
    print("|---:|---:|---:|:---:|")
    for n in counts:
        d, p = results[("denoise", n)], results[("passthrough", n)]
        print(
            f"| {n} | {d['cpu_per_audio_s'] / p['cpu_per_audio_s']:.0f}x | "
            f"{d['wall_rtf'] / p['wall_rtf']:.0f}x | "
            f"{'yes' if d['wall_rtf'] < 1 else 'NO'} |"
        )
    all_real_time = all(results[("denoise", n)]["wall_rtf"] < 1 for n in counts)
    print(
        f"\nReal time holds for every N with denoising: {'yes' if all_real_time else 'no'} "
        "(wall time per audio second < 1 for all streams together)."
    )


if __name__ == "__main__":
    main()
