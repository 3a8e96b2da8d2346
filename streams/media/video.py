"""Video redaction stages: detect → track/hold → blur, failing closed to a blurred frame.

::

    frames ──▶ detect faces ──▶ detect plates ──▶ track/hold ──▶ blur ──▶ sinks
               (every n-th)     (every n-th)      pad, smooth    regions, or the
                                                  hold missed    whole frame when a
                                                  boxes          result is stale

Every stage is a :class:`VideoStage`: its fail-closed output is the **whole frame
blurred** (:func:`blur_full`), never the input, so a detector that raises
(:attr:`~streams.media.stage.Stage.fails_per_item`: that frame only), stalls past the
runner's deadline (every later frame) or is skipped because the stream fell behind
real time yields a frame in which nothing is recognisable. The blur stage adds the
staleness rule: a frame whose newest result from a required detector is older than
``stale_s`` of content time (default 0.25 s) is blurred whole, because boxes found
that long ago may no longer cover a moving face. Frames blurred whole are marked
``failed_closed`` and counted by the runner (``MediaMetrics.frames_failed_closed``).

Blurring a region (:func:`blur_region`) pixelates it to :data:`PIXEL_CELLS` cells
across its longer side, then Gaussian-blurs it with a sigma of
:data:`BLUR_SIGMA_CELLS` cells, which removes the cell edges a face detector could
still key on; tests check that YuNet
and CenterFace find no face in a blurred region of ``city.jpg`` and that its
variance of the Laplacian (Pech-Pacheco et al., ICPR 2000, a standard focus/detail
measure) drops by at least 80%.

Imports nothing from Django.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from streams.media.detectors import Detector
from streams.media.items import Box, Detections, Item, VideoFrame
from streams.media.stage import Stage
from streams.media.text import LINE_KINDS, TEXT_HOLD_S, TEXT_INTERVAL_S, TEXT_STALE_S

ANALYSIS_WIDTH = 640
"""Widest image a detector is run on, pixels; wider frames are downscaled for
detection (INTER_AREA) and the boxes scaled back to the frame."""

STALE_S = 0.25
"""Default staleness budget: a detector result older than this (content time, s)
makes the blur stage blur the whole frame."""

PIXEL_CELLS = 6
"""Pixelation cells across the longer side of a blurred (padded) region: a face is
left about 4 cells wide."""

BLUR_SIGMA_CELLS = 1.5
"""Gaussian sigma after pixelation, in cells."""

_WORK_PX = 4
"""Pixels per pixelation cell at which a region's Gaussian is computed. 4 rather than
8: a quarter of the pixels and half the kernel, ~7.5 -> ~1.9 ms of CPU for the 15
padded faces of a 640x480 city.jpg crop, and no weaker: the highest face scores left in
the 20 blurred city.jpg regions went 0.16 -> 0.14 (YuNet) and 0.26 -> 0.25 (CenterFace),
the largest Laplacian-variance ratio 0.009 -> 0.008. At 2 CenterFace found a face."""

PAD = 0.35
"""Padding added on each side of a face or plate box before blurring, as a fraction
of its width/height. Measured on the 20 faces of ``city.jpg`` (detector scores left
inside the blurred regions, YuNet / CenterFace): 8 cells, sigma 1 cell, pad 0.25:
0.61 / 0.44; 6 cells, sigma 1.5, pad 0.25: 0.40 / 0.43 (a small face's blurred skin
blob still looks like a face to CenterFace); 6 cells, sigma 1.5, pad 0.35: below
0.3 / 0.26, under both detectors' operating thresholds (0.5 / 0.4) and the tests'
stricter ones (0.45 / 0.3)."""

FULL_BLUR_WIDTH = 16
"""Width, pixels, a fail-closed frame is reduced to before being scaled back up."""


# -- pixels ---------------------------------------------------------------------------
def blur_full(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The whole picture made unrecognisable (a new array, same shape and dtype).

    Area-downscaled to :data:`FULL_BLUR_WIDTH` pixels wide (aspect kept, at least 1 px
    high), Gaussian-smoothed there (sigma half a cell) and scaled back up bilinearly:
    colours and broad light survive so viewers see the stream is alive; no face, plate
    or text does. The Gaussian runs on the small image: the same half-cell sigma on the
    full-size picture (20 px at 640 wide) cost ~32 ms of CPU per 640x480 frame, this
    ~1 ms, and a fail-closed frame must be cheap (an overloaded stream makes many).

    Args:
        image: uint8, shape ``(h, w, 3)`` (or ``(h, w)``).
    """
    height, width = image.shape[:2]
    small_w = max(1, min(width, FULL_BLUR_WIDTH))
    small_h = max(1, round(height * small_w / max(1, width)))
    small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 0.5, borderType=cv2.BORDER_REPLICATE)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(big, dtype=np.uint8)


def _clip(box: Box, width: int, height: int) -> tuple[int, int, int, int] | None:
    x0 = max(0, math.floor(box.x0))
    y0 = max(0, math.floor(box.y0))
    x1 = min(width, math.ceil(box.x1))
    y1 = min(height, math.ceil(box.y1))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return x0, y0, x1, y1


def blur_region(image: NDArray[np.uint8], box: Box) -> bool:
    """Blur ``box`` of ``image`` in place; False when the box lies outside the image.

    Pixelation to :data:`PIXEL_CELLS` cells across the longer side (INTER_AREA
    down, nearest-neighbour up), then a Gaussian with sigma = :data:`BLUR_SIGMA_CELLS`
    cells.

    Args:
        image: uint8, shape ``(h, w, 3)``, written in place.
        box: Region in ``image`` pixels; clipped to the image.
    """
    clipped = _clip(box, image.shape[1], image.shape[0])
    if clipped is None:
        return False
    x0, y0, x1, y1 = clipped
    roi = image[y0:y1, x0:x1]
    h, w = roi.shape[:2]
    cell = max(1.0, max(w, h) / PIXEL_CELLS)
    cells = (max(1, round(w / cell)), max(1, round(h / cell)))
    small = cv2.resize(roi, cells, interpolation=cv2.INTER_AREA)
    # The Gaussian runs on the pixelated region at _WORK_PX pixels per cell (at most
    # the region's own size) and is scaled up bilinearly: a big face costs what a
    # small one does (sigma 1.5 cells on a 200-px region directly: ~150-px kernels).
    scale = min(float(_WORK_PX), cell)
    work = (max(1, round(w / cell * scale)), max(1, round(h / cell * scale)))
    blocky = cv2.resize(small, work, interpolation=cv2.INTER_NEAREST)
    smooth = cv2.GaussianBlur(
        blocky, (0, 0), scale * BLUR_SIGMA_CELLS, borderType=cv2.BORDER_REPLICATE
    )
    roi[...] = cv2.resize(smooth, (w, h), interpolation=cv2.INTER_LINEAR)
    return True


def laplacian_variance(image: NDArray[np.uint8]) -> float:
    """Variance of the Laplacian of the grey image: detail (focus) measure, float.

    Pech-Pacheco et al., "Diatom autofocusing in brightfield microscopy: a
    comparative study", ICPR 2000.
    """
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def analysis_image(
    image: NDArray[np.uint8], max_width: int = ANALYSIS_WIDTH
) -> tuple[NDArray[np.uint8], float]:
    """``image`` downscaled to at most ``max_width`` pixels wide, and the factor that
    maps its pixel coordinates back to ``image``'s (``>= 1``; 1.0: unchanged)."""
    width = image.shape[1]
    if width <= max_width:
        return image, 1.0
    factor = width / max_width
    height = max(1, round(image.shape[0] / factor))
    small = cv2.resize(image, (max_width, height), interpolation=cv2.INTER_AREA)
    return small, factor


def detect_scaled(detector: Detector, small: NDArray[np.uint8], factor: float) -> list[Box]:
    """``detector``'s boxes on the analysis image ``small`` (:func:`analysis_image`),
    scaled by ``factor`` back to the frame's pixels."""
    boxes = detector.detect(small)
    return [box.scaled(factor) for box in boxes] if factor != 1.0 else boxes


# -- stages ---------------------------------------------------------------------------
class VideoStage(Stage):
    """Base of video stages: no latency, fail-closed output = the frame blurred whole.

    A frame that is already ``failed_closed`` passes every later stage untouched.
    """

    name = "video"

    def latency_ticks(self) -> int:
        """0: frames leave with the pts they came in with."""
        return 0

    def fail_closed(self, chunk: VideoFrame) -> list[Item]:  # type: ignore[override]
        """The frame with its whole picture blurred (:func:`blur_full`), marked
        ``failed_closed``; an already failed-closed frame as it is."""
        if chunk.failed_closed:
            return [chunk]
        return [
            VideoFrame(
                image=blur_full(chunk.image),
                pts=chunk.pts,
                time_base=chunk.time_base,
                arrived=chunk.arrived,
                duration=chunk.duration,
                failed_closed=True,
            )
        ]


class DetectStage(VideoStage):
    """Runs one detector on frames and stamps its result on each frame.

    The detector sees the frame downscaled to at most ``analysis_width`` pixels wide
    (:func:`analysis_image`); its boxes are scaled back to frame pixels. With
    ``every=n`` it runs on every n-th frame (``None``: only on the first frame and as
    ``max_age_s`` asks) and the frames between carry the last result (older pts: the
    blur stage judges its age). A detector that raises fails closed for that frame only
    (:attr:`fails_per_item`); the next frame runs it again.
    With ``max_age_s`` it also runs whenever the carried result would be older than
    that for this frame (content time), so skipping frames never makes the blur stage
    find a stale result: a live stream that drops frames runs the detector more often.

    Args:
        detector: What to run (see :mod:`streams.media.detectors`).
        label: Name its results are filed under in ``frame.detections`` and that the
            blur stage requires (default: the detector's ``kind``).
        every: Run on every n-th frame (1: every frame; None: never by count).
        analysis_width: Widest analysis image, pixels.
        max_age_s: Run whenever the carried result is older than this, seconds
            (None: ``every`` alone decides).
    """

    fails_per_item = True

    def __init__(
        self,
        detector: Detector,
        *,
        label: str | None = None,
        every: int | None = 1,
        analysis_width: int = ANALYSIS_WIDTH,
        max_age_s: float | None = None,
    ) -> None:
        self.detector = detector
        self.label = label or detector.kind
        self.name = f"detect_{self.label}"
        self.every = None if every is None else max(1, every)
        self.analysis_width = analysis_width
        self.max_age_s = max_age_s
        self.runs = 0  # frames the detector ran on
        self._count = 0
        self._last: Detections | None = None

    def process(self, chunk: VideoFrame) -> list[Item]:  # type: ignore[override]
        """Detect on ``chunk`` (or carry the last result); returns ``[chunk]``.

        Raises:
            Exception: whatever the detector raised (this frame fails closed).
        """
        frame = chunk
        if frame.failed_closed:
            return [frame]
        last = self._last
        run = (
            (self.every is not None and self._count % self.every == 0)
            or last is None
            or (self.max_age_s is not None and frame.seconds(frame.pts - last.pts) > self.max_age_s)
        )
        self._count += 1
        if run:
            self.runs += 1
            small, factor = analysis_image(frame.image, self.analysis_width)
            boxes = detect_scaled(self.detector, small, factor)
            self._last = Detections(self.label, frame.pts, tuple(boxes))
        if self._last is not None:
            frame.detections[self.label] = self._last
        return [frame]


class BackgroundDetectStage(VideoStage):
    """Runs a slow detector (OCR) on a background thread at about ``1/interval_s`` Hz
    and stamps its newest result on every frame, without making frames wait for it.

    On each frame: a finished run's result becomes the carried one (its pts is the
    pts of the frame it analysed, so the blur stage judges its age); if no run is in
    flight and ``interval_s`` of content time has passed since the last one started,
    a copy of this frame (downscaled to ``analysis_width``) is handed to the thread.
    A run that raised makes the frame that collects it fail closed (the exception is
    re-raised, :attr:`fails_per_item`); the next frame starts a new run. A run that
    hangs is never collected: the carried result ages past the blur stage's budget
    and every frame leaves blurred whole. Live graphs only: over a file, frames come
    faster than real time and a background result would always be stale; file graphs
    run the same detector in a :class:`DetectStage` with ``max_age_s=interval_s``.

    The thread is created by the first frame, i.e. by the stream's worker thread, so
    it inherits that thread's scheduling priority (``nice``).

    Args:
        detector: What to run (e.g. :class:`~streams.media.text.TextDetector`).
        label: Name its results are filed under (default: the detector's ``kind``).
        interval_s: Content seconds between the starts of two runs.
        analysis_width: Widest analysis image, pixels.
    """

    fails_per_item = True

    def __init__(
        self,
        detector: Detector,
        *,
        label: str | None = None,
        interval_s: float = TEXT_INTERVAL_S,
        analysis_width: int = ANALYSIS_WIDTH,
    ) -> None:
        self.detector = detector
        self.label = label or detector.kind
        self.name = f"detect_{self.label}"
        self.interval_s = interval_s
        self.analysis_width = analysis_width
        self.runs = 0  # runs started
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future[Detections] | None = None
        self._started_pts: int | None = None
        self._last: Detections | None = None

    def _run(self, image: NDArray[np.uint8], factor: float, pts: int) -> Detections:
        return Detections(self.label, pts, tuple(detect_scaled(self.detector, image, factor)))

    def process(self, chunk: VideoFrame) -> list[Item]:  # type: ignore[override]
        """Collect a finished run, maybe start one; returns ``[chunk]`` carrying the
        newest result.

        Raises:
            Exception: what the collected run raised (this frame fails closed).
        """
        frame = chunk
        if frame.failed_closed:
            return [frame]
        future = self._future
        if future is not None and future.done():
            self._future = None
            self._last = future.result()
        due = self._started_pts is None or (
            frame.seconds(frame.pts - self._started_pts) >= self.interval_s
            or frame.pts < self._started_pts  # time went back: a new segment
        )
        if self._future is None and due:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"hearth-{self.name}")
            small, factor = analysis_image(frame.image, self.analysis_width)
            if small is frame.image:
                small = small.copy()  # later stages blur the frame in place
            self._started_pts = frame.pts
            self.runs += 1
            self._future = self._pool.submit(self._run, small, factor, frame.pts)
        if self._last is not None:
            frame.detections[self.label] = self._last
        return [frame]

    def close(self) -> None:
        """Stop the thread (a run in flight finishes on its own; idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass(slots=True)
class _Track:
    box: Box  # smoothed, unpadded, frame pixels
    last_seen_s: float
    hits: int = 1
    seen: Box | None = None  # the last detection as found (for the velocity)
    vx: float = 0.0  # centre velocity, frame pixels per second of content time
    vy: float = 0.0
    dx: float = 0.0  # camera motion since last seen, frame pixels
    dy: float = 0.0
    hold_s: float = 0.5  # how long it outlives its last detection


def _shifted(box: Box, dx: float, dy: float) -> Box:
    if not dx and not dy:
        return box
    return Box(box.x0 + dx, box.y0 + dy, box.x1 + dx, box.y1 + dy, box.kind, box.score)


def _union(a: Box, b: Box) -> Box:
    return Box(min(a.x0, b.x0), min(a.y0, b.y0), max(a.x1, b.x1), max(a.y1, b.y1), a.kind, a.score)


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union > 0 else 0.0


class TrackStage(VideoStage):
    """Temporal stabilisation: boxes are matched across frames, smoothed, padded and
    held, so a face missed for a frame or two stays blurred and blur boxes do not
    flicker.

    For each new detector result (a result is used once, on the first frame that
    carries it), every box is matched greedily, by IoU, to the live track of the same
    kind it overlaps most (at least ``match_iou``); a matched track moves towards the
    box by ``smooth`` (an exponential moving average of the corners) but never ends up
    smaller than the new box (the union is kept, so smoothing can only add blur). An
    unmatched box starts a track. A track not seen for ``hold_s`` of content time is
    dropped; while held it grows by ``grow_per_s`` of its size per second on each
    side, to cover a face that moves while its detector misses it, and it is also
    stretched along its last measured velocity (centre motion between its last two
    detections, at most ``max_shift`` of its size): the region is the union of the box
    where it was seen and where it would be now, so a wrong guess only adds blur. A
    track seen only once takes the median velocity of the tracks that have one. The
    camera's own motion (a pan) is measured between consecutive frames by phase
    correlation of quarter-size grey images (``cv2.phaseCorrelate``, used when its
    response is at least ``motion_response``); a held box is also stretched by the
    motion since it was last seen, and new boxes are matched against tracks moved by
    it, so IoU matching survives a pan even when frames are far apart. A live stream
    that drops frames holds boxes for longer, so this matters there most. Each region
    then gets ``pad`` of its width/height added on every side; a line of text
    (:data:`~streams.media.text.LINE_KINDS`) gets ``line_pad`` line heights, and grows
    by ``grow_per_s`` line heights per second while held (a fraction of a 400-px
    line's width would blur half the picture).

    Args:
        hold_s: How long a track outlives its last detection, seconds of content time.
        hold_by_label: Per detector label, a longer or shorter ``hold_s`` (a 2 Hz OCR
            stage needs its boxes held between runs); a track keeps the longest hold
            of the detectors that found it.
        line_pad: Padding per side of a text line, in line heights.
        pad: Padding per side, as a fraction of the box's width and height.
        smooth: Weight of the new box in the moving average (1.0: no smoothing).
        match_iou: Smallest IoU for a box to continue a track.
        grow_per_s: Growth per side while held, fraction of the size per second.
        max_shift: Largest stretch along the velocity while held, fraction of the
            box's width/height (the camera-motion stretch is not capped: it is
            measured on the picture).
        motion_response: Smallest phase-correlation response (0-1) for a measured
            camera motion to be used.
    """

    name = "track"
    fails_per_item = True

    def __init__(
        self,
        *,
        hold_s: float = 0.5,
        hold_by_label: Mapping[str, float] | None = None,
        line_pad: float = 0.3,
        pad: float = PAD,
        smooth: float = 0.6,
        match_iou: float = 0.2,
        grow_per_s: float = 0.5,
        max_shift: float = 1.5,
        motion_response: float = 0.2,
    ) -> None:
        self.max_shift = max_shift
        self.motion_response = motion_response
        self._grey: NDArray[np.float32] | None = None
        self._window: NDArray[np.float32] | None = None
        self.hold_s = hold_s
        self.hold_by_label = dict(hold_by_label or {})
        self.line_pad = line_pad
        self.pad = pad
        self.smooth = smooth
        self.match_iou = match_iou
        self.grow_per_s = grow_per_s
        self._tracks: list[_Track] = []
        self._used: dict[str, int] = {}  # label -> pts of the last result consumed
        self._last_s: float | None = None

    @property
    def tracks(self) -> int:
        """Live tracks (for tests and stats)."""
        return len(self._tracks)

    def add(self, boxes: tuple[Box, ...], *, seen_s: float) -> None:
        """Feed boxes found outside the detect stages (the recheck pass) into the
        tracks, as seen at ``seen_s`` seconds of content time."""
        self._update(boxes, seen_s, hold_s=self.hold_s)

    def _camera_motion(self, image: NDArray[np.uint8]) -> tuple[float, float]:
        """Shift of the picture since the previous frame, frame pixels ((0, 0) when
        not measurable)."""
        height, width = image.shape[:2]
        small = (max(8, width // 4), max(8, height // 4))
        grey = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        if grey.ndim == 3:
            grey = cv2.cvtColor(grey, cv2.COLOR_BGR2GRAY)
        grey = grey.astype(np.float32)
        previous, self._grey = self._grey, grey
        if previous is None or previous.shape != grey.shape:
            return 0.0, 0.0
        if self._window is None or self._window.shape != grey.shape:
            self._window = cv2.createHanningWindow(small, cv2.CV_32F)
        (sx, sy), response = cv2.phaseCorrelate(previous, grey, self._window)
        if not (response >= self.motion_response and math.isfinite(sx) and math.isfinite(sy)):
            return 0.0, 0.0
        return sx * width / small[0], sy * height / small[1]

    def _update(self, boxes: tuple[Box, ...], now_s: float, *, hold_s: float) -> None:
        pairs = sorted(
            (
                (_iou(box, _shifted(track.box, track.dx, track.dy)), b, t)
                for b, box in enumerate(boxes)
                for t, track in enumerate(self._tracks)
                if track.box.kind == box.kind
            ),
            key=lambda pair: pair[0],
            reverse=True,
        )
        matched_boxes: set[int] = set()
        matched_tracks: set[int] = set()
        for iou, b, t in pairs:
            if iou < self.match_iou:
                break
            if b in matched_boxes or t in matched_tracks:
                continue
            matched_boxes.add(b)
            matched_tracks.add(t)
            track, box = self._tracks[t], boxes[b]
            a, old = self.smooth, _shifted(track.box, track.dx, track.dy)
            track.dx = track.dy = 0.0
            track.box = Box(
                min(box.x0, a * box.x0 + (1 - a) * old.x0),
                min(box.y0, a * box.y0 + (1 - a) * old.y0),
                max(box.x1, a * box.x1 + (1 - a) * old.x1),
                max(box.y1, a * box.y1 + (1 - a) * old.y1),
                box.kind,
                box.score,
            )
            dt = now_s - track.last_seen_s
            if track.seen is not None and dt > 0:
                track.vx = ((box.x0 + box.x1) - (track.seen.x0 + track.seen.x1)) / 2 / dt
                track.vy = ((box.y0 + box.y1) - (track.seen.y0 + track.seen.y1)) / 2 / dt
            track.seen = box
            track.last_seen_s = now_s
            track.hits += 1
            track.hold_s = max(track.hold_s, hold_s)
        for b, box in enumerate(boxes):
            if b not in matched_boxes:
                self._tracks.append(_Track(box=box, last_seen_s=now_s, seen=box, hold_s=hold_s))

    def process(self, chunk: VideoFrame) -> list[Item]:  # type: ignore[override]
        """Update the tracks from ``chunk``'s new results; set ``chunk.regions``."""
        frame = chunk
        if frame.failed_closed:
            return [frame]
        now = frame.start_s
        if self._last_s is not None and now < self._last_s - 1.0:
            self._tracks.clear()  # time went back (a new segment): start afresh
            self._used.clear()
            self._grey = None
        self._last_s = now
        sx, sy = self._camera_motion(frame.image)
        for track in self._tracks:
            track.dx += sx
            track.dy += sy
        for label, result in frame.detections.items():
            if self._used.get(label) == result.pts:
                continue
            self._used[label] = result.pts
            hold = self.hold_by_label.get(label, self.hold_s)
            self._update(result.boxes, frame.seconds(result.pts), hold_s=hold)
        self._tracks = [t for t in self._tracks if now - t.last_seen_s <= t.hold_s]
        moving = [(t.vx, t.vy) for t in self._tracks if t.hits > 1]
        common = tuple(float(v) for v in np.median(moving, axis=0)) if moving else (0.0, 0.0)
        regions = []
        for track in self._tracks:
            box = track.box
            held = max(0.0, now - track.last_seen_s)
            vx, vy = (track.vx, track.vy) if track.hits > 1 else common
            if held and (vx or vy):
                limit_x, limit_y = self.max_shift * box.width, self.max_shift * box.height
                dx = max(-limit_x, min(limit_x, vx * held))
                dy = max(-limit_y, min(limit_y, vy * held))
                box = _union(box, _shifted(track.box, dx, dy))
            if track.dx or track.dy:
                box = _union(box, _shifted(track.box, track.dx, track.dy))
            grow = self.grow_per_s * held
            if box.kind in LINE_KINDS:
                px = py = (self.line_pad + grow) * track.box.height
            else:
                px = (self.pad + grow) * track.box.width
                py = (self.pad + grow) * track.box.height
            regions.append(
                Box(box.x0 - px, box.y0 - py, box.x1 + px, box.y1 + py, box.kind, box.score)
            )
        frame.regions = regions
        return [frame]


class BlurStage(VideoStage):
    """Blurs the tracked regions, or the whole frame when a result is missing or stale.

    For every detector label in ``required``, the frame must carry a result no older
    than ``stale_s`` seconds of content time (``frame.pts - result.pts``); otherwise
    the whole frame is blurred (:func:`blur_full`) and marked ``failed_closed``. Else
    each of ``frame.regions`` is blurred in place (:func:`blur_region`) and
    ``frame.blurred`` counts them per kind.

    Args:
        required: Detector labels whose results must be fresh (e.g. ``("face",
            "plate")``); empty: blur whatever regions the frame carries.
        stale_s: Staleness budget, seconds (default :data:`STALE_S`).
        stale_by_label: Per label, another budget (the 2 Hz text stage:
            :data:`~streams.media.text.TEXT_STALE_S`).
    """

    name = "blur"
    fails_per_item = True

    def __init__(
        self,
        *,
        required: tuple[str, ...],
        stale_s: float = STALE_S,
        stale_by_label: Mapping[str, float] | None = None,
    ) -> None:
        self.required = required
        self.stale_s = stale_s
        self.stale_by_label = dict(stale_by_label or {})

    def stale(self, frame: VideoFrame) -> str | None:
        """The first required label whose result is missing or too old, else None."""
        for label in self.required:
            result = frame.detections.get(label)
            budget = self.stale_by_label.get(label, self.stale_s)
            if result is None or frame.seconds(frame.pts - result.pts) > budget:
                return label
        return None

    def process(self, chunk: VideoFrame) -> list[Item]:  # type: ignore[override]
        """Blur ``chunk`` (in place) or fail it closed; returns the frame."""
        frame = chunk
        if frame.failed_closed:
            return [frame]
        if self.stale(frame) is not None:
            return self.fail_closed(frame)
        counts: dict[str, int] = {}
        for box in frame.regions:
            if blur_region(frame.image, box):
                counts[box.kind] = counts.get(box.kind, 0) + 1
        frame.blurred = counts
        return [frame]


class RecheckStage(VideoStage):
    """A second look: runs a detector on the frame *after* blurring and blurs whatever
    it still finds (padded like the tracker pads), feeding those boxes to the tracker.

    In a crowd a detector misses faces next to other faces (on ``city.jpg`` YuNet
    scores a half-hidden face only once its neighbour is blurred); the second pass
    finds them, at the cost of a second detection per frame. Off in
    :func:`redaction_stages` unless asked for (``manage.py process_media`` asks).

    Args:
        detector: Usually the face detect stage's detector (same instance: stages of
            one graph run in one thread).
        tracker: Receives the new boxes, so the next frames hold them.
        pad: Padding per side, fraction of width/height (as :class:`TrackStage`).
        analysis_width: Widest analysis image, pixels.
    """

    fails_per_item = True

    def __init__(
        self,
        detector: Detector,
        *,
        tracker: TrackStage,
        pad: float = PAD,
        analysis_width: int = ANALYSIS_WIDTH,
    ) -> None:
        self.detector = detector
        self.tracker = tracker
        self.pad = pad
        self.analysis_width = analysis_width
        self.name = f"recheck_{detector.kind}"

    def process(self, chunk: VideoFrame) -> list[Item]:  # type: ignore[override]
        """Detect on the blurred ``chunk`` and blur what is found (in place).

        Raises:
            Exception: whatever the detector raised (this frame fails closed).
        """
        frame = chunk
        if frame.failed_closed:
            return [frame]
        small, factor = analysis_image(frame.image, self.analysis_width)
        boxes = detect_scaled(self.detector, small, factor)
        if not boxes:
            return [frame]
        self.tracker.add(tuple(boxes), seen_s=frame.start_s)
        counts = dict(frame.blurred)
        for box in boxes:
            px, py = self.pad * box.width, self.pad * box.height
            region = Box(box.x0 - px, box.y0 - py, box.x1 + px, box.y1 + py, box.kind)
            if blur_region(frame.image, region):
                counts[box.kind] = counts.get(box.kind, 0) + 1
                frame.regions.append(region)
        frame.blurred = counts
        return [frame]


def redaction_stages(
    *,
    face: Detector | None,
    plate: Detector | None,
    text: Detector | None = None,
    every: int = 1,
    stale_s: float = STALE_S,
    analysis_width: int = ANALYSIS_WIDTH,
    recheck: bool = False,
    plate_every: int | None = None,
    refresh: bool = False,
    hold_s: float = 0.5,
    text_background: bool = False,
    text_interval_s: float = TEXT_INTERVAL_S,
    text_stale_s: float = TEXT_STALE_S,
) -> list[Stage]:
    """The redaction chain for a video graph: detect (per detector) → track → blur
    (→ recheck faces).

    Args:
        face: Face detector, or None (faces not blurred).
        plate: Plate detector, or None.
        text: On-screen text detector (:class:`~streams.media.text.TextDetector`), or
            None. Runs every ``text_interval_s`` of content: in a
            :class:`BackgroundDetectStage` when ``text_background`` (live), else
            inline (files); its result may be ``text_stale_s`` old and its boxes are
            held :data:`~streams.media.text.TEXT_HOLD_S`.
        every: Run the detectors on every n-th frame.
        stale_s: Staleness budget of the blur stage, seconds.
        analysis_width: Widest analysis image, pixels.
        recheck: Add a :class:`RecheckStage` for faces (a second detection per frame).
        plate_every: Run the plate detector on every n-th frame (None: ``every``).
        refresh: Also run each detector whenever its carried result would be older
            than ``stale_s`` (``DetectStage.max_age_s``): skipping frames then never
            blurs a frame whole for staleness alone (live streams that drop frames).
        hold_s: How long the tracker holds a box after its last detection, seconds.
        text_background: Run the text detector on a background thread (live).
        text_interval_s: Content seconds between text detector runs.
        text_stale_s: Staleness budget of the text result, seconds.

    Returns:
        ``[]`` when all are None (frames pass unchanged), else the stages in order.
    """
    detectors = [d for d in (face, plate) if d is not None]
    if not detectors and text is None:
        return []
    stages: list[Stage] = [
        DetectStage(
            d,
            every=plate_every if d is plate and plate_every is not None else every,
            analysis_width=analysis_width,
            max_age_s=stale_s if refresh else None,
        )
        for d in detectors
    ]
    required = [d.kind for d in detectors]
    if text is not None:
        label = "text"
        if text_background:
            stages.append(
                BackgroundDetectStage(
                    text, label=label, interval_s=text_interval_s, analysis_width=analysis_width
                )
            )
        else:
            stages.append(
                DetectStage(
                    text,
                    label=label,
                    every=None,
                    analysis_width=analysis_width,
                    max_age_s=text_interval_s,
                )
            )
        required.append(label)
    tracker = TrackStage(hold_s=hold_s, hold_by_label={"text": max(hold_s, TEXT_HOLD_S)})
    stages.append(tracker)
    stages.append(
        BlurStage(required=tuple(required), stale_s=stale_s, stale_by_label={"text": text_stale_s})
    )
    if recheck and face is not None:
        stages.append(RecheckStage(face, tracker=tracker, analysis_width=analysis_width))
    return stages


__all__ = [
    "ANALYSIS_WIDTH",
    "PAD",
    "STALE_S",
    "BackgroundDetectStage",
    "BlurStage",
    "DetectStage",
    "RecheckStage",
    "TrackStage",
    "VideoStage",
    "analysis_image",
    "blur_full",
    "blur_region",
    "detect_scaled",
    "laplacian_variance",
    "redaction_stages",
]
