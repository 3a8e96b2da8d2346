"""``manage.py process_media INPUT OUTPUT``: run the live media graph over a file.

Audio files → denoised (optionally PII-bleeped) WAV; video files → MP4 (H.264 + AAC)
with faces and licence plates blurred, the audio through the same audio chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from argparse import ArgumentParser, BooleanOptionalAction
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from numpy.typing import NDArray

from streams.audio import SAMPLE_RATE, AudioDecodeError, load_audio
from streams.media.detectors import (
    FACE_DETECTORS,
    DetectorUnavailable,
    HaarPlateDetector,
    face_detector_build,
)
from streams.media.graph import FileSource, Graph, GraphRunner, Sink
from streams.media.items import Event
from streams.media.metrics import MediaMetrics
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
from streams.media.video import redaction_stages
from streams.media.video_io import (
    AudioWriterSink,
    Mp4Writer,
    VideoDecodeError,
    VideoEncodeError,
    VideoFileSource,
    VideoInfo,
    VideoWriterSink,
    probe_video,
)
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
        "--no-denoise) and write OUTPUT as 48 kHz 16-bit mono WAV, delay-compensated. "
        "A video INPUT becomes an MP4 (H.264 + AAC) with faces and licence plates "
        "blurred (fail-closed: a frame whose detection failed or is stale is blurred "
        "whole)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "input", type=Path, help="audio or video file in any format FFmpeg decodes"
        )
        parser.add_argument(
            "output",
            type=Path,
            help="WAV (audio input) or MP4 (video input) file to write (replaced if present)",
        )
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
        video = parser.add_argument_group("video input")
        video.add_argument(
            "--blur-faces",
            action=BooleanOptionalAction,
            default=True,
            help="blur faces (default: on)",
        )
        video.add_argument(
            "--blur-plates",
            action=BooleanOptionalAction,
            default=True,
            help="blur licence plates (default: on)",
        )
        video.add_argument(
            "--face-detector",
            choices=FACE_DETECTORS,
            default="auto",
            help="auto: YuNet when its verified model is in HEARTH_MODEL_DIR, else CenterFace",
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
        try:
            video_info = probe_video(source)
        except VideoDecodeError:
            video_info = None  # not a container FFmpeg opens: the audio path says why
        if video_info is not None:
            if reference_path is not None:
                raise CommandError("--reference is for audio files, not video")
            self._handle_video(source, target, video_info, options)
            return
        analyser = _pii_analyser(DecisionTimeline()) if bleep_pii else None
        reference = _load(reference_path, "reference") if reference_path else None
        samples = _load(source, "input") if reference is not None else None

        stages = _audio_stages(denoise=denoise, analyser=analyser, redact=options["redact"])
        chain = stages[0].processor  # type: ignore[attr-defined]
        latency = stages[0].latency_ticks()
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

    def _handle_video(
        self, source: Path, target: Path, info: VideoInfo, options: dict[str, Any]
    ) -> None:
        """Redact a video file into an MP4 (see the class docstring)."""
        hearth = settings.HEARTH
        face = plate = None
        try:
            if options["blur_faces"]:
                face = face_detector_build(
                    model_dir=Path(hearth["MODEL_DIR"]) if hearth["MODEL_DIR"] else None,
                    choice=options["face_detector"],
                    device=hearth["VIDEO_DEVICE"],
                )
            if options["blur_plates"]:
                plate = HaarPlateDetector()
        except ModelIntegrityError as exc:
            raise CommandError(f"face model refused: {exc}") from exc
        except (DetectorUnavailable, ValueError, OSError) as exc:
            raise CommandError(f"cannot load a detector: {exc}") from exc
        # A file is not real time: the second face pass (faces hidden by their
        # neighbours in a crowd) is worth its cost here.
        video_stages = redaction_stages(
            face=face, plate=plate, stale_s=float(hearth["VIDEO_STALE_S"]), recheck=True
        )
        analyser = _pii_analyser(DecisionTimeline()) if options["bleep_pii"] else None
        audio_stages = (
            _audio_stages(
                denoise=not options["no_denoise"], analyser=analyser, redact=options["redact"]
            )
            if info.has_audio
            else []
        )
        partial = target.with_name(f".{target.name}.partial")
        video_source = VideoFileSource(source)
        audio_source = FileSource(source) if info.has_audio else None
        try:
            video_source.open()
            if audio_source is not None:
                audio_source.open()
            writer = Mp4Writer(
                partial, width=info.width, height=info.height, rate=info.rate, audio=info.has_audio
            )
        except (VideoDecodeError, AudioDecodeError) as exc:
            _close_all(video_stages, audio_stages, video_source, audio_source)
            raise CommandError(f"cannot read input: {exc}") from exc
        except VideoEncodeError as exc:
            _close_all(video_stages, audio_stages, video_source, audio_source)
            raise CommandError(f"cannot write output {target}: {exc}") from exc
        workers = Workers(load_threads=1, io_threads=1, encode_threads=1)
        mux = ThreadPoolExecutor(1, thread_name_prefix="hearth-mux")  # one muxer thread
        video_sink = VideoWriterSink(writer, mux)
        video_runner = GraphRunner(
            Graph(stages=video_stages, sinks=[video_sink]),
            video_source,
            workers=workers,
            name="file-video",
            deadline_s=FILE_DEADLINE_S,
            max_lag_s=None,
            backpressure=True,
        )
        events: list[Event] = []
        audio_sink: AudioWriterSink | None = None
        audio_runner: GraphRunner | None = None
        if audio_source is not None:
            offset = round(info.audio_start_s * SAMPLE_RATE)
            audio_sink = AudioWriterSink(writer, mux, offset=offset)
            audio_runner = GraphRunner(
                Graph(stages=audio_stages, sinks=[audio_sink]),
                audio_source,
                workers=workers,
                name="file-audio",
                deadline_s=FILE_DEADLINE_S,
                max_lag_s=None,
                on_event=events.append,
                backpressure=True,
            )

        async def run_both() -> tuple[MediaMetrics, MediaMetrics | None]:
            runs = [video_runner.run()] + ([audio_runner.run()] if audio_runner else [])
            results = await asyncio.gather(*runs)
            return results[0], (results[1] if len(results) > 1 else None)

        problem = ""
        started = time.perf_counter()
        try:
            video_metrics, audio_metrics = asyncio.run(run_both())
            try:
                writer.close()
            except VideoEncodeError as exc:
                problem = f"write failed: {exc}"
        finally:
            elapsed = time.perf_counter() - started
            video_source.close()
            if audio_source is not None:
                audio_source.close()
            video_runner.stages_close()
            if audio_runner is not None:
                audio_runner.stages_close()
            workers.shutdown()
            mux.shutdown(wait=True)
            with contextlib.suppress(VideoEncodeError):
                writer.close()  # idempotent; closes the file after a failure too
        failed_sink = video_sink.error or (audio_sink.error if audio_sink else None)
        problem = (
            (f"cannot read input: {video_runner.source_error}" if video_runner.source_error else "")
            or (
                f"cannot read input: {audio_runner.source_error}"
                if audio_runner is not None and audio_runner.source_error
                else ""
            )
            or (f"processing failed: {video_metrics.failed}" if video_metrics.failed else "")
            or (
                f"processing failed: {audio_metrics.failed}"
                if audio_metrics is not None and audio_metrics.failed
                else ""
            )
            or (f"write failed: {failed_sink}" if failed_sink is not None else "")
            or problem
            or ("" if writer.frames else f"cannot read input: {source}: no video frames")
        )
        if problem:
            partial.unlink(missing_ok=True)
            raise CommandError(problem)
        os.replace(partial, target)

        duration = writer.frames / float(info.rate)
        self.stdout.write(
            f"{source} -> {target}: video {info.width}x{info.height} at "
            f"{float(info.rate):g} fps, {writer.frames} frames ({duration:.2f} s), "
            f"RTF {elapsed / max(duration, 1e-9):.3f}"
            + (", padded to even sides for H.264" if writer.padded else "")
        )
        blurred = video_metrics.regions_blurred
        detectors = (
            ", ".join(f"{d.kind} {d.name}" for d in (face, plate) if d is not None)
            or "none (frames pass unchanged)"
        )
        self.stdout.write(
            f"video redaction: detectors {detectors}; frames processed "
            f"{video_metrics.frames_processed}, fail-closed (fully blurred) "
            f"{video_metrics.frames_failed_closed}; faces blurred {blurred.get('face', 0)}, "
            f"plates blurred {blurred.get('plate', 0)} (regions summed over frames)"
        )
        if audio_stages:
            chain = audio_stages[0]
            latency = chain.latency_ticks()
            self.stdout.write(
                f"audio: chain {chain.name}, {writer.audio_samples / SAMPLE_RATE:.2f} s AAC, "
                f"latency compensated {latency} samples ({latency / SAMPLE_RATE * 1000:.1f} ms)"
            )
        else:
            self.stdout.write("audio: none in the input")
        if analyser is not None:
            if audio_stages:
                how = "bleeped" if options["redact"] == "bleep" else "muted"
                self._report_pii(analyser, events, how)
                transcript_path: Path | None = options["transcript"]
                if transcript_path is not None:
                    transcript_path.write_text(transcript_vtt(analyser.transcript))
                    self.stdout.write(f"redacted transcript: {transcript_path}")
            else:
                self.stdout.write("PII: no audio to analyse")

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


def _audio_stages(*, denoise: bool, analyser: PiiAnalyser | None, redact: str) -> list[Stage]:
    """The audio stages of a file run: the live chain, then (with an analyser) PII
    analysis and the delay line that bleeps or mutes. First stage: the chain's
    :class:`~streams.media.stage.ProcessorStage`."""
    try:
        chain = audio_chain_build(denoise=denoise)
    except ProcessorError as exc:
        raise CommandError(f"cannot build the processing chain: {exc}") from exc
    stages: list[Stage] = [ProcessorStage(chain)]
    if analyser is not None:
        redactor: Redactor = bleep() if redact == "bleep" else mute
        delay = round(FILE_PII_DELAY_S * SAMPLE_RATE)
        stages += [
            PiiAnalysisStage(analyser),
            DelayLine(timeline=analyser.timeline, delay_ticks=delay, redactor=redactor),
        ]
    return stages


def _close_all(
    video_stages: list[Stage],
    audio_stages: list[Stage],
    *sources: VideoFileSource | FileSource | None,
) -> None:
    """Close stages and sources after a failed start."""
    for stage in [*video_stages, *audio_stages]:
        stage.close()
    for source in sources:
        if source is not None:
            source.close()


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
