"""Crash-tolerant MP4 recording of a live video broadcast.

While live, :class:`LiveMp4Recorder` writes processed video (H.264) and audio (AAC,
48 kHz mono) as a *fragmented* MP4 (FFmpeg movflags
``frag_keyframe+empty_moov+default_base_moof``, as in ISO/IEC 14496-12 §8.8 movie
fragments): the track headers come first (an empty ``moov``) and each keyframe starts
a ``moof``+``mdat`` pair that is complete on disk once the next one begins. A process
killed mid-write (``kill -9``, power loss) therefore leaves a file whose fragments up
to the last whole one decode; at most one keyframe interval (:data:`LIVE_GOP_S`) and
the muxer's buffer are lost.

Encoding runs on one worker thread fed through a bounded queue: the event loop only
enqueues (:meth:`LiveMp4Recorder.push_frame`, :meth:`~LiveMp4Recorder.push_audio`
never block), and when the encoder falls behind the newest items are dropped and
counted (fail closed: a dropped frame is missing from the recording, never shown
unprocessed). :class:`LiveMp4Sink` puts it at the end of a media graph.

:meth:`LiveMp4Recorder.finalise` drains the queue, closes the fragment file and
rewrites it (stream copy, no re-encoding) as a normal seekable MP4 with the index
first (``+faststart``); :func:`mp4_fragments_finish` does the same for a fragment
file a crash left, so start-up repair can finish it.

Imports nothing from Django.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import queue
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from numpy.typing import NDArray

from streams.media.graph import QueuePolicy, Sink
from streams.media.items import SAMPLE_RATE, AudioChunk, Item, VideoFrame
from streams.media.video_io import Mp4Writer, VideoEncodeError

logger = logging.getLogger("hearth.media.mp4")

FRAGMENT_MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
"""FFmpeg mp4 muxer flags of the crash-tolerant file (a fragment per keyframe)."""

LIVE_GOP_S = 1.0
"""Keyframe interval while live, seconds: the most video a crash can lose (plus the
muxer's buffered bytes)."""

QUEUE_ITEMS = 90
"""Items (frames + audio chunks) the encoder thread's queue holds before new ones are
dropped: about 1.5 s of 30 fps video with its 20 ms audio chunks."""


class Mp4FinishError(RuntimeError):
    """A fragment file has no decodable fragment, or the final MP4 cannot be written."""


@dataclass(frozen=True, slots=True)
class Mp4Facts:
    """What a finished MP4 holds.

    Attributes:
        path: The file.
        video_frames: Video frames (packets) in it.
        audio_packets: AAC packets in it (1024 samples each).
        duration_s: Length of the video track, seconds (frames / rate).
        width: Frame width, pixels.
        height: Frame height, pixels.
        rate: Frame rate, fps.
        size_bytes: File size.
    """

    path: Path
    video_frames: int
    audio_packets: int
    duration_s: float
    width: int
    height: int
    rate: Fraction
    size_bytes: int


def mp4_fragments_finish(source: Path, target: Path) -> Mp4Facts:
    """Rewrite the fragmented MP4 ``source`` (finished or cut short by a crash) as a
    seekable MP4 at ``target`` (``+faststart``; written beside it and renamed over it),
    copying packets without re-encoding. Reading stops at the first fragment that does
    not parse (the one a crash cut short). ``source`` is left in place.

    Raises:
        Mp4FinishError: ``source`` cannot be opened, has no video track or no whole
            fragment, or ``target`` cannot be written.
    """
    partial = target.with_name(f".{target.name}.partial")
    frames = audio_packets = 0
    try:
        src = av.open(str(source))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise Mp4FinishError(f"{source}: cannot open ({exc})") from exc
    try:
        if not src.streams.video:
            raise Mp4FinishError(f"{source}: no video track")
        video_in = src.streams.video[0]
        audio_in = src.streams.audio[0] if src.streams.audio else None
        rate = Fraction(video_in.average_rate or video_in.guessed_rate or 30)
        width, height = video_in.codec_context.width, video_in.codec_context.height
        try:
            dst = av.open(str(partial), "w", format="mp4", options={"movflags": "+faststart"})
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise Mp4FinishError(f"cannot write {target}: {exc}") from exc
        try:
            mapping = {video_in.index: dst.add_stream_from_template(video_in)}
            if audio_in is not None:
                mapping[audio_in.index] = dst.add_stream_from_template(audio_in)
            streams = [video_in] + ([audio_in] if audio_in is not None else [])
            with contextlib.suppress(av.FFmpegError, ValueError, EOFError):
                # A torn last fragment ends the demuxer with an error: keep what came.
                for packet in src.demux(*streams):
                    if packet.dts is None or packet.size == 0:
                        continue
                    packet.stream = mapping[packet.stream.index]
                    dst.mux(packet)
                    if packet.stream.type == "video":
                        frames += 1
                    else:
                        audio_packets += 1
        finally:
            try:
                dst.close()
            except (av.FFmpegError, OSError, ValueError) as exc:
                partial.unlink(missing_ok=True)
                raise Mp4FinishError(f"cannot write {target}: {exc}") from exc
    finally:
        src.close()
    if frames == 0:
        partial.unlink(missing_ok=True)
        raise Mp4FinishError(f"{source}: no whole video fragment")
    os.replace(partial, target)
    return Mp4Facts(
        path=target,
        video_frames=frames,
        audio_packets=audio_packets,
        duration_s=frames / float(rate),
        width=width,
        height=height,
        rate=rate,
        size_bytes=target.stat().st_size,
    )


_STOP = object()


class LiveMp4Recorder:
    """A live broadcast's processed video + audio, written as a fragmented MP4 by a
    worker thread (see the module docstring).

    Args:
        path: The fragment file (replaced).
        width: Frame width, pixels (odd sides are padded for H.264).
        height: Frame height, pixels.
        rate: Nominal frame rate, fps; frames are placed on a ``1/rate`` grid by their
            pts (:class:`~streams.media.video_io.Mp4Writer`).
        audio: Whether to record a 48 kHz mono AAC track.
        max_items: Queue bound (frames + audio chunks); past it new items are dropped.
        crf: x264 constant rate factor.
        preset: x264 speed preset (``veryfast``: ~5 ms a 640x480 frame on one core).

    Attributes:
        frames_dropped: Frames dropped because the queue was full or the writer failed.
        audio_dropped: Audio chunks dropped likewise.
        frames_resized: Frames scaled to the file's size (the sender changed its
            resolution mid-broadcast).
        error: The write error that stopped the writer (later items are dropped).

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
        max_items: int = QUEUE_ITEMS,
        crf: int = 23,
        preset: str = "veryfast",
    ) -> None:
        self.path = Path(path)
        self.writer = Mp4Writer(
            self.path,
            width=width,
            height=height,
            rate=Fraction(rate),
            audio=audio,
            crf=crf,
            preset=preset,
            movflags=FRAGMENT_MOVFLAGS,
            gop=max(1, round(float(rate) * LIVE_GOP_S)),
        )
        self.has_audio = audio
        self.frames_dropped = 0
        self.audio_dropped = 0
        self.frames_resized = 0
        self.error: Exception | None = None
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_items)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hearth-mp4", daemon=True)
        self._thread.start()

    @property
    def frames(self) -> int:
        """Frames encoded so far."""
        return self.writer.frames

    def push_frame(self, frame: VideoFrame) -> bool:
        """Queue a processed frame (BGR uint8); never blocks. False: dropped (counted)."""
        if self._closed or self.error is not None:
            self.frames_dropped += 1
            return False
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self.frames_dropped += 1
            return False
        return True

    def push_audio(self, samples: NDArray[np.float32], pts: int) -> bool:
        """Queue float32 mono 48 kHz samples at ``pts`` (48 kHz ticks, contiguous with
        the previous call); never blocks. False: dropped (counted)."""
        if not self.has_audio or self._closed or self.error is not None:
            self.audio_dropped += 1
            return False
        try:
            self._queue.put_nowait((samples, pts))
        except queue.Full:
            self.audio_dropped += 1
            return False
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self.error is not None:
                self._count_drop(item)
                continue
            try:
                if isinstance(item, VideoFrame):
                    self.writer.write_frame(self._fit(item))
                else:
                    samples, pts = item  # type: ignore[misc]
                    self.writer.write_audio(samples, pts)
            except Exception as exc:  # the writer is dead: drop the rest, say why once
                self.error = exc
                self._count_drop(item)
                logger.error("live MP4 %s: write failed: %s", self.path, exc)

    def _fit(self, frame: VideoFrame) -> VideoFrame:
        """The frame at the file's size: a WebRTC sender changes its resolution with
        the network (congestion control), the MP4 track keeps one; scaled with
        ``cv2.INTER_AREA`` (counted in :attr:`frames_resized`)."""
        size = (self.writer.width, self.writer.height)
        if frame.image.shape[1::-1] == size:
            return frame
        self.frames_resized += 1
        image = cv2.resize(frame.image, size, interpolation=cv2.INTER_AREA)
        return dataclasses.replace(frame, image=image)

    def _count_drop(self, item: object) -> None:
        if isinstance(item, VideoFrame):
            self.frames_dropped += 1
        else:
            self.audio_dropped += 1

    def close(self, timeout_s: float = 30.0) -> None:
        """Encode what is queued, flush the encoders and close the fragment file
        (blocking: call from a worker thread; idempotent).

        Raises:
            VideoEncodeError: flushing failed, or the writer failed earlier.
        """
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join(timeout_s)
            self.writer.close()
        if self.error is not None:
            raise VideoEncodeError(f"live MP4 {self.path}: {self.error}")

    def finalise(self, target: Path, *, keep_fragments: bool = False) -> Mp4Facts:
        """:meth:`close`, then rewrite the fragment file as the seekable MP4 ``target``
        (:func:`mp4_fragments_finish`) and delete the fragment file (unless
        ``keep_fragments``). Blocking.

        Raises:
            VideoEncodeError: see :meth:`close` (the fragment file is kept; the start-up
                repair can still finish it).
            Mp4FinishError: see :func:`mp4_fragments_finish`.
        """
        self.close()
        facts = mp4_fragments_finish(self.path, target)
        if not keep_fragments and self.path != target:
            self.path.unlink(missing_ok=True)
        return facts


class LiveMp4Sink(Sink):
    """Feeds a graph's processed frames and audio chunks to a :class:`LiveMp4Recorder`
    without ever awaiting the encoder (it only enqueues).

    Args:
        recorder: Where items go; its owner finalises it after the graph ends.
        audio_offset: Added to each chunk's pts (48 kHz ticks): where the audio
            starts on the recording's timeline.
    """

    name = "mp4_live"
    policy = QueuePolicy.DROP_OLDEST
    max_items = 8

    def __init__(self, recorder: LiveMp4Recorder, *, audio_offset: int = 0) -> None:
        self.recorder = recorder
        self.audio_offset = audio_offset

    async def write(self, item: Item) -> None:
        """Enqueue a frame or a chunk (events are ignored); drops are counted by the
        recorder."""
        if isinstance(item, VideoFrame):
            self.recorder.push_frame(item)
        elif isinstance(item, AudioChunk):
            self.recorder.push_audio(item.samples, item.pts + self.audio_offset)


def mp4_duration_s(path: Path) -> float:
    """Length of the MP4 at ``path`` in seconds (the container's duration: the longer
    of its tracks; a variable frame rate counts right, unlike frames / rate).

    Raises:
        Mp4FinishError: the file cannot be read.
    """
    try:
        with av.open(str(path)) as container:
            if container.duration is not None:
                return container.duration / av.time_base
            stream = container.streams.video[0]
            return float((stream.duration or 0) * (stream.time_base or 0))
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise Mp4FinishError(f"{path}: cannot read ({exc})") from exc


class LiveVideoRecording:
    """A live camera broadcast's recording: the camera graph's redacted frames and the
    audio graph's output (after any bleep delay line) into one
    :class:`LiveMp4Recorder`, opened at the first frame (its size is the track's).

    The recording's timeline starts at the first frame. Frames keep their own pts
    (counted from the first frame by the source). Audio keeps its content pts (a delay
    line holds audio by the wall clock but keeps its timestamps, so the bleeps stay
    where they were said); it is moved onto the video's timeline once, from the
    ``arrived`` (``time.monotonic()``) stamps of the first frame and of the first
    chunk that has one: both name when their source received them. Audio from before
    the first frame is left out. A bleeped broadcast therefore needs no hold in the
    file: the picture lines up with the audio it was captured with, as the relays'
    hold lines them up for listeners.

    Args:
        path: The fragment file (``*.frag.mp4``), replaced.
        executor: Where the recorder is opened (it opens the file and encoders).
        rate: The video track's frame grid, fps (30: a 15 fps camera takes every
            second slot; the MP4 stores each frame's own timestamp).

    Attributes:
        recorder: The recorder, once the first frame came (None before, or when it
            could not be opened: ``error`` says why).
        audio_skipped: Audio chunks left out (before the first frame, or no recorder).
    """

    def __init__(
        self,
        path: Path,
        *,
        executor: concurrent.futures.Executor,
        rate: Fraction = Fraction(30),
    ) -> None:
        self.path = Path(path)
        self.executor = executor
        self.rate = Fraction(rate)
        self.recorder: LiveMp4Recorder | None = None
        self.error: Exception | None = None
        self.audio_skipped = 0
        self._video_origin: float | None = None  # monotonic time of the file's 0
        self._audio_shift: int | None = None  # ticks added to audio pts

    def video_sink(self) -> Sink:
        """The camera graph's sink (after the redaction stages)."""
        return _VideoRecordSink(self)

    def audio_sink(self) -> Sink:
        """The audio graph's sink (beside the relay's: the same processed audio)."""
        return _AudioRecordSink(self)

    async def frame(self, frame: VideoFrame) -> None:
        """Record ``frame``; the first one opens the recorder in ``executor``."""
        if self.error is not None:
            return
        if self.recorder is None:
            height, width = frame.image.shape[:2]
            opener = functools.partial(
                LiveMp4Recorder, self.path, width=width, height=height, rate=self.rate, audio=True
            )
            try:
                self.recorder = await asyncio.get_running_loop().run_in_executor(
                    self.executor, opener
                )
            except VideoEncodeError as exc:
                self.error = exc
                logger.error("live MP4 %s cannot be opened: %s", self.path, exc)
                return
            self._video_origin = frame.arrived - frame.start_s
        self.recorder.push_frame(frame)

    def audio(self, chunk: AudioChunk) -> None:
        """Record ``chunk`` on the video's timeline (see the class doc)."""
        recorder = self.recorder
        if recorder is None or self._video_origin is None:
            self.audio_skipped += 1
            return
        if self._audio_shift is None:
            if chunk.arrived <= 0.0:  # padding made by a stage: no arrival stamp
                self.audio_skipped += 1
                return
            origin = chunk.arrived - chunk.pts / SAMPLE_RATE
            self._audio_shift = round((origin - self._video_origin) * SAMPLE_RATE)
        pts = chunk.pts + self._audio_shift
        samples = chunk.samples
        if pts + len(samples) <= 0:
            self.audio_skipped += 1
            return
        if pts < 0:
            samples, pts = samples[-pts:], 0
        recorder.push_audio(samples, pts)

    def finalise(self, target: Path) -> Mp4Facts | None:
        """Close the recorder and write the seekable MP4 ``target`` (blocking: call in
        a worker thread); None when no frame was ever recorded.

        Raises:
            VideoEncodeError, Mp4FinishError: as :meth:`LiveMp4Recorder.finalise` (the
                fragment file is then kept for the start-up repair).
        """
        if self.recorder is None:
            return None
        return self.recorder.finalise(target)


class _VideoRecordSink(Sink):
    name = "mp4_video"
    policy = QueuePolicy.DROP_OLDEST
    max_items = 8

    def __init__(self, recording: LiveVideoRecording) -> None:
        self.recording = recording

    async def write(self, item: Item) -> None:
        if isinstance(item, VideoFrame):
            await self.recording.frame(item)


class _AudioRecordSink(Sink):
    name = "mp4_audio"
    policy = QueuePolicy.LOSSLESS  # the writer assumes contiguous audio
    max_items = 500

    def __init__(self, recording: LiveVideoRecording) -> None:
        self.recording = recording

    async def write(self, item: Item) -> None:
        if isinstance(item, AudioChunk):
            self.recording.audio(item)


__all__ = [
    "FRAGMENT_MOVFLAGS",
    "LIVE_GOP_S",
    "LiveMp4Recorder",
    "LiveMp4Sink",
    "LiveVideoRecording",
    "Mp4Facts",
    "Mp4FinishError",
    "mp4_duration_s",
    "mp4_fragments_finish",
]
