"""``manage.py process_media INPUT OUTPUT``: run the live processing chain over a file."""

from __future__ import annotations

import os
import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError
from numpy.typing import NDArray

from streams.audio import SAMPLE_RATE, AudioDecodeError, load_audio
from streams.processors.base import LIVE_BLOCK_SAMPLES, ProcessorError, process_offline
from streams.processors.factory import audio_chain_build
from streams.quality import align, pesq_wb, si_snr, stoi
from streams.recording import WavRecorder

REFERENCE_MAX_LAG = SAMPLE_RATE // 2
"""Largest delay searched when aligning with ``--reference``: 0.5 s, in samples."""


class Command(BaseCommand):
    """Denoise (or pass through) an audio file with the exact classes of the live path.

    INPUT (any format PyAV decodes) is decoded to 48 kHz mono float32, fed through
    :func:`streams.processors.factory.audio_chain_build` in 960-sample (20 ms) blocks
    like live Opus frames, delay-compensated sample-exact
    (:func:`streams.processors.base.process_offline`) and written to OUTPUT as a
    48 kHz 16-bit PCM mono WAV via :class:`streams.recording.WavRecorder` (an existing
    OUTPUT is replaced). ``--reference CLEAN`` also prints SI-SNR, PESQ (wide-band)
    and STOI of input and output against a clean recording, after alignment.
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
        samples = _load(source, "input")

        try:
            chain = audio_chain_build(denoise=denoise)
        except ProcessorError as exc:
            raise CommandError(f"cannot build the processing chain: {exc}") from exc
        try:
            started = time.perf_counter()
            processed, latency = process_offline(chain, samples, block_size=LIVE_BLOCK_SAMPLES)
            elapsed = time.perf_counter() - started
        except ProcessorError as exc:
            raise CommandError(f"processing failed: {exc}") from exc
        finally:
            chain.close()

        try:
            with WavRecorder(target, SAMPLE_RATE, overwrite=True) as recorder:
                recorder.write(processed)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot write output {target}: {exc}") from exc

        duration = len(samples) / SAMPLE_RATE
        clipped = int(np.count_nonzero(np.abs(processed) > 1.0))
        self.stdout.write(
            f"{source} -> {target}: {duration:.2f} s, chain {chain.name}, "
            f"RTF {elapsed / duration:.3f}, latency compensated {latency} samples "
            f"({latency / SAMPLE_RATE * 1000:.1f} ms), clipped {clipped} samples"
        )
        if reference is not None:
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
