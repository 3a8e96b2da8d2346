"""Process one media file with the live media graph: the code behind
``manage.py process_media`` and the "Upload & process" jobs.

:func:`video_file_process` redacts a video file into an MP4 (H.264 + AAC: faces and
licence plates blurred, fail-closed; the audio through the live audio chain);
:func:`audio_file_process` runs an audio file through the live audio chain into a
48 kHz 16-bit mono WAV. Both write beside the target and rename over it only on
success, report progress (fraction of the file's duration, 0.0-1.0) through an
optional callback called on the run's event loop, and raise :class:`MediaFileError`
with a sentence fit for a user or an operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from numpy.typing import NDArray

from streams.audio import SAMPLE_RATE, AudioDecodeError
from streams.media.detectors import DetectorUnavailable, HaarPlateDetector, face_detector_build
from streams.media.graph import FileSource, Graph, GraphRunner, QueuePolicy, Sink
from streams.media.items import AudioChunk, Event, Item, VideoFrame
from streams.media.metrics import MediaMetrics
from streams.media.pii_analysis import PiiAnalyser, PiiAnalysisStage
from streams.media.sinks import CollectSink, RecorderSink
from streams.media.stage import ProcessorStage, Stage
from streams.media.text import text_detector_build
from streams.media.timeline import DelayLine, Redactor, bleep, mute
from streams.media.video import redaction_stages
from streams.media.video_io import (
    AudioWriterSink,
    Mp4Writer,
    VideoDecodeError,
    VideoEncodeError,
    VideoFileSource,
    VideoInfo,
    VideoWriterSink,
)
from streams.media.whisper_model import ModelIntegrityError
from streams.media.workers import Workers
from streams.processors.base import ProcessorError
from streams.processors.factory import audio_chain_build
from streams.recording import RecordingInfo, WavRecorder

FILE_DEADLINE_S = 30.0
"""Longest one block's processing may take over a file before the run fails."""

FILE_PII_DELAY_S = 20.0
"""Content-time delay line over a file with PII bleeping: the analysis runs in line
(synchronously), so decisions trail the audio by a window (~2-3 s) or a held digit
run; what is still undecided this far behind is muted, as live."""

Progress = Callable[[float], None]
"""Called with the fraction of the file processed so far (0.0-1.0), on the run's loop."""


class MediaFileError(Exception):
    """The file could not be processed; the message says why (no file contents)."""


class ProgressSink(Sink):
    """Reports how far a file run has got: ``item end / duration_s`` for each frame or
    chunk, to ``callback`` (lossy: only the newest position matters)."""

    name = "progress"
    policy = QueuePolicy.DROP_OLDEST
    max_items = 4

    def __init__(self, callback: Progress, duration_s: float) -> None:
        self.callback = callback
        self.duration_s = duration_s

    async def write(self, item: Item) -> None:
        """Report the item's position (events are ignored)."""
        if self.duration_s > 0 and isinstance(item, VideoFrame | AudioChunk):
            self.callback(min(1.0, max(0.0, item.start_s / self.duration_s)))


@dataclass
class VideoFileResult:
    """What :func:`video_file_process` wrote and counted.

    Attributes:
        frames: Video frames in the MP4.
        padded: Whether odd sides were padded to even for H.264.
        elapsed_s: Wall-clock processing time, seconds.
        video: The video graph's metrics (``frames_processed``,
            ``frames_failed_closed``, ``regions_blurred`` by kind).
        detectors: ``"face centerface"``-style names of the detectors used.
        audio_chain: Name of the audio chain ("" without audio).
        audio_latency: Samples (48 kHz) of audio delay compensated.
        audio_samples: AAC samples written (48 kHz).
        events: Events the audio graph emitted (redactions with PII bleeping).
    """

    frames: int
    padded: bool
    elapsed_s: float
    video: MediaMetrics
    detectors: list[str]
    audio_chain: str = ""
    audio_latency: int = 0
    audio_samples: int = 0
    events: list[Event] = field(default_factory=list)

    @property
    def faces_blurred(self) -> int:
        """Face regions blurred, summed over frames."""
        return int(self.video.regions_blurred.get("face", 0))

    @property
    def plates_blurred(self) -> int:
        """Licence-plate regions blurred, summed over frames."""
        return int(self.video.regions_blurred.get("plate", 0))

    @property
    def text_blurred(self) -> int:
        """On-screen personal-text regions blurred, summed over frames."""
        return int(self.video.regions_blurred.get("text", 0))


@dataclass
class AudioFileResult:
    """What :func:`audio_file_process` wrote.

    Attributes:
        info: The WAV's figures (frames, rate, duration, size).
        elapsed_s: Wall-clock processing time, seconds.
        chain: Name of the audio chain.
        latency: Samples (48 kHz) of delay compensated.
        clipped: Samples clipped when converting to 16-bit.
        processed: The processed samples (float32 mono 48 kHz) when ``collect``.
        events: Events the graph emitted (redactions with PII bleeping).
    """

    info: RecordingInfo
    elapsed_s: float
    chain: str
    latency: int
    clipped: int
    processed: NDArray[np.float32]
    events: list[Event] = field(default_factory=list)


def audio_stages(*, denoise: bool, analyser: PiiAnalyser | None, redact: str) -> list[Stage]:
    """The audio stages of a file run: the live chain, then (with an analyser) PII
    analysis and the delay line that bleeps (``redact="bleep"``) or mutes. The first
    stage is the chain's :class:`~streams.media.stage.ProcessorStage`.

    Raises:
        MediaFileError: the chain cannot be built.
    """
    try:
        chain = audio_chain_build(denoise=denoise)
    except ProcessorError as exc:
        raise MediaFileError(f"cannot build the processing chain: {exc}") from exc
    stages: list[Stage] = [ProcessorStage(chain)]
    if analyser is not None:
        redactor: Redactor = bleep() if redact == "bleep" else mute
        delay = round(FILE_PII_DELAY_S * SAMPLE_RATE)
        stages += [
            PiiAnalysisStage(analyser),
            DelayLine(timeline=analyser.timeline, delay_ticks=delay, redactor=redactor),
        ]
    return stages


def audio_file_process(
    *,
    source: Path,
    target: Path,
    denoise: bool,
    analyser: PiiAnalyser | None = None,
    redact: str = "bleep",
    collect: bool = False,
    duration_s: float = 0.0,
    on_progress: Progress | None = None,
) -> AudioFileResult:
    """Run ``source`` (any format PyAV decodes) through the live audio chain into
    ``target``: a 48 kHz 16-bit PCM mono WAV, delay-compensated (replaced on success,
    an existing one left as it was on failure). ``duration_s`` (the input's length)
    scales ``on_progress``.

    Raises:
        MediaFileError: unreadable input, a failed stage, or a failed write.
    """
    stages = audio_stages(denoise=denoise, analyser=analyser, redact=redact)
    chain = stages[0].processor  # type: ignore[attr-defined]
    latency = stages[0].latency_ticks()
    events: list[Event] = []
    file_source = FileSource(source)
    partial = target.with_name(f".{target.name}.partial")
    try:
        file_source.open()
        recorder = WavRecorder(partial, SAMPLE_RATE, overwrite=True)
    except AudioDecodeError as exc:
        chain.close()
        raise MediaFileError(f"cannot read input: {exc}") from exc
    except (OSError, ValueError) as exc:
        chain.close()
        file_source.close()
        raise MediaFileError(f"cannot write output {target}: {exc}") from exc
    workers = Workers(load_threads=1, io_threads=1, encode_threads=1)
    recorder_sink = RecorderSink(recorder, workers.io)
    collector = CollectSink()
    sinks: list[Sink] = [recorder_sink] + ([collector] if collect else [])
    if on_progress is not None:
        sinks.append(ProgressSink(on_progress, duration_s))
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
        raise MediaFileError(problem)
    assert info is not None
    os.replace(partial, target)
    return AudioFileResult(
        info=info,
        elapsed_s=elapsed,
        chain=chain.name,
        latency=latency,
        clipped=recorder_sink.clipped,
        processed=collector.samples,
        events=events,
    )


def video_file_process(
    *,
    source: Path,
    target: Path,
    info: VideoInfo,
    blur_faces: bool,
    blur_plates: bool,
    denoise: bool,
    blur_text: bool = False,
    face_detector: str = "auto",
    analyser: PiiAnalyser | None = None,
    redact: str = "bleep",
    on_progress: Progress | None = None,
) -> VideoFileResult:
    """Redact the video file ``source`` (probed as ``info``) into the MP4 ``target``
    (replaced on success, an existing one left as it was on failure).

    Faces (``blur_faces``; detector ``face_detector``: ``auto``/``yunet``/
    ``centerface``), licence plates (``blur_plates``) and on-screen personal text
    (``blur_text``: RapidOCR every 0.5 s of content; its plate-like lines join the
    plates when ``blur_plates``) are blurred; a frame whose
    detection failed or is stale is blurred whole (fail closed). The audio, if any,
    goes through the live chain (``denoise``; with ``analyser``, PII bleeping).
    ``on_progress`` gets the fraction of ``info.duration_s`` done.

    Raises:
        MediaFileError: a detector or model cannot be loaded, unreadable input, a
            failed stage, or a failed write.
    """
    hearth = settings.HEARTH
    face = plate = text = None
    try:
        if blur_faces:
            face = face_detector_build(
                model_dir=Path(hearth["MODEL_DIR"]) if hearth["MODEL_DIR"] else None,
                choice=face_detector,
                device=hearth["VIDEO_DEVICE"],
            )
        if blur_plates:
            plate = HaarPlateDetector()
        if blur_text:
            text = text_detector_build(device=hearth["VIDEO_DEVICE"], text=True, plates=blur_plates)
    except ModelIntegrityError as exc:
        raise MediaFileError(f"detector model refused: {exc}") from exc
    except (DetectorUnavailable, ValueError, OSError) as exc:
        raise MediaFileError(f"cannot load a detector: {exc}") from exc
    # A file is not real time: the second face pass (faces hidden by their
    # neighbours in a crowd) is worth its cost here.
    video_stages = redaction_stages(
        face=face,
        plate=plate,
        text=text,
        stale_s=float(hearth["VIDEO_STALE_S"]),
        recheck=True,
    )
    sound_stages = (
        audio_stages(denoise=denoise, analyser=analyser, redact=redact) if info.has_audio else []
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
        _close_all(video_stages, sound_stages, video_source, audio_source)
        raise MediaFileError(f"cannot read input: {exc}") from exc
    except VideoEncodeError as exc:
        _close_all(video_stages, sound_stages, video_source, audio_source)
        raise MediaFileError(f"cannot write output {target}: {exc}") from exc
    workers = Workers(load_threads=1, io_threads=1, encode_threads=1)
    mux = ThreadPoolExecutor(1, thread_name_prefix="hearth-mux")  # one muxer thread
    video_sink = VideoWriterSink(writer, mux)
    video_sinks: list[Sink] = [video_sink]
    if on_progress is not None:
        video_sinks.append(ProgressSink(on_progress, info.duration_s))
    video_runner = GraphRunner(
        Graph(stages=video_stages, sinks=video_sinks),
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
            Graph(stages=sound_stages, sinks=[audio_sink]),
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
        raise MediaFileError(problem)
    os.replace(partial, target)
    chain = sound_stages[0] if sound_stages else None
    return VideoFileResult(
        frames=writer.frames,
        padded=writer.padded,
        elapsed_s=elapsed,
        video=video_metrics,
        detectors=[f"{d.kind} {d.name}" for d in (face, plate, text) if d is not None],
        audio_chain=chain.name if chain is not None else "",
        audio_latency=chain.latency_ticks() if chain is not None else 0,
        audio_samples=writer.audio_samples,
        events=events,
    )


def _close_all(
    video_stages: list[Stage],
    sound_stages: list[Stage],
    *sources: VideoFileSource | FileSource | None,
) -> None:
    """Close stages and sources after a failed start."""
    for stage in [*video_stages, *sound_stages]:
        stage.close()
    for source in sources:
        if source is not None:
            source.close()


@dataclass(frozen=True, slots=True)
class MediaProbe:
    """What :func:`media_probe` found in a file.

    Attributes:
        kind: ``"video"`` (a picture stream; cover art does not count) or ``"audio"``.
        duration_s: Container duration, seconds (0.0 when the file states none).
        video: The video properties, for ``kind == "video"``.
    """

    kind: str
    duration_s: float
    video: VideoInfo | None


def media_probe(path: Path) -> MediaProbe:
    """Tell by content (FFmpeg's demuxer probe, through PyAV) whether ``path`` is a
    video or an audio file; the name and the claimed MIME type play no part.

    Raises:
        MediaFileError: FFmpeg cannot open it, or it has neither a picture nor an
            audio stream.
    """
    import av

    from streams.media.video_io import probe_video

    try:
        video = probe_video(path)
        if video is not None:
            return MediaProbe(kind="video", duration_s=video.duration_s, video=video)
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaFileError("the file has no audio or video in it")
            duration = float(container.duration or 0) / av.time_base
    except (VideoDecodeError, av.FFmpegError, OSError, ValueError) as exc:
        raise MediaFileError("not a video or audio file that can be read") from exc
    return MediaProbe(kind="audio", duration_s=duration, video=None)


__all__ = [
    "AudioFileResult",
    "MediaFileError",
    "MediaProbe",
    "ProgressSink",
    "VideoFileResult",
    "audio_file_process",
    "audio_stages",
    "media_probe",
    "video_file_process",
]
