"""Live-camera path benchmark: 640x480 frames at 15 fps through the live stages.

Usage::

    .venv/bin/python bench/video.py --live [--seconds 10] [--json OUT.json]

One run measures three configurations one after the other, each for ``--seconds`` of
real time, each with a concurrent audio stream (see below):

* ``before``: the settings the live camera had before this change, restored here:
  every frame queued in front of the stages (no dropping), faces and plates on every
  2nd frame, the recheck pass, the fail-closed full-frame blur with its Gaussian on the
  full-size picture, the region blur's Gaussian on an 8-px-per-cell grid, boxes held
  0.5 s, no velocity stretch nor camera-motion tracking in the tracker (its phase
  correlation still runs, ~1-3 ms, and is ignored), and the video worker at the same
  CPU priority as audio.
* ``after``: today's live settings (:func:`live_redaction_stages`, what
  ``streams.rtc`` runs): the source keeps only the newest frame, faces every frame and
  plates every 3rd, each detector re-run whenever its result would be older than the
  0.25 s budget, boxes held 1 s, the recheck pass, the tracker's velocity stretch and
  camera-motion tracking, the cheap blurs, the video worker at nice +10.
* ``after, no recheck``: as ``after`` without the second face pass, to measure what
  that pass catches.

The camera is a pan across ``city.jpg`` (8 px per frame, as ``tests/test_video_live``)
fed as decoded yuv420p ``av.VideoFrame`` s at 15 fps; frames leave into a sink that
encodes them with the live :class:`Vp8Encoder` in the encode pool. Reported: frames
in, processed (redacted), blurred whole, dropped by the source, processed frames per
second, the mean time a processed frame waited between arriving and its stages
starting (in the source and in the runner's queue),
ms per stage (mean / p95, wall, in the loaded worker thread), and **faces left**:
detections of YuNet (score >= 0.45) and CenterFace (>= 0.3) on annotated ``city.jpg``
faces in the redacted (not blurred-whole) output frames, before VP8 (the live rtc
test checks after VP8).

Audio proxy: a 48 kHz mono track of 20 ms blocks runs through a stage that costs
~4 ms of numpy work per block, with the live audio settings (``MAX_LAG_S`` 0.25 s,
2 s deadline) beside the camera on the same :class:`Workers`; its blocks that fail
closed (silence) are what a camera costs the audio. No Django needed.
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench._common import shared_models_dir
from bench._video_material import CITY_FACES, face_hit, pan_frames
from streams.media import video as video_module
from streams.media import workers as workers_module
from streams.media.detectors import (
    YUNET_FILE,
    CenterFaceDetector,
    HaarPlateDetector,
    YuNetDetector,
)
from streams.media.graph import Graph, GraphRunner, Sink, TrackSource
from streams.media.items import AudioChunk, Item, VideoFrame
from streams.media.stage import Stage
from streams.media.video import TrackStage, redaction_stages
from streams.media.video_live import (
    LIVE_FACE_EVERY,
    LIVE_PLATE_EVERY,
    RTP_VIDEO_TIME_BASE,
    VideoTrackSource,
    Vp8Encoder,
    live_redaction_stages,
)
from streams.media.workers import Workers

FPS = 15
WIDTH, HEIGHT = 640, 480
STEP = 8
TOP = 60
LIVE_YUNET_THRESHOLD = 0.3  # as streams.rtc


def _blur_full_before(image: np.ndarray) -> np.ndarray:
    """The fail-closed blur as it was: Gaussian (sigma 20 px at 640 wide) on the
    full-size picture."""
    import cv2

    height, width = image.shape[:2]
    small_w = max(1, min(width, 16))
    small_h = max(1, round(height * small_w / max(1, width)))
    small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    sigma = max(1.0, width / small_w / 2)
    return np.ascontiguousarray(cv2.GaussianBlur(big, (0, 0), sigma), dtype=np.uint8)


class _Camera(MediaStreamTrack):
    """The pan at ``FPS`` in real time, as decoded yuv420p frames, then its end."""

    kind = "video"

    def __init__(self, crops: list[np.ndarray]) -> None:
        super().__init__()
        self.frames = [
            av.VideoFrame.from_ndarray(c, format="bgr24").reformat(format="yuv420p") for c in crops
        ]
        self.index = 0
        self.start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.index >= len(self.frames):
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.index / FPS - time.monotonic()))
        frame = self.frames[self.index]
        frame.pts = self.index * (90_000 // FPS)
        frame.time_base = RTP_VIDEO_TIME_BASE
        self.index += 1
        return frame


class _Microphone(MediaStreamTrack):
    """20 ms s16 mono 48 kHz frames in real time for ``seconds``."""

    kind = "audio"

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.count = round(seconds * 50)
        self.index = 0
        self.start: float | None = None
        t = np.arange(960) / 48_000
        self.samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)[None, :]

    async def recv(self) -> av.AudioFrame:
        if self.index >= self.count:
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.index * 0.02 - time.monotonic()))
        frame = av.AudioFrame.from_ndarray(self.samples, format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = self.index * 960
        frame.time_base = Fraction(1, 48_000)
        self.index += 1
        return frame


class _AudioWork(Stage):
    """~4 ms of numpy work per 20 ms block (FFTs), output = input."""

    name = "audio_work"

    def latency_ticks(self) -> int:
        return 0

    def process(self, chunk: AudioChunk) -> list[Item]:  # type: ignore[override]
        signal = np.resize(chunk.samples, 1 << 14)
        for _ in range(12):
            signal = np.fft.irfft(np.fft.rfft(signal), n=1 << 14).astype(np.float32)
        return [chunk]


class _Null(Sink):
    name = "null"

    async def write(self, item: Item) -> None:
        return None


class _EncodeSink(Sink):
    """Encodes each frame with the live VP8 encoder in the encode pool; keeps them."""

    name = "encode"
    max_items = 4

    def __init__(self, workers: Workers, metrics: Any) -> None:
        self.workers = workers
        self.metrics = metrics
        self.encoder = Vp8Encoder()
        self.frames: list[VideoFrame] = []

    async def write(self, item: Item) -> None:
        if not isinstance(item, VideoFrame):
            return
        self.frames.append(item)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.workers.encode, self.encoder.encode, item)
        self.metrics.timer("encode").add(time.perf_counter() - started)


def _stages(config: str, yunet_path: Path) -> list[Stage]:
    face = YuNetDetector(yunet_path, score_threshold=LIVE_YUNET_THRESHOLD)
    plate = HaarPlateDetector()
    if config == "before":
        stages = redaction_stages(face=face, plate=plate, every=2, recheck=True)
        for stage in stages:
            if isinstance(stage, TrackStage):
                stage.max_shift = 0.0  # no velocity stretch then
                stage.motion_response = 2.0  # nor camera-motion tracking (never used)
        return stages
    if config == "after":
        return live_redaction_stages(face=face, plate=plate, stale_s=0.25)
    return redaction_stages(
        face=face,
        plate=plate,
        every=LIVE_FACE_EVERY,
        plate_every=LIVE_PLATE_EVERY,
        refresh=True,
        recheck=False,
    )


async def _run_one(config: str, seconds: float, yunet_path: Path) -> dict[str, Any]:
    workers = Workers(processing_slots=2, encode_threads=2)
    crops = pan_frames(frames=round(seconds * FPS), width=WIDTH, height=HEIGHT, step=STEP, top=TOP)
    before = config == "before"
    video = Graph(stages=_stages(config, yunet_path))
    runner = GraphRunner(
        video,
        VideoTrackSource(_Camera(crops), newest_only=not before),
        workers=workers,
        name=f"bench-{config}",
        deadline_s=2.0,
        max_lag_s=0.25,
    )
    sink = _EncodeSink(workers, runner.metrics)
    video.sinks = [sink]
    audio = GraphRunner(
        Graph(stages=[_AudioWork()], sinks=[_Null()]),
        TrackSource(_Microphone(seconds)),
        workers=workers,
        name=f"bench-{config}-audio",
        deadline_s=2.0,
        max_lag_s=0.25,
    )
    started = time.monotonic()
    video_metrics, audio_metrics = await asyncio.gather(runner.run(), audio.run())
    elapsed = time.monotonic() - started
    workers.shutdown()
    stages = {
        name: {
            "mean_ms": round(timer.summary().get("mean_ms", 0.0), 1),
            "p95_ms": round(timer.summary().get("p95_ms", 0.0), 1),
        }
        for name, timer in video_metrics.timers.items()
        if name not in ("receive", "process", "queue")
    }
    summaries = {name: video_metrics.timer(name).summary() for name in ("receive", "queue")}
    return {
        "config": config,
        "seconds": round(elapsed, 1),
        "frames_sent_by_camera": len(crops),
        "frames_in": video_metrics.frames_in,
        "frames_redacted": video_metrics.frames_processed,
        "frames_blurred_whole": video_metrics.frames_failed_closed,
        "frames_dropped": video_metrics.frames_dropped,
        "redacted_fps": round(video_metrics.frames_processed / elapsed, 1),
        # arrival -> stages start: in the source (newest-only: held while the stages
        # are busy, plus the BGR conversion) and in the runner's queue
        "frame_wait_mean_ms": round(
            summaries["receive"]["mean_ms"] + summaries["queue"]["mean_ms"], 1
        ),
        "stages": stages,
        "audio_blocks": audio_metrics.blocks_in,
        "audio_blocks_silenced": audio_metrics.blocks_failed_closed,
        "output": sink.frames,
    }


def _faces_left(
    frames: list[VideoFrame], yunet: YuNetDetector, centerface: Any
) -> list[dict[str, Any]]:
    """Detections on annotated faces in the redacted (not blurred-whole) frames: frame
    number, detector, score, box (frame pixels) and whether the face touches the frame
    edge."""
    image_width = 800
    span = image_width - WIDTH
    left = []
    for frame in frames:
        if frame.failed_closed:
            continue
        index = frame.pts // (90_000 // FPS)
        x = (index * STEP) % (2 * span)
        x = x if x <= span else 2 * span - x
        faces = [(fx - x, fy - TOP, w, h) for fx, fy, w, h in CITY_FACES]
        for detector in (yunet, centerface):
            for box in detector.detect(frame.image):
                hit = [f for f in faces if face_hit((box.x0, box.y0, box.x1, box.y1), f)]
                if hit:
                    fx, fy, w, h = hit[0]
                    left.append(
                        {
                            "frame": int(index),
                            "detector": detector.name,
                            "score": round(float(box.score), 2),
                            "box": [round(v) for v in (box.x0, box.y0, box.x1, box.y1)],
                            "face": [fx, fy, w, h],
                            "at_edge": fx < 0 or fy < 0 or fx + w > WIDTH or fy + h > HEIGHT,
                        }
                    )
    return left


def live_path(seconds: float) -> list[dict[str, Any]]:
    """Run the three configurations; print and return their figures."""
    yunet_path = shared_models_dir() / YUNET_FILE.name
    judge_yunet = YuNetDetector(yunet_path, score_threshold=0.45)
    judge_centerface = CenterFaceDetector(threshold=0.3)
    results = []
    for config in ("before", "after", "after, no recheck"):
        saved = video_module.blur_full, video_module._WORK_PX, workers_module.VIDEO_NICE
        if config == "before":
            video_module.blur_full = _blur_full_before
            video_module._WORK_PX = 8  # the region blur's Gaussian grid as it was
            workers_module.VIDEO_NICE = 0
        try:
            result = asyncio.run(_run_one(config, seconds, yunet_path))
        finally:
            video_module.blur_full, video_module._WORK_PX, workers_module.VIDEO_NICE = saved
        frames = result.pop("output")
        left = _faces_left(frames, judge_yunet, judge_centerface)
        result["faces_left"] = len(left)
        result["faces_left_detail"] = left
        results.append(result)
        stage_text = ", ".join(
            f"{name} {v['mean_ms']:.0f}/{v['p95_ms']:.0f}" for name, v in result["stages"].items()
        )
        print(
            f"{config:<18} in {result['frames_in']:>3}/{result['frames_sent_by_camera']}, "
            f"redacted {result['frames_redacted']:>3} ({result['redacted_fps']} fps), "
            f"blurred whole {result['frames_blurred_whole']:>3}, "
            f"dropped {result['frames_dropped']:>3}, faces left {result['faces_left']}, "
            f"wait {result['frame_wait_mean_ms']:.0f} ms, "
            f"audio silenced {result['audio_blocks_silenced']}/{result['audio_blocks']}"
        )
        print(f"{'':<18} ms mean/p95: {stage_text}")
        for leak in left:
            print(f"{'':<18} face left: {leak}")
    return results
