"""What flows through a media graph: timestamped audio chunks, video frames, encoded
packets, events.

Every item carries ``pts`` (presentation timestamp, an integer count of ``time_base``
units) of the *content* it holds, as the source track stamped it; stages that delay
audio (DeepFilterNet3's 30 ms look-ahead, a broadcast delay line) keep that content
time, so a recording, a delay line or an audit trail can line items up with the
source. Audio uses ``time_base = 1/48000`` (one tick per sample at 48 kHz, the RTP
clock rate of Opus, RFC 7587 §4.1). Video frames keep the time base their source
stamped them in (a container stream's, e.g. ``1/15360``, or RTP's ``1/90000``, RFC 3551
§5). Same model as PyAV/FFmpeg (``AVFrame.pts`` in ``time_base``) and aiortc
(``Frame.pts``/``Frame.time_base``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
from numpy.typing import NDArray

SAMPLE_RATE = 48_000
"""Sample rate of every audio chunk in the engine, in Hz."""

AUDIO_TIME_BASE = Fraction(1, SAMPLE_RATE)
"""Time base of audio pts: one tick per sample at 48 kHz."""

BLOCK_SAMPLES = 960
"""Samples per live audio block: 20 ms at 48 kHz, one WebRTC Opus frame (RFC 7587)."""


@dataclass(slots=True)
class AudioChunk:
    """A run of float32 mono 48 kHz samples with its content timestamp.

    Attributes:
        samples: float32, shape ``(n,)``, nominal range [-1, 1].
        pts: Timestamp of ``samples[0]`` in ``time_base`` units (samples at 48 kHz).
        arrived: ``time.monotonic()`` when the source frame that produced it arrived
            (seconds); used for lag, deadlines and latency metrics.
        failed_closed: True when the samples are a stage's fail-closed output
            (silence or bleep) instead of processed audio.
        time_base: Always :data:`AUDIO_TIME_BASE`.
    """

    samples: NDArray[np.float32]
    pts: int
    arrived: float
    failed_closed: bool = False
    time_base: Fraction = AUDIO_TIME_BASE

    @property
    def end_pts(self) -> int:
        """``pts`` one past the last sample (``pts + n``)."""
        return self.pts + len(self.samples)

    @property
    def start_s(self) -> float:
        """``pts`` in seconds."""
        return float(self.pts * self.time_base)

    def replaced(self, samples: NDArray[np.float32], *, failed_closed: bool) -> AudioChunk:
        """A chunk with the same timing and other samples (same length expected)."""
        return AudioChunk(
            samples=samples, pts=self.pts, arrived=self.arrived, failed_closed=failed_closed
        )


@dataclass(slots=True)
class EncodedPacket:
    """One encoded media packet (e.g. an Opus frame) shared by every listener.

    Attributes:
        packet: The ``av.Packet``; its ``pts``/``time_base`` are set (aiortc's
            ``RTCRtpSender`` derives the RTP timestamp from them and only packetises).
        pts: Same as ``packet.pts``, in ``time_base`` units.
        time_base: Time base of ``pts`` (``1/48000`` for Opus).
        produced: ``time.monotonic()`` when the encoder emitted it.
        arrived: Arrival time of the source frame it was made from (monotonic, s).
        keyframe: True for a packet a decoder can start from (always for audio).
    """

    packet: av.Packet
    pts: int
    time_base: Fraction
    produced: float
    arrived: float
    keyframe: bool = True


@dataclass(slots=True)
class Event:
    """Something that happened to a time range of the stream, flowing beside media.

    Examples: ``Event("stage.failed", pts, pts, data={"stage": "deepfilternet3",
    "reason": "stalled"})``, ``Event("redact", start, end, data={"verdict": "unknown"})``.

    Attributes:
        kind: Dotted name of what happened.
        pts: Start of the affected range, in ``time_base`` units.
        end_pts: End of the range (exclusive); equal to ``pts`` for an instant.
        data: JSON-serialisable details (never raw media or recognised text).
        time_base: Time base of the range.
    """

    kind: str
    pts: int
    end_pts: int
    data: dict[str, Any] = field(default_factory=dict)
    time_base: Fraction = AUDIO_TIME_BASE

    @property
    def start_s(self) -> float:
        """Range start in seconds."""
        return float(self.pts * self.time_base)

    @property
    def end_s(self) -> float:
        """Range end in seconds."""
        return float(self.end_pts * self.time_base)


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned region of a video frame to redact, in full-frame pixels.

    Attributes:
        x0: Left edge, pixels from the frame's left (float; may lie outside the frame).
        y0: Top edge, pixels from the top.
        x1: Right edge (exclusive), ``> x0``.
        y1: Bottom edge (exclusive), ``> y0``.
        kind: What it covers: ``"face"``, ``"plate"``, ``"text"``.
        score: Detector confidence in [0, 1] (1.0 for detectors without one).
    """

    x0: float
    y0: float
    x1: float
    y1: float
    kind: str
    score: float = 1.0

    @property
    def width(self) -> float:
        """``x1 - x0`` in pixels."""
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        """``y1 - y0`` in pixels."""
        return self.y1 - self.y0

    def scaled(self, factor: float) -> Box:
        """This box with every coordinate multiplied by ``factor`` (analysis → frame)."""
        return Box(
            self.x0 * factor,
            self.y0 * factor,
            self.x1 * factor,
            self.y1 * factor,
            self.kind,
            self.score,
        )


@dataclass(frozen=True, slots=True)
class Detections:
    """One detector's result: the boxes it found in the frame stamped ``pts``.

    A video frame carries the newest result of each detector; when a detector did not
    run on that frame (it runs every n-th frame, or fell behind) the result is an older
    frame's, and ``frame.pts - pts`` is its age, which the blur stage compares with its
    staleness budget.

    Attributes:
        detector: The detector's name (``"face"``, ``"plate"``).
        pts: pts of the frame the detector analysed, in that frame's ``time_base``.
        boxes: What it found, in full-frame pixels.
    """

    detector: str
    pts: int
    boxes: tuple[Box, ...]


@dataclass(slots=True)
class VideoFrame:
    """One decoded picture with its content timestamp and what the stages found in it.

    Attributes:
        image: uint8 BGR pixels (OpenCV's channel order), shape ``(height, width, 3)``,
            C-contiguous. Stages that change pixels write a new array or this one in
            place; nobody else holds it.
        pts: Presentation timestamp in ``time_base`` units, as the source stamped it
            (relative to the source's first frame for files).
        time_base: Seconds per pts tick (e.g. ``1/15360`` from an MP4 stream, ``1/90000``
            from RTP).
        arrived: ``time.monotonic()`` when the source frame arrived (seconds).
        duration: Nominal display duration in ``time_base`` ticks (0 if unknown).
        failed_closed: True when the picture is a stage's fail-closed output (the whole
            frame blurred) instead of the processed frame.
        detections: Newest result per detector name (see :class:`Detections`).
        regions: Stabilised regions to blur (set by the tracking stage).
        blurred: Regions blurred in this frame per kind (set by the blur stage), e.g.
            ``{"face": 3, "plate": 1}``; counted into the stream's metrics.
    """

    image: NDArray[np.uint8]
    pts: int
    time_base: Fraction
    arrived: float
    duration: int = 0
    failed_closed: bool = False
    detections: dict[str, Detections] = field(default_factory=dict)
    regions: list[Box] = field(default_factory=list)
    blurred: dict[str, int] = field(default_factory=dict)

    @property
    def end_pts(self) -> int:
        """``pts + duration``."""
        return self.pts + self.duration

    @property
    def start_s(self) -> float:
        """``pts`` in seconds."""
        return float(self.pts * self.time_base)

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return int(self.image.shape[0])

    def seconds(self, ticks: int) -> float:
        """``ticks`` of this frame's ``time_base`` in seconds."""
        return float(ticks * self.time_base)


MediaItem = AudioChunk | VideoFrame
"""What stages process: audio chunks and video frames (events pass stages untouched)."""

Item = AudioChunk | VideoFrame | EncodedPacket | Event
"""Anything a stage or sink may receive."""


def silence(n: int) -> NDArray[np.float32]:
    """``n`` zero samples, float32, shape ``(n,)``."""
    return np.zeros(n, dtype=np.float32)
