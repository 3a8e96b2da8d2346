"""``manage.py process_media INPUT OUTPUT``: run the live media graph over a file.

Audio files → denoised (optionally PII-bleeped) WAV; video files → MP4 (H.264 + AAC)
with faces, licence plates and (``--blur-text``) on-screen personal text blurred, the
audio through the same audio chain.
"""

from __future__ import annotations

import os
from argparse import ArgumentParser, BooleanOptionalAction
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError
from numpy.typing import NDArray

from streams.audio import SAMPLE_RATE, AudioDecodeError, load_audio
from streams.media.detectors import (
    FACE_DETECTORS,
)
from streams.media.items import Event
from streams.media.pii import MASKS
from streams.media.pii_analysis import (
    PiiAnalyser,
    merged_decisions,
    transcript_vtt,
)
from streams.media.timeline import DecisionTimeline
from streams.media.video_io import (
    VideoDecodeError,
    VideoInfo,
    probe_video,
)
from streams.media.whisper_model import ModelIntegrityError
from streams.media_file import MediaFileError, audio_file_process, video_file_process
from streams.quality import align, pesq_wb, si_snr, stoi

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
        "(and with --blur-text on-screen e-mails, phone and card numbers) "
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
            "--blur-text",
            action=BooleanOptionalAction,
            default=False,
            help="blur on-screen personal text: e-mails, phone and card numbers "
            "(RapidOCR twice a second of video; default: off)",
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

        try:
            result = audio_file_process(
                source=source,
                target=target,
                denoise=denoise,
                analyser=analyser,
                redact=options["redact"],
                collect=reference is not None,
            )
        except MediaFileError as exc:
            raise CommandError(str(exc)) from exc
        info = result.info
        elapsed = result.elapsed_s
        latency = result.latency
        duration = info.duration_s
        processed = result.processed
        clipped = result.clipped
        self.stdout.write(
            f"{source} -> {target}: {duration:.2f} s, chain {result.chain}, "
            f"RTF {elapsed / duration:.3f}, latency compensated {latency} samples "
            f"({latency / SAMPLE_RATE * 1000:.1f} ms), clipped {clipped} samples"
        )
        if reference is not None and samples is not None:
            for label, signal in (("input", samples), ("output", processed)):
                self.stdout.write(_quality_line(label, signal, reference))
        if analyser is not None:
            how = "bleeped" if options["redact"] == "bleep" else "muted"
            self._report_pii(analyser, result.events, how)
            if transcript_path is not None:
                transcript_path.write_text(transcript_vtt(analyser.transcript))
                self.stdout.write(f"redacted transcript: {transcript_path}")

    def _handle_video(
        self, source: Path, target: Path, info: VideoInfo, options: dict[str, Any]
    ) -> None:
        """Redact a video file into an MP4 (see the class docstring)."""
        analyser = _pii_analyser(DecisionTimeline()) if options["bleep_pii"] else None
        try:
            result = video_file_process(
                source=source,
                target=target,
                info=info,
                blur_faces=options["blur_faces"],
                blur_plates=options["blur_plates"],
                blur_text=options["blur_text"],
                denoise=not options["no_denoise"],
                face_detector=options["face_detector"],
                analyser=analyser,
                redact=options["redact"],
            )
        except MediaFileError as exc:
            raise CommandError(str(exc)) from exc
        duration = result.frames / float(info.rate)
        self.stdout.write(
            f"{source} -> {target}: video {info.width}x{info.height} at "
            f"{float(info.rate):g} fps, {result.frames} frames ({duration:.2f} s), "
            f"RTF {result.elapsed_s / max(duration, 1e-9):.3f}"
            + (", padded to even sides for H.264" if result.padded else "")
        )
        detectors = ", ".join(result.detectors) or "none (frames pass unchanged)"
        self.stdout.write(
            f"video redaction: detectors {detectors}; frames processed "
            f"{result.video.frames_processed}, fail-closed (fully blurred) "
            f"{result.video.frames_failed_closed}; faces blurred {result.faces_blurred}, "
            f"plates blurred {result.plates_blurred}, text blurred {result.text_blurred} "
            "(regions summed over frames)"
        )
        if info.has_audio:
            latency = result.audio_latency
            self.stdout.write(
                f"audio: chain {result.audio_chain}, {result.audio_samples / SAMPLE_RATE:.2f} s "
                f"AAC, latency compensated {latency} samples "
                f"({latency / SAMPLE_RATE * 1000:.1f} ms)"
            )
        else:
            self.stdout.write("audio: none in the input")
        events = result.events
        if analyser is not None:
            if info.has_audio:
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
