"""Encode once, forward to all: the broadcast's processed media to every listener.

aiortc's ``RTCRtpSender`` reads its track; given an ``av.Packet`` instead of a frame
it skips its own encoder and only packetises (``aiortc/rtcrtpsender.py``
``_next_encoded_frame`` → ``encoder.pack``; the RTP timestamp comes from
``packet.pts``/``packet.time_base``). So a :class:`Relay` encodes each processed
chunk once (:class:`OpusEncoder`, in the engine's encode pool) and hands the same
packet to every listener's :class:`RelayTrack`; a listener then costs RTP
packetisation and SRTP only.

Each :class:`RelayTrack` has its own bounded drop-oldest queue, pulled by its own
sender, so a slow or dead listener loses old packets alone and never holds up the
others.
Video (:mod:`streams.media.video_live`): a new subscriber, or a PLI/FIR from any
listener (:meth:`Relay.attach_sender`), asks the shared encoder for a keyframe; a video
track starts forwarding at a keyframe, and one that overflows empties its queue and
waits for the next keyframe rather than send frames its listener cannot decode.

``per_listener=True`` keeps the old path (each sender encodes raw frames itself) as
the baseline of ``bench/fanout.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor
from typing import Any, Protocol

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streams.audio import samples_to_frame
from streams.media.graph import QueuePolicy, Sink
from streams.media.items import (
    AUDIO_TIME_BASE,
    SAMPLE_RATE,
    AudioChunk,
    EncodedPacket,
    Item,
    MediaItem,
    VideoFrame,
)
from streams.media.metrics import MediaMetrics

logger = logging.getLogger("hearth.media")


class Encoder(Protocol):
    """A shared encoder: chunks (or video frames) in, packets out (one thread at a time)."""

    kind: str

    def encode(self, chunk: Any, *, keyframe: bool = False) -> list[av.Packet]:
        """Encode one chunk or frame; the packets carry ``pts``/``time_base``."""
        ...

    def close(self) -> None:
        """Release the codec."""
        ...


class OpusEncoder:
    """libopus (through PyAV) for the relay: 960-sample float32 mono 48 kHz chunks in,
    one Opus packet per chunk out (RFC 7587; mono in the ``opus/48000/2`` payload, which
    every WebRTC receiver decodes).

    Each packet's ``pts`` is set to its chunk's content pts (FFmpeg stamps libopus
    packets ``pts - 312``, the encoder's pre-skip), ``time_base = 1/48000``.

    Args:
        bitrate: Target bits per second (64 kb/s: transparent wide-band speech).
        application: libopus application, ``"voip"`` (speech) or ``"audio"``.
    """

    kind = "audio"

    def __init__(self, *, bitrate: int = 64_000, application: str = "voip") -> None:
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.bit_rate = bitrate
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = SAMPLE_RATE
        self.codec.time_base = AUDIO_TIME_BASE
        self.codec.options = {"application": application}

    def encode(self, chunk: AudioChunk, *, keyframe: bool = False) -> list[av.Packet]:
        """Encode ``chunk`` (float32, shape ``(960,)``); ``keyframe`` is moot for Opus."""
        del keyframe
        frame = samples_to_frame(chunk.samples, pts=chunk.pts, sample_rate=SAMPLE_RATE)
        packets = list(self.codec.encode(frame))
        for index, packet in enumerate(packets):
            packet.pts = chunk.pts + index * len(chunk.samples)
            packet.time_base = AUDIO_TIME_BASE
        return packets

    def close(self) -> None:
        """Drop the codec context."""
        self.codec = None  # type: ignore[assignment]


class RelayTrack(MediaStreamTrack):
    """One listener's outgoing track: yields the relay's shared packets (or, on the
    per-listener baseline path, raw s16 frames for the sender to encode).

    Its queue holds at most ``max_queue`` items; when full the oldest is dropped
    (:attr:`dropped`), so a listener whose sender falls behind loses old packets and
    never holds up the relay or the other listeners. Each sender pulls at its own
    pace; packets are not held back on a clock: their RTP timestamps (from ``pts``)
    carry the timing, and the listener's playout buffer smooths arrival jitter, as an
    SFU forwards audio (a hold per packet per listener cost a timer each and, anchored
    on a packet queued before the peer connected, added latency for good).

    Args:
        relay: The relay feeding it.
        kind: ``"audio"`` (or ``"video"``).
        max_queue: Queue bound in items (25 = 500 ms of 20 ms packets).
    """

    def __init__(self, relay: Relay, *, kind: str = "audio", max_queue: int = 25) -> None:
        super().__init__()
        self.kind = kind
        self._relay = relay
        self._queue: deque[tuple[Any, float]] = deque(maxlen=max_queue)
        self._ready = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        # Video: a decoder can only start from a keyframe, and a lost packet breaks
        # every frame after it until the next one. So a video track forwards nothing
        # until a keyframe, and on overflow it empties its queue and waits (asking the
        # shared encoder for one) instead of sending frames nobody can decode.
        self._need_keyframe = kind == "video"

    def push(self, item: EncodedPacket | AudioChunk, published: float) -> None:
        """Queue one item (event-loop thread)."""
        if self.kind == "video":
            self._push_video(item, published)
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((item, published))
        self._ready.set()

    def _push_video(self, item: EncodedPacket | AudioChunk, published: float) -> None:
        keyframe = isinstance(item, EncodedPacket) and item.keyframe
        if self._need_keyframe and not keyframe:
            self.dropped += 1
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += len(self._queue)
            self._queue.clear()
            if not keyframe:
                self._need_keyframe = True
                if self.sent:  # a sender reads this track: it needs a keyframe soon
                    self._relay.request_keyframe()
                return
        self._need_keyframe = False
        self._queue.append((item, published))
        self._ready.set()

    async def recv(self) -> av.Packet | av.AudioFrame:
        """The next packet (or frame), as soon as one is queued.

        Raises:
            MediaStreamError: the track was stopped.
        """
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._queue:
                break
            if self._need_keyframe and self.sent == 0:
                self._relay.request_keyframe()  # the sender has started: start it now
            self._ready.clear()
            await self._ready.wait()
        item, published = self._queue.popleft()
        self.sent += 1
        self._relay.metrics.timer("relay").add(time.monotonic() - published)
        if isinstance(item, EncodedPacket):
            return item.packet
        return samples_to_frame(item.samples, pts=item.pts, sample_rate=SAMPLE_RATE)

    def stop(self) -> None:
        """End the track and leave the relay."""
        super().stop()
        self._ready.set()
        self._relay.unsubscribe(self)


class Relay:
    """Fan-out of one broadcast's processed media to its listeners' tracks.

    Args:
        encoder: Shared encoder (used from one thread at a time).
        executor: Where encoding runs (the engine's encode pool).
        metrics: The stream's metrics (``encode`` and ``relay`` timers).
        per_listener: Baseline mode: forward raw chunks, each sender encodes.
        max_queue: Each track's queue bound, in items.
    """

    def __init__(
        self,
        *,
        encoder: Encoder,
        executor: Executor,
        metrics: MediaMetrics,
        per_listener: bool = False,
        max_queue: int = 25,
    ) -> None:
        self.encoder = encoder
        self.kind = encoder.kind
        self.executor = executor
        self.metrics = metrics
        self.per_listener = per_listener
        self.max_queue = max_queue
        self.tracks: set[RelayTrack] = set()
        self.packets_encoded = 0
        self.dropped_by_gone = 0  # packets dropped by tracks that have left
        self._keyframe = False

    def subscribe(self) -> RelayTrack:
        """A new listener track (asks the encoder for a keyframe)."""
        track = RelayTrack(self, kind=self.kind, max_queue=self.max_queue)
        self.tracks.add(track)
        self.request_keyframe()
        return track

    def unsubscribe(self, track: RelayTrack) -> None:
        """Forget ``track`` (no error if absent), keeping its drops in :attr:`dropped_total`."""
        if track in self.tracks:
            self.dropped_by_gone += track.dropped
            self.tracks.discard(track)

    @property
    def dropped_total(self) -> int:
        """Packets dropped by every listener track this relay has had (a counter: it
        never goes down when a listener leaves)."""
        return self.dropped_by_gone + sum(track.dropped for track in list(self.tracks))

    def request_keyframe(self) -> None:
        """Make the next encoded chunk a keyframe (new listener, PLI, FIR)."""
        self._keyframe = True

    def attach_sender(self, sender: Any) -> None:
        """Route a listener sender's PLI/FIR to :meth:`request_keyframe`.

        aiortc's ``RTCRtpSender._handle_rtcp_packet`` calls ``self._send_keyframe()``
        on PLI/FIR, which only affects its own (here unused) encoder; the instance
        attribute set here sends the request to the shared encoder instead.
        """
        sender._send_keyframe = self.request_keyframe

    async def publish(self, chunk: MediaItem) -> None:
        """Encode ``chunk`` (an audio chunk, or a video frame for a video relay) once,
        in the executor, and queue its packets on every live track."""
        tracks = [t for t in self.tracks if t.readyState == "live"]
        if not tracks:
            return
        now = time.monotonic()
        if self.per_listener:
            if isinstance(chunk, VideoFrame):
                raise TypeError("a per-listener relay carries audio only")
            for track in tracks:
                track.push(chunk, now)
            return
        keyframe, self._keyframe = self._keyframe, False
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        packets = await loop.run_in_executor(
            self.executor, lambda: self.encoder.encode(chunk, keyframe=keyframe)
        )
        self.metrics.timer("encode").add(time.perf_counter() - started)
        produced = time.monotonic()
        for packet in packets:
            self.packets_encoded += 1
            item = EncodedPacket(
                packet=packet,
                pts=int(packet.pts),
                time_base=packet.time_base,
                produced=produced,
                arrived=chunk.arrived,
                keyframe=self.kind == "audio" or bool(packet.is_keyframe),
            )
            for track in tracks:
                track.push(item, produced)

    def close(self) -> None:
        """Stop every track and release the encoder."""
        for track in list(self.tracks):
            track.stop()
        self.encoder.close()


class RelaySink(Sink):
    """The graph sink that feeds a :class:`Relay` (drop-oldest: live audio never waits)."""

    name = "relay"
    policy = QueuePolicy.DROP_OLDEST
    max_items = 50

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def write(self, item: Item) -> None:
        """Publish audio chunks; events are not relayed."""
        if isinstance(item, AudioChunk):
            await self.relay.publish(item)
