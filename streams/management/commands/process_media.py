"""``manage.py process_media INPUT OUTPUT``: run the live media graph over a file."""

from __future__ import annotations

import asyncio
import os
import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError
from numpy.typing import NDArray

from streams.audio import SAMPLE_RATE, AudioDecodeError, load_audio
from streams.media.graph import FileSource, Graph, GraphRunner, Sink
from streams.media.sinks import CollectSink, RecorderSink
from streams.media.stage import ProcessorStage
from streams.media.workers import Workers
from streams.processors.base import ProcessorError
from streams.processors.factory import audio_chain_build
from streams.quality import align, pesq_wb, si_snr, stoi
from streams.recording import WavRecorder

FILE_DEADLINE_S = 30.0
"""Longest one block's processing may take over a file before the run fails."""

REFERENCE_MAX_LAG = SAMPLE_RATE // 2
"""Largest delay searched when aligning with ``--reference``: 0.5 s, in samples."""


class Command(BaseCommand):
    """Denoise (or pass through) an audio file with the live path's media graph.

    The graph a broadcast runs (:class:`streams.media.graph.Graph` with a
    :class:`~streams.media.stage.ProcessorStage` around
    :func:`streams.processors.factory.audio_chain_build`, and a
    :class:`~streams.media.sinks.RecorderSink`) is driven by the same
    :class:`~streams.media.graph.GraphRunner` from a
    :class:`~streams.media.graph.FileSource` instead of a WebRTC track: INPUT (any
    format PyAV decodes) becomes 48 kHz mono float32 in 960-sample (20 ms) blocks, the
    processors' delay is compensated sample-exact by the pts (the runner trims to the
    input's range), and OUTPUT is a 48 kHz 16-bit PCM mono WAV (replaced if present).
    ``--reference CLEAN`` also prints SI-SNR, PESQ (wide-band) and STOI of input and
    output against a clean recording, after alignment.
    """

    help = (
        "Process INPUT with the live audio chain (DeepFilterNet3 denoising unless "
        "--no-denoise) and write OUTPUT as 48 kHz 16-bit mono WAV, delay-compensated."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("input", type=Path, help="audio file in any format FFmpeg decodes")
        parser.add_argument("output", type=Path, help="WAV file to write (replaced if present)")
        parser.add_argument(
            "--no-denoise",
            action="store_true",
            help="pass the audio through unchanged (the live chain with denoising off)",
        )
        parser.add_argument(
            "--reference",
            type=Path,
            metavar="CLEAN",
            help="clean recording of the same speech: print SI-SNR/PESQ/STOI against it",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        source: Path = options["input"]
        target: Path = options["output"]
        reference_path: Path | None = options["reference"]
        denoise = not options["no_denoise"]

        if not source.is_file():
            raise CommandError(f"input file not found: {source}")
        _check_writable(target)
        reference = _load(reference_path, "reference") if reference_path else None
        samples = _load(source, "input") if reference is not None else None

        try:
            chain = audio_chain_build(denoise=denoise)
        except ProcessorError as exc:
            raise CommandError(f"cannot build the processing chain: {exc}") from exc
        stage = ProcessorStage(chain)
        latency = stage.latency_ticks()
        file_source = FileSource(source)
        # Written beside OUTPUT and renamed over it only on success: a failed run
        # leaves an existing OUTPUT as it was.
        partial = target.with_name(f".{target.name}.partial")
        try:
            file_source.open()
            recorder = WavRecorder(partial, SAMPLE_RATE, overwrite=True)
        except AudioDecodeError as exc:
            chain.close()
            raise CommandError(f"cannot read input: {exc}") from exc
        except (OSError, ValueError) as exc:
            chain.close()
            file_source.close()
            raise CommandError(f"cannot write output {target}: {exc}") from exc
        workers = Workers(load_threads=1, io_threads=1, encode_threads=1)
        recorder_sink = RecorderSink(recorder, workers.io)
        collect = CollectSink()
        sinks: list[Sink] = [recorder_sink] + ([collect] if reference is not None else [])
        runner = GraphRunner(
            Graph(stages=[stage], sinks=sinks),
            file_source,
            workers=workers,
            name="file",
            deadline_s=FILE_DEADLINE_S,
            max_lag_s=None,  # a file is not real time: never skip a stage
        )
        try:
            started = time.perf_counter()
            metrics = asyncio.run(runner.run())
            elapsed = time.perf_counter() - started
        finally:
            file_source.close()
            runner.stages_close()
            workers.shutdown()
        info = recorder_sink.info
        problem = (
            (f"cannot read input: {runner.source_error}" if runner.source_error else "")
            or (f"processing failed: {metrics.failed}" if metrics.failed else "")
            or ("" if info is not None and not recorder_sink.write_errors else "write failed")
            or ("" if info.duration_s > 0 else f"cannot read input: {source}: no samples")
        )
        if problem:
            partial.unlink(missing_ok=True)
            raise CommandError(problem)
        os.replace(partial, target)

        duration = info.duration_s
        processed = collect.samples
        clipped = recorder_sink.clipped
        self.stdout.write(
            f"{source} -> {target}: {duration:.2f} s, chain {chain.name}, "
            f"RTF {elapsed / duration:.3f}, latency compensated {latency} samples "
            f"({latency / SAMPLE_RATE * 1000:.1f} ms), clipped {clipped} samples"
        )
        if reference is not None and samples is not None:
            for label, signal in (("input", samples), ("output", processed)):
                self.stdout.write(_quality_line(label, signal, reference))


def _check_writable(target: Path) -> None:
    """Fail early, before processing, when OUTPUT cannot be created."""
    if target.is_dir():
        raise CommandError(f"output is a directory: {target}")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CommandError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise CommandError(f"output is not writable: {target}")


def _load(path: Path, label: str) -> NDArray[np.float32]:
    """Decode ``path`` to 48 kHz mono float32 or raise a CommandError naming ``label``."""
    try:
        return load_audio(path)
    except AudioDecodeError as exc:
        raise CommandError(f"cannot read {label}: {exc}") from exc


def _quality_line(label: str, signal: NDArray[np.float32], reference: NDArray[np.float32]) -> str:
    """One line with SI-SNR (dB), PESQ-WB (MOS-LQO) and STOI of ``signal`` vs reference."""
    estimate, clean, lag = align(signal, reference, REFERENCE_MAX_LAG)
    return (
        f"{label}: SI-SNR {si_snr(estimate, clean):.2f} dB, "
        f"PESQ-WB {pesq_wb(estimate, clean, SAMPLE_RATE):.2f}, "
        f"STOI {stoi(estimate, clean, SAMPLE_RATE):.3f} (lag {lag} samples)"
    )
