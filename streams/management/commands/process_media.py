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
from streams.media.items import Event
from streams.media.pii import MASKS
from streams.media.pii_analysis import (
    PiiAnalyser,
    PiiAnalysisStage,
    merged_decisions,
    transcript_vtt,
)
from streams.media.sinks import CollectSink, RecorderSink
from streams.media.stage import ProcessorStage, Stage
from streams.media.timeline import DecisionTimeline, DelayLine, Redactor, bleep, mute
from streams.media.whisper_model import ModelIntegrityError
from streams.media.workers import Workers
from streams.processors.base import ProcessorError
from streams.processors.factory import audio_chain_build
from streams.quality import align, pesq_wb, si_snr, stoi
from streams.recording import WavRecorder

FILE_DEADLINE_S = 30.0
"""Longest one block's processing may take over a file before the run fails."""

REFERENCE_MAX_LAG = SAMPLE_RATE // 2
"""Largest delay searched when aligning with ``--reference``: 0.5 s, in samples."""

FILE_PII_DELAY_S = 20.0
"""Content-time delay line over a file with ``--bleep-pii``: the analysis runs in line
(synchronously), so decisions trail the audio by a window (~2-3 s) or a held digit
run; what is still undecided this far behind is muted, as live."""


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

    ``--bleep-pii`` adds the PII stages after denoising: speech-to-text + PII analysis
    (:class:`~streams.media.pii_analysis.PiiAnalysisStage`) posting to a
    :class:`~streams.media.timeline.DecisionTimeline`, then a
    :class:`~streams.media.timeline.DelayLine` that bleeps (or, with ``--redact mute``,
    silences) each PII range and mutes anything left undecided. The entities found are
    printed (label, time range, confidence; never the words); ``--transcript OUT.vtt``
    writes the transcript with each entity masked (e.g. ``[phone number]``).
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
        parser.add_argument(
            "--bleep-pii",
            action="store_true",
            help="find spoken personal information (Whisper + Presidio) and bleep it",
        )
        parser.add_argument(
            "--redact",
            choices=("bleep", "mute"),
            default="bleep",
            help="with --bleep-pii: a 1 kHz bleep (default) or silence over PII",
        )
        parser.add_argument(
            "--transcript",
            type=Path,
            metavar="OUT.vtt",
            help="with --bleep-pii: write the redacted transcript as WebVTT",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        source: Path = options["input"]
        target: Path = options["output"]
        reference_path: Path | None = options["reference"]
        denoise = not options["no_denoise"]
        bleep_pii: bool = options["bleep_pii"]
        transcript_path: Path | None = options["transcript"]

        if not source.is_file():
            raise CommandError(f"input file not found: {source}")
        if transcript_path is not None and not bleep_pii:
            raise CommandError("--transcript needs --bleep-pii")
        _check_writable(target)
        if transcript_path is not None:
            _check_writable(transcript_path)
        analyser = _pii_analyser(DecisionTimeline()) if bleep_pii else None
        reference = _load(reference_path, "reference") if reference_path else None
        samples = _load(source, "input") if reference is not None else None

        try:
            chain = audio_chain_build(denoise=denoise)
        except ProcessorError as exc:
            raise CommandError(f"cannot build the processing chain: {exc}") from exc
        stage = ProcessorStage(chain)
        latency = stage.latency_ticks()
        stages: list[Stage] = [stage]
        if analyser is not None:
            redactor: Redactor = bleep() if options["redact"] == "bleep" else mute
            delay = round(FILE_PII_DELAY_S * SAMPLE_RATE)
            stages += [
                PiiAnalysisStage(analyser),
                DelayLine(timeline=analyser.timeline, delay_ticks=delay, redactor=redactor),
            ]
        events: list[Event] = []
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
            Graph(stages=stages, sinks=sinks),
            file_source,
            workers=workers,
            name="file",
            deadline_s=FILE_DEADLINE_S,
            max_lag_s=None,  # a file is not real time: never skip a stage
            on_event=events.append,
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
        if analyser is not None:
            how = "bleeped" if options["redact"] == "bleep" else "muted"
            self._report_pii(analyser, events, how)
            if transcript_path is not None:
                transcript_path.write_text(transcript_vtt(analyser.transcript))
                self.stdout.write(f"redacted transcript: {transcript_path}")

    def _report_pii(self, analyser: PiiAnalyser, events: list[Event], how: str) -> None:
        """Print each entity found (label, range, confidence) and the redacted totals."""
        entities = merged_decisions(analyser.decisions)
        for d in entities:
            self.stdout.write(
                f"pii {d.label} {MASKS.get(d.label, '[redacted]')} "
                f"{max(0, d.start) / SAMPLE_RATE:.2f}-{d.end / SAMPLE_RATE:.2f} s "
                f"(confidence {d.confidence:.2f})"
            )
        seconds = {"redact": 0.0, "unknown": 0.0}
        for event in events:
            if event.kind == "redact":
                verdict = str(event.data.get("verdict"))
                seconds[verdict] = seconds.get(verdict, 0.0) + event.end_s - event.start_s
        self.stdout.write(
            f"PII: {len(entities)} entities, {seconds['redact']:.2f} s {how}, "
            f"{seconds['unknown']:.2f} s muted undecided, {analyser.runs} ASR windows, "
            f"{len(analyser.transcript)} words"
        )


def _pii_analyser(timeline: DecisionTimeline) -> PiiAnalyser:
    """The configured analyser (model verified, then loaded), or a CommandError."""
    from streams.pii_setup import build_analyser

    try:
        return build_analyser(timeline, live=False)
    except ModelIntegrityError as exc:
        raise CommandError(f"speech-to-text model refused: {exc}") from exc
    except (OSError, RuntimeError) as exc:
        raise CommandError(f"cannot load the PII analysis: {exc}") from exc


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
