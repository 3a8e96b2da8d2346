"""Video files in and out of a media graph: a frame source and an MP4 (H.264 + AAC) writer.

* :func:`probe_video` tells whether a file has a picture stream (cover art of an
  audio file does not count) and its size, frame rate and timing.
* :class:`VideoFileSource` decodes the first video stream with PyAV into
  :class:`~streams.media.items.VideoFrame` items (BGR, pts in the stream's time base,
  counted from the file's first stream start so audio and video stay aligned).
* :class:`Mp4Writer` encodes frames with libx264 (yuv420p, ``+faststart`` so a browser
  can play and seek before the whole file arrives) and 48 kHz mono audio with FFmpeg's
  native AAC encoder into one MP4; :class:`VideoWriterSink` and
  :class:`AudioWriterSink` feed it from a video graph and an audio graph. Both sinks
  write through one single-thread executor, and the writer locks, so the muxer is
  never entered from two threads.

The output keeps the input's frame size and nominal frame rate: pts are re-timed onto
a ``1/rate`` grid (each frame to the nearest tick of its own time, never two frames on
one tick), so a constant-rate input comes out with exactly its rate. H.264 in 4:2:0
needs even sides: an odd width or height is padded by one replicated pixel row or
column (reported as ``padded``).

Imports nothing from Django.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from numpy.typing import NDArray

from streams.media.graph import QueuePolicy, Sink, Source
from streams.media.items import SAMPLE_RATE, AudioChunk, Item, VideoFrame

AAC_FRAME = 1024
"""Samples per AAC frame (ISO/IEC 14496-3 AAC-LC)."""

DEFAULT_RATE = Fraction(30)
"""Frame rate assumed when a file states none (fps)."""


class VideoDecodeError(ValueError):
    """A file cannot be opened or decoded as video."""


class VideoEncodeError(RuntimeError):
    """The MP4 output cannot be written."""


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What :func:`probe_video` found.

    Attributes:
        width: Frame width, pixels.
        height: Frame height, pixels.
        rate: Nominal frame rate, frames per second (average, else guessed, else 30).
        time_base: Time base of the video stream's pts.
        has_audio: Whether the file also has an audio stream.
        video_start_s: Start of the video stream relative to the earliest stream, s.
        audio_start_s: Start of the audio stream relative to the earliest stream, s.
        duration_s: Container duration, seconds (0.0 if unknown).
        codec: Name of the video codec (e.g. ``"h264"``).
    """

    width: int
    height: int
    rate: Fraction
    time_base: Fraction
    has_audio: bool
    video_start_s: float
    audio_start_s: float
    duration_s: float
    codec: str


def _picture_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    for stream in container.streams.video:
        disposition = int(stream.disposition)
        if disposition & int(av.stream.Disposition.attached_pic):
            continue  # cover art of an audio file
        return stream
    return None


def _start_s(stream: av.stream.Stream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def probe_video(path: Path) -> VideoInfo | None:
    """The video properties of ``path``, or None when it has no picture stream.

    Raises:
        VideoDecodeError: the file cannot be opened by PyAV (FFmpeg).
    """
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(f"{path}: cannot open ({exc})") from exc
    with container:
        video = _picture_stream(container)
        if video is None:
            return None
        audio = container.streams.audio[0] if container.streams.audio else None
        starts = [_start_s(video)] + ([_start_s(audio)] if audio is not None else [])
        origin = min(starts)
        rate = video.average_rate or video.guessed_rate or DEFAULT_RATE
        return VideoInfo(
            width=int(video.codec_context.width),
            height=int(video.codec_context.height),
            rate=Fraction(rate),
            time_base=Fraction(video.time_base or Fraction(1, 90_000)),
            has_audio=audio is not None,
            video_start_s=_start_s(video) - origin,
            audio_start_s=(_start_s(audio) - origin) if audio is not None else 0.0,
            duration_s=float(container.duration or 0) / av.time_base,
            codec=video.codec_context.name,
        )


class VideoFileSource(Source):
    """Frames of the first picture stream of a file, decoded (in a thread) as they go.

    Each frame becomes a :class:`VideoFrame`: BGR uint8 pixels, the stream's
    ``time_base``, and pts counted from the earliest stream's start (so the first
    frame of a file whose audio starts first is not at 0). A frame without pts gets
    the previous one's plus one nominal frame duration.

    Args:
        path: The file.

    Raises (from :meth:`open` and :meth:`read`):
        VideoDecodeError: unreadable file, no picture stream, or a decoding error.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._origin = 0
        self._time_base = Fraction(1, 90_000)
        self._step = 0
        self._last_pts: int | None = None
        self.info: VideoInfo | None = None

    def open(self) -> None:
        """Open the file (blocking; call from a worker thread or before the loop)."""
        info = probe_video(self.path)
        if info is None:
            raise VideoDecodeError(f"{self.path}: no video stream")
        self.info = info
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoDecodeError(f"{self.path}: cannot open ({exc})") from exc
        stream = _picture_stream(self._container)
        assert stream is not None  # probed above
        stream.thread_type = "AUTO"
        self._time_base = info.time_base
        start = stream.start_time or 0
        self._origin = start - round(info.video_start_s / info.time_base)
        self._step = max(1, round(1 / (info.rate * info.time_base)))
        self._frames = self._container.decode(stream)

    def _next(self) -> VideoFrame | None:
        if self._frames is None:
            self.open()
        try:
            frame = next(self._frames, None)  # type: ignore[arg-type]
            if frame is None:
                return None
            image = frame.to_ndarray(format="bgr24")
        except (av.FFmpegError, ValueError) as exc:
            raise VideoDecodeError(f"{self.path}: cannot decode video ({exc})") from exc
        if frame.pts is not None:
            pts = frame.pts - self._origin
        else:
            pts = 0 if self._last_pts is None else self._last_pts + self._step
        self._last_pts = pts
        return VideoFrame(
            image=np.ascontiguousarray(image),
            pts=pts,
            time_base=self._time_base,
            arrived=time.monotonic(),
            duration=int(frame.duration or self._step),
        )

    async def read(self) -> VideoFrame | None:
        """The next frame, decoded in a thread; None at the end of the file."""
        return await asyncio.to_thread(self._next)

    def close(self) -> None:
        """Close the container (idempotent)."""
        if self._container is not None:
            self._container.close()
            self._container = None
            self._frames = None


class Mp4Writer:
    """One MP4 file: an H.264 video track and, optionally, an AAC audio track.

    Args:
        path: File to write (replaced).
        width: Frame width of the input, pixels.
        height: Frame height, pixels.
        rate: Frame rate, fps; output pts are on a ``1/rate`` grid.
        audio: Whether to add a 48 kHz mono AAC track.
        crf: x264 constant rate factor (lower: better; 18-23 is visually good).
        preset: x264 speed preset.
        audio_bitrate: AAC bit rate, bits per second.
        movflags: FFmpeg's mp4 muxer flags: ``+faststart`` (index first, for a file
            written in one go) or, for a crash-tolerant file written while live,
            ``frag_keyframe+empty_moov+default_base_moof`` (see
            :mod:`streams.media.mp4_live`).
        gop: Largest distance between keyframes, frames (None: x264's default).

    Raises:
        VideoEncodeError: the file or an encoder cannot be opened.
    """

    def __init__(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        rate: Fraction,
        audio: bool,
        crf: int = 20,
        preset: str = "veryfast",
        audio_bitrate: int = 96_000,
        movflags: str = "+faststart",
        gop: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.width, self.height = width, height
        self.rate = Fraction(rate)
        self.padded = bool(width % 2 or height % 2)
        self._lock = threading.Lock()
        self._last_tick: int | None = None
        self._audio_buffer = np.zeros(0, dtype=np.float32)
        self._audio_next: int | None = None  # pts (48 kHz) of the buffer's first sample
        self.frames = 0
        self.audio_samples = 0
        self._closed = False
        try:
            self._container = av.open(
                str(self.path),
                "w",
                format="mp4",
                # A fragmented file is flushed to disk packet by packet, so each
                # finished fragment is on disk, not in FFmpeg's 32 KiB I/O buffer.
                options={"movflags": movflags}
                | ({"flush_packets": "1"} if "frag_keyframe" in movflags else {}),
            )
            video = self._container.add_stream("libx264", rate=self.rate)
            video.width = width + width % 2
            video.height = height + height % 2
            video.pix_fmt = "yuv420p"
            video.codec_context.time_base = 1 / self.rate
            video.options = {"crf": str(crf), "preset": preset} | (
                {"g": str(gop), "keyint_min": str(gop)} if gop else {}
            )
            self._video = video
            self._audio: av.AudioStream | None = None
            if audio:
                stream = self._container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
                stream.bit_rate = audio_bitrate
                self._audio = stream
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoEncodeError(f"cannot write {self.path}: {exc}") from exc

    def _tick(self, frame: VideoFrame) -> int:
        tick = round(frame.start_s * self.rate)
        if self._last_tick is not None and tick <= self._last_tick:
            tick = self._last_tick + 1
        self._last_tick = tick
        return tick

    def write_frame(self, frame: VideoFrame) -> None:
        """Encode and mux one frame (BGR uint8, the input's size).

        Raises:
            VideoEncodeError: wrong size, or the encoder/muxer failed.
        """
        image = frame.image
        if image.shape[:2] != (self.height, self.width):
            raise VideoEncodeError(
                f"frame is {image.shape[1]}x{image.shape[0]}, the file {self.width}x{self.height}"
            )
        if self.padded:
            image = cv2.copyMakeBorder(
                image, 0, self.height % 2, 0, self.width % 2, cv2.BORDER_REPLICATE
            )
        with self._lock:
            out = av.VideoFrame.from_ndarray(image, format="bgr24")
            out.pts = self._tick(frame)
            out.time_base = 1 / self.rate
            try:
                for packet in self._video.encode(out):
                    self._container.mux(packet)
            except (av.FFmpegError, ValueError) as exc:
                raise VideoEncodeError(f"cannot encode video into {self.path}: {exc}") from exc
            self.frames += 1

    def write_audio(self, samples: NDArray[np.float32], pts: int) -> None:
        """Append float32 mono 48 kHz samples, shape ``(n,)``; encoded in 1024-sample
        AAC frames.

        ``pts`` (48 kHz ticks on the file's timeline) places the first call's samples
        (samples before 0 are dropped); later calls must continue contiguously, as a
        graph's trimmed output does.

        Raises:
            VideoEncodeError: no audio track, or the encoder/muxer failed.
        """
        if self._audio is None:
            raise VideoEncodeError("this MP4 has no audio track")
        with self._lock:
            if self._audio_next is None:
                self._audio_next = max(0, pts)
                if pts < 0:
                    samples = samples[-pts:]
            self._audio_buffer = np.concatenate([self._audio_buffer, samples])
            self._encode_audio(final=False)

    def _encode_audio(self, *, final: bool) -> None:
        assert self._audio is not None and self._audio_next is not None
        buffer = self._audio_buffer
        start = 0
        try:
            while len(buffer) - start >= AAC_FRAME or (final and start < len(buffer)):
                part = buffer[start : start + AAC_FRAME]
                frame = av.AudioFrame.from_ndarray(
                    np.clip(part, -1.0, 1.0).reshape(1, -1), format="fltp", layout="mono"
                )
                frame.sample_rate = SAMPLE_RATE
                frame.pts = self._audio_next
                frame.time_base = Fraction(1, SAMPLE_RATE)
                for packet in self._audio.encode(frame):
                    self._container.mux(packet)
                self._audio_next += len(part)
                self.audio_samples += len(part)
                start += len(part)
        except (av.FFmpegError, ValueError) as exc:
            raise VideoEncodeError(f"cannot encode audio into {self.path}: {exc}") from exc
        self._audio_buffer = buffer[start:]

    def close(self) -> None:
        """Flush the encoders and finish the file (idempotent).

        Raises:
            VideoEncodeError: flushing or writing the index failed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._audio is not None and self._audio_next is not None:
                    self._encode_audio(final=True)
                for stream in (self._video, self._audio):
                    if stream is not None:
                        for packet in stream.encode(None):
                            self._container.mux(packet)
            except (av.FFmpegError, ValueError) as exc:
                raise VideoEncodeError(f"cannot finish {self.path}: {exc}") from exc
            finally:
                self._container.close()


class VideoWriterSink(Sink):
    """Encodes every :class:`VideoFrame` into an :class:`Mp4Writer` (in ``executor``).

    Lossless; over a file the runner waits for room (backpressure), so a slow encoder
    slows the run instead of dropping frames.

    Args:
        writer: Where frames go; the owner closes it after every sink is done.
        executor: A single-thread executor shared with the audio sink.
        max_items: Queue bound, frames.
    """

    name = "mp4_video"
    policy = QueuePolicy.LOSSLESS

    def __init__(self, writer: Mp4Writer, executor: Executor, *, max_items: int = 8) -> None:
        self.writer = writer
        self.executor = executor
        self.max_items = max_items
        self.error: Exception | None = None  # the write that failed (the sink stops)

    async def write(self, item: Item) -> None:
        """Encode a frame (other items are ignored)."""
        if isinstance(item, VideoFrame):
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self.executor, self.writer.write_frame, item)
            except Exception as exc:
                self.error = exc
                raise


class AudioWriterSink(Sink):
    """Encodes every :class:`AudioChunk` into an :class:`Mp4Writer`'s AAC track.

    Args:
        writer: Where audio goes (must have an audio track).
        executor: The same single-thread executor as the video sink's.
        offset: Added to each chunk's pts (48 kHz ticks): where the audio stream starts
            on the file's timeline (see :attr:`VideoInfo.audio_start_s`).
        batch: Chunks per executor job.
    """

    name = "mp4_audio"
    policy = QueuePolicy.LOSSLESS
    max_items = 3000

    def __init__(
        self, writer: Mp4Writer, executor: Executor, *, offset: int = 0, batch: int = 25
    ) -> None:
        self.writer = writer
        self.executor = executor
        self.offset = offset
        self.batch = max(1, batch)
        self._pending: list[AudioChunk] = []
        self.error: Exception | None = None  # the write that failed (the sink stops)

    async def write(self, item: Item) -> None:
        """Queue a chunk; every ``batch`` chunks are encoded in one executor job."""
        if isinstance(item, AudioChunk):
            self._pending.append(item)
            if len(self._pending) >= self.batch:
                await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        chunks, self._pending = self._pending, []
        samples = np.concatenate([c.samples for c in chunks]).astype(np.float32, copy=False)
        pts = chunks[0].pts + self.offset
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self.writer.write_audio, samples, pts)
        except Exception as exc:
            self.error = exc
            raise

    async def close(self) -> None:
        """Encode what is still pending."""
        await self._flush()


__all__ = [
    "AudioWriterSink",
    "Mp4Writer",
    "VideoDecodeError",
    "VideoEncodeError",
    "VideoFileSource",
    "VideoInfo",
    "VideoWriterSink",
    "probe_video",
]
