"""Live video: a broadcaster's camera track → redaction stages → one VP8 encoder → listeners.

::

    aiortc track ──▶ VideoTrackSource ──▶ [detect faces ─▶ detect plates ─▶ track ─▶ blur]
    (decoded                               (GraphRunner: worker thread, deadline, frames
     av.VideoFrame)                          late by more than max_lag_s fail closed)
                                                              │
                                   VideoRelaySink ──▶ Relay(Vp8Encoder) ──▶ RelayTrack per listener

The redaction itself is :mod:`streams.media.video`; this module only adapts the ends:

* :class:`VideoTrackSource` turns aiortc's decoded frames into
  :class:`~streams.media.items.VideoFrame` items (BGR, pts unwrapped from the 32-bit
  90 kHz RTP clock and counted from the first frame). It keeps only the newest frame
  while the stages are busy: an overloaded server sends fewer frames per second, each
  redacted, instead of queued frames that go stale and leave fully blurred.
* :class:`Vp8Encoder` encodes each redacted frame **once** (libvpx through PyAV, the
  real-time settings aiortc's own ``Vp8Encoder`` uses), and the
  :class:`~streams.media.relay.Relay` hands the same ``av.Packet`` to every listener's
  sender, which only packetises it (RFC 7741 payload descriptor, written by aiortc's
  ``Vp8Encoder.pack``). A new listener, a dropped packet or a PLI/FIR asks for a
  keyframe (:meth:`Relay.request_keyframe`).

Only frames that left the redaction stages reach the encoder: the sink is the graph's
only consumer. Imports nothing from Django.
"""

from __future__ import annotations

import asyncio
import math
import time
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streams.media.detectors import Detector
from streams.media.graph import QueuePolicy, Sink, Source
from streams.media.items import Item, VideoFrame
from streams.media.relay import Relay
from streams.media.stage import Stage
from streams.media.video import redaction_stages

RTP_VIDEO_TIME_BASE = Fraction(1, 90_000)
"""Time base of RTP video timestamps (90 kHz clock, RFC 3551 §5)."""

VIDEO_BITRATE = 1_000_000
"""Target bits per second of the shared VP8 encoder (640x480 at 15-30 fps)."""

KEYFRAME_INTERVAL = 150
"""Frames between unforced keyframes (10 s at 15 fps): a listener whose PLI was lost
still recovers."""

LIVE_FACE_EVERY = 1
"""The live face detector runs on every processed frame. The source drops frames when
the server is behind, so processed frames can be 0.1-0.3 s apart: a face box carried
to the next frame would lag a moving face by that much (``bench/video.py --live``)."""

LIVE_PLATE_EVERY = 3
"""The live plate detector (Haar, the costliest stage: ~50 ms mean, p95 ~130 ms per
640x480 frame on the loaded 2-core machine) runs on every 3rd processed frame, and
sooner whenever its result would be older than the staleness budget; the tracker
holds, stretches and grows plate boxes in between."""

LIVE_HOLD_S = 1.0
"""How long a live face or plate box is held after its detector last found it (files:
0.5 s). A dropping source processes ~4-8 frames per second on the loaded 2-core
machine, so 0.5 s gave a face only 2-4 chances to be found again; one small face of
``city.jpg`` scores 0.30-0.39 with YuNet (threshold 0.3) and after VP8 is sometimes
missed for longer than that (``tests/test_video_live.py`` caught it). The tracker's
velocity stretch keeps a held box on a face that moves with the camera."""


def live_redaction_stages(
    *,
    face: Detector | None,
    plate: Detector | None,
    stale_s: float,
    text: Detector | None = None,
) -> list[Stage]:
    """The redaction stages of a live camera (see :func:`redaction_stages`).

    Faces every frame (:data:`LIVE_FACE_EVERY`), plates every 3rd
    (:data:`LIVE_PLATE_EVERY`), each re-run whenever its result would be older than
    ``stale_s`` (so skipping never blurs a frame whole), boxes held for
    :data:`LIVE_HOLD_S`, and the recheck pass (a second face detection on the blurred
    frame). The recheck is kept although it costs ~20-30 ms a frame (processed fps
    8.9 with it, 13.0 without, in one ``bench/video.py --live`` run): before the
    tracker followed camera motion, 10 s pans of ``city.jpg`` left 8-23 face
    detections (YuNet >= 0.45 or CenterFace >= 0.3 on an annotated face) in the
    redacted output without it and 1-3 with it; with camera-motion tracking, four
    runs left 0, 0, 0 and 2 without it and 1, 0, 0, 0 with it (the 1: a face half out
    of the picture, CenterFace 0.30). It finds faces the first pass misses next to
    other faces. On-screen text (``text``) is read on a background thread twice a
    second (:class:`~streams.media.video.BackgroundDetectStage`): frames never wait
    for the OCR, and one whose newest text result is older than
    :data:`~streams.media.text.TEXT_STALE_S` leaves blurred whole.

    Args:
        face: Face detector (None: faces not blurred).
        plate: Plate detector (None: plates not blurred).
        stale_s: Staleness budget of faces and plates, seconds.
        text: On-screen personal-text detector (None: text not blurred).
    """
    return redaction_stages(
        face=face,
        plate=plate,
        text=text,
        text_background=True,
        every=LIVE_FACE_EVERY,
        plate_every=LIVE_PLATE_EVERY,
        refresh=True,
        stale_s=stale_s,
        recheck=True,
        hold_s=LIVE_HOLD_S,
    )


class FrameRateMeter:
    """Frames per second the camera sent and the graph passed on, between two readings.

    The live source keeps only the newest frame while the stages are busy, so an
    overloaded stream shows as a falling frame rate, not as late frames; this measures
    it for the broadcaster's page (camera frames = frames in + frames dropped; frames
    passed on = frames in: redacted or blurred whole, each one sent).

    Args:
        min_interval_s: Readings closer together than this return the last rates.
    """

    def __init__(self, *, min_interval_s: float = 0.5) -> None:
        self.min_interval_s = min_interval_s
        self._last: tuple[float, int, int] | None = None
        self._rates: tuple[float, float] | None = None

    def update(
        self, *, now_s: float, camera_frames: int, sent_frames: int
    ) -> tuple[float, float] | None:
        """Rates ``(camera fps, sent fps)`` since the previous reading (monotonic
        seconds ``now_s``, cumulative frame counts); None on the first reading."""
        last = self._last
        if last is not None and now_s - last[0] < self.min_interval_s:
            return self._rates
        self._last = (now_s, camera_frames, sent_frames)
        if last is not None:
            elapsed = now_s - last[0]
            self._rates = (
                max(0, camera_frames - last[1]) / elapsed,
                max(0, sent_frames - last[2]) / elapsed,
            )
        return self._rates


class VideoTrackSource(Source):
    """Video frames from an aiortc ``MediaStreamTrack`` (decoded ``av.VideoFrame``).

    Each frame becomes a :class:`VideoFrame`: BGR uint8 ``(h, w, 3)`` pixels (converted
    in a thread), ``time_base`` 1/90000, pts counted from the first frame with the
    32-bit RTP wrap-around removed, ``arrived`` = when ``recv()`` returned it.

    With ``newest_only`` (the default; :attr:`Source.newest_only`) a task receives
    frames as they come and keeps only the newest until :meth:`read` takes it; each
    frame it replaces is counted in :attr:`dropped` and goes nowhere (never converted,
    processed or sent). The :class:`~streams.media.graph.GraphRunner` reads such a
    source only when its stages are free, so a frame waits at most one frame's
    processing time. Without it, every frame is read in order (files, tests).

    The track may be replaced mid-stream (:meth:`replace`: the broadcaster's page
    reconnected with a new peer connection, as :class:`~streams.media.graph.TrackSource`
    for the microphone). The new track's frames continue the same timeline: its first
    frame is placed the wall-clock time without frames after the previous track's last
    one (at least one 90 kHz tick later), so the redaction stages see the gap as content
    time (held boxes and carried detections expire as they would in a pause) and the
    MP4 recording keeps increasing timestamps. Nothing is produced during the gap.

    Args:
        track: The camera track.
        newest_only: Keep only the newest frame while the graph is busy.
        hold_s: When a track ends, wait this many seconds for a :meth:`replace` before
            ending the stream; 0 (default) ends it at once.
    """

    def __init__(
        self, track: MediaStreamTrack, *, newest_only: bool = True, hold_s: float = 0.0
    ) -> None:
        self.track = track
        self.newest_only = newest_only
        self.hold_s = hold_s
        self.dropped = 0
        self.replacements = 0  # tracks taken over by replace()
        self._first: int | None = None
        self._last_raw = 0
        self._wraps = 0
        self._base = 0  # ticks added to the current track's pts (replacements)
        self._last_pts: int | None = None
        self._last_arrived: float | None = None  # monotonic time of the last frame read
        self._gap_due = False  # the next frame is a replacement's first
        self._pending: tuple[av.VideoFrame, float] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._ready = asyncio.Event()
        self._replaced = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    def replace(self, track: MediaStreamTrack) -> None:
        """Read ``track`` from now on instead of the current one (ended or not).

        A frame of the previous track not yet read is dropped (counted in
        :attr:`dropped`); a read waiting for frames or for a replacement reads this one.
        """
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        self._pump = None
        if self._pending is not None:
            self._pending = None
            self.dropped += 1
        self.track = track
        self.replacements += 1
        self._gap_due = True
        self._ended = False
        self._error = None
        self._replaced.set()
        self._ready.set()

    async def _receive(self, track: MediaStreamTrack) -> None:
        """Receive ``track``'s frames until it ends, keeping only the newest."""
        try:
            while True:
                frame = await track.recv()
                if track is not self.track:
                    return
                if self._pending is not None:
                    self.dropped += 1
                self._pending = (frame, time.monotonic())
                self._ready.set()
        except MediaStreamError:
            pass
        except Exception as exc:  # raised to the runner by the next read
            if track is self.track:
                self._error = exc
        finally:
            if track is self.track:  # a replaced track's end is not the stream's
                self._ended = True
                self._ready.set()

    async def _replacement(self) -> bool:
        """Wait up to ``hold_s`` for :meth:`replace`; whether one came."""
        if self.hold_s <= 0:
            return False
        self._replaced.clear()
        try:
            await asyncio.wait_for(self._replaced.wait(), self.hold_s)
        except TimeoutError:
            return False
        return True

    async def _next(self) -> tuple[av.VideoFrame, float] | None:
        """The next (newest) decoded frame and when it arrived; None at the end."""
        if not self.newest_only:
            while True:
                track = self.track
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    if self.track is track and not await self._replacement():
                        return None
                    continue
                if self.track is track:  # else replaced meanwhile: read the new one
                    return frame, time.monotonic()
        while self._pending is None:
            if self._ended:
                if self._error is not None:
                    raise self._error
                if not await self._replacement():
                    return None
                continue
            if self._pump is None:
                self._pump = asyncio.ensure_future(self._receive(self.track))
            self._ready.clear()
            await self._ready.wait()
        pending, self._pending = self._pending, None
        return pending

    def close(self) -> None:
        """Stop receiving (idempotent); a frame not yet read is dropped."""
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        self._pending = None

    def _pts(self, raw: int | None) -> int:
        if raw is None:  # no timestamp: one nominal 15 fps step after the last
            return 0 if self._last_pts is None else self._last_pts + 6000
        if self._first is None:
            self._first = raw
            self._last_raw = raw
        if raw < self._last_raw and self._last_raw - raw > 1 << 31:
            self._wraps += 1
        self._last_raw = raw
        return raw + (self._wraps << 32) - self._first + self._base

    def _continue_after_gap(self, arrived: float) -> None:
        """A replacement's first frame (arrived at ``arrived``): its pts start where
        the previous track's last frame was, plus the time without frames."""
        self._gap_due = False
        self._first = None
        self._wraps = 0
        if self._last_pts is None or self._last_arrived is None:
            return
        gap = round(max(0.0, arrived - self._last_arrived) / RTP_VIDEO_TIME_BASE)
        self._base = self._last_pts + max(1, gap)

    async def read(self) -> VideoFrame | None:
        """The next decoded frame (the newest, with ``newest_only``); None once the
        track ended.

        Raises:
            Exception: what the track's ``recv()`` raised other than its end.
        """
        received = await self._next()
        if received is None:
            return None
        frame, arrived = received
        if self._gap_due:
            self._continue_after_gap(arrived)
        raw = frame.pts
        if (
            raw is not None
            and frame.time_base is not None
            and frame.time_base != (RTP_VIDEO_TIME_BASE)
        ):
            raw = round(raw * frame.time_base / RTP_VIDEO_TIME_BASE)
        pts = self._pts(raw)
        self._last_pts = pts
        self._last_arrived = arrived
        image = await asyncio.to_thread(frame.to_ndarray, format="bgr24")
        return VideoFrame(
            image=np.ascontiguousarray(image),
            pts=pts,
            time_base=RTP_VIDEO_TIME_BASE,
            arrived=arrived,
        )


class Vp8Encoder:
    """The shared VP8 encoder of a video relay: redacted frames in, one packet each out.

    libvpx through PyAV, real time (``deadline=realtime``, ``cpu-used=-6``, no
    look-ahead: one packet per frame, at once), constant bit rate
    :data:`VIDEO_BITRATE`, the settings aiortc 1.16's ``codecs/vpx.py`` uses for its
    per-sender encoder. A change of frame size starts a new codec (and a keyframe).
    Packets keep the frame's pts, ``time_base`` 1/90000.

    Args:
        bitrate: Target bits per second.
        keyframe_interval: Frames between unforced keyframes.
    """

    kind = "video"

    def __init__(
        self, *, bitrate: int = VIDEO_BITRATE, keyframe_interval: int = KEYFRAME_INTERVAL
    ) -> None:
        self.bitrate = bitrate
        self.keyframe_interval = keyframe_interval
        self.codec: av.VideoCodecContext | None = None
        self.frames = 0

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height = width, height
        codec.pix_fmt = "yuv420p"
        codec.time_base = RTP_VIDEO_TIME_BASE
        codec.bit_rate = self.bitrate
        codec.gop_size = self.keyframe_interval
        codec.qmin, codec.qmax = 2, 56
        codec.options = {
            "bufsize": str(self.bitrate),
            "cpu-used": "-6",
            "deadline": "realtime",
            "lag-in-frames": "0",
            "minrate": str(self.bitrate),
            "maxrate": str(self.bitrate),
            "static-thresh": "1",
            "undershoot-pct": "100",
            "overshoot-pct": "15",
        }
        codec.thread_count = 1
        return codec

    def encode(self, chunk: VideoFrame, *, keyframe: bool = False) -> list[av.Packet]:
        """Encode one BGR frame; a keyframe when ``keyframe`` or the codec is new."""
        width, height = chunk.width - chunk.width % 2, chunk.height - chunk.height % 2
        if self.codec is not None and (self.codec.width, self.codec.height) != (width, height):
            self.codec = None
        if self.codec is None:
            self.codec = self._open(width, height)
            keyframe = True
        image = chunk.image[:height, :width]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = round(chunk.pts * chunk.time_base / RTP_VIDEO_TIME_BASE)
        frame.time_base = RTP_VIDEO_TIME_BASE
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        packets = list(self.codec.encode(frame))
        self.frames += 1
        for packet in packets:
            packet.time_base = RTP_VIDEO_TIME_BASE
            if packet.pts is None:
                packet.pts = frame.pts
        return packets

    def close(self) -> None:
        """Drop the codec context."""
        self.codec = None


class VideoRelaySink(Sink):
    """The video graph's sink: each redacted frame to a :class:`Relay` (encoded once).

    Drop-oldest with a short queue (4 frames): live video never waits, and a frame that
    waited is not worth sending late. With ``delay_s`` (a bleeped broadcast's audio
    delay line) each frame is held until ``delay_s`` after it arrived, so the picture
    does not lead the sound; the queue then holds that many seconds of frames.

    Args:
        relay: The video relay.
        delay_s: Hold each frame until this long after its arrival, seconds (0: none).
        max_rate: Frames per second the queue is sized for while delaying.
    """

    name = "video_relay"
    policy = QueuePolicy.DROP_OLDEST
    max_items = 4

    def __init__(self, relay: Relay, *, delay_s: float = 0.0, max_rate: int = 30) -> None:
        self.relay = relay
        self.delay_s = max(0.0, delay_s)
        self.max_items = 4 + math.ceil(self.delay_s * max_rate)

    async def write(self, item: Item) -> None:
        """Publish video frames (after the delay); events are not relayed."""
        if isinstance(item, VideoFrame):
            if self.delay_s:
                await asyncio.sleep(max(0.0, item.arrived + self.delay_s - time.monotonic()))
            await self.relay.publish(item)


__all__ = [
    "KEYFRAME_INTERVAL",
    "LIVE_FACE_EVERY",
    "LIVE_HOLD_S",
    "LIVE_PLATE_EVERY",
    "RTP_VIDEO_TIME_BASE",
    "VIDEO_BITRATE",
    "FrameRateMeter",
    "VideoRelaySink",
    "VideoTrackSource",
    "Vp8Encoder",
    "live_redaction_stages",
]
