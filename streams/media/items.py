"""What flows through a media graph: timestamped audio chunks, encoded packets, events.

Every item carries ``pts`` (presentation timestamp, an integer count of ``time_base``
units) of the *content* it holds, as the source track stamped it; stages that delay
audio (DeepFilterNet3's 30 ms look-ahead, a broadcast delay line) keep that content
time, so a recording, a delay line or an audit trail can line items up with the
source. Audio uses ``time_base = 1/48000`` (one tick per sample at 48 kHz, the RTP
clock rate of Opus, RFC 7587 §4.1). Same model as PyAV/FFmpeg (``AVFrame.pts`` in
``time_base``) and aiortc (``Frame.pts``/``Frame.time_base``).
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


Item = AudioChunk | EncodedPacket | Event
"""Anything a stage or sink may receive."""


def silence(n: int) -> NDArray[np.float32]:
    """``n`` zero samples, float32, shape ``(n,)``."""
    return np.zeros(n, dtype=np.float32)
