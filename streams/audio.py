"""Audio I/O and format conversion around the processors (PyAV + NumPy, no Django).

Internal format everywhere: float32 mono, shape ``(n,)``, 48 kHz, nominal range
[-1, 1]. Conversion to and from it goes through PyAV (FFmpeg's libswresample) and the
stdlib ``wave`` module.
"""

from __future__ import annotations

import os
import wave
from fractions import Fraction

import av
import numpy as np
from numpy.typing import NDArray

from streams.processors.base import SAMPLE_RATE

__all__ = [
    "S16_SCALE",
    "SAMPLE_RATE",
    "AudioDecodeError",
    "FrameToMono",
    "float_to_s16",
    "load_audio",
    "make_noisy_mix",
    "samples_to_frame",
    "write_wav",
]

S16_SCALE = 32768.0
"""float <-> int16 scale, as FFmpeg uses it (``libswresample/audioconvert.c``:
``av_clip_int16(lrintf(x * (1 << 15)))`` and ``x * (1.0f / (1 << 15))``), so an
int16 -> float -> int16 round trip is exact."""


class AudioDecodeError(ValueError):
    """A file cannot be opened or decoded, or it holds no audio."""


class FrameToMono:
    """Stateful converter: ``av.AudioFrame`` of any format, layout and rate -> float32 mono.

    Wraps ``av.AudioResampler`` (libswresample) for sample format and rate conversion
    to planar float at ``sample_rate``, then downmixes by taking the arithmetic mean
    of the channels. The mean is used instead of libswresample's default stereo->mono
    matrix, (L + R)/√2 (``libswresample/rematrix.c``, ``M_SQRT1_2``), which would add
    3 dB (and clip) when both channels carry the same signal, as aiortc's Opus decoder
    delivers a mono browser microphone (s16 packed stereo, 48 kHz, 960 samples/frame).

    The resampler keeps state between frames (filter history); a change of input
    format, layout or rate flushes the old resampler and starts a new one. With input
    already at 48 kHz no samples are held back, so each frame yields exactly
    ``frame.samples`` samples.

    Args:
        sample_rate: Output sample rate in Hz, default 48000.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self._resampler: av.AudioResampler | None = None
        self._signature: tuple[str, str, int] | None = None

    def convert(self, frame: av.AudioFrame) -> NDArray[np.float32]:
        """Convert one frame; return float32 mono samples at ``sample_rate``, shape ``(m,)``.

        ``m`` equals ``frame.samples`` when the input rate is ``sample_rate``; otherwise
        it varies around ``frame.samples * sample_rate / frame.sample_rate``.

        Raises:
            ValueError: the frame has no sample rate or libswresample rejects it.
        """
        if not frame.sample_rate:
            raise ValueError("audio frame has no sample rate")
        signature = (frame.format.name, frame.layout.name, frame.sample_rate)
        parts: list[NDArray[np.float32]] = []
        if signature != self._signature:
            if self._resampler is not None:
                parts.extend(self._mix(f) for f in self._resampler.resample(None))
            self._resampler = av.AudioResampler(
                format="fltp", layout=frame.layout, rate=self.sample_rate
            )
            self._signature = signature
        assert self._resampler is not None
        parts.extend(self._mix(f) for f in self._resampler.resample(frame))
        return _join(parts)

    def flush(self) -> NDArray[np.float32]:
        """Return the samples the resampler still holds (float32 mono; may be empty)."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        parts = [self._mix(f) for f in self._resampler.resample(None)]
        self._resampler = None
        self._signature = None
        return _join(parts)

    @staticmethod
    def _mix(frame: av.AudioFrame) -> NDArray[np.float32]:
        planes = frame.to_ndarray()  # fltp: shape (channels, samples)
        if planes.shape[0] == 1:
            return planes[0].astype(np.float32, copy=False)
        return planes.mean(axis=0, dtype=np.float32)


def _join(parts: list[NDArray[np.float32]]) -> NDArray[np.float32]:
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def load_audio(path: str | os.PathLike[str]) -> NDArray[np.float32]:
    """Decode the first audio stream of any file FFmpeg reads to float32 mono 48 kHz.

    Channels are averaged and the rate converted with :class:`FrameToMono`
    (``av.AudioResampler``, flushed at the end). Integer PCM is scaled by 1/32768.

    Args:
        path: File in any container/codec PyAV decodes (WAV, FLAC, Ogg/Opus, MP3, ...).

    Returns:
        float32 array of shape ``(n,)`` at 48 kHz, n > 0.

    Raises:
        AudioDecodeError: the file is missing, unreadable, not decodable, has no audio
            stream, or decodes to zero samples.
    """
    converter = FrameToMono(SAMPLE_RATE)
    parts: list[NDArray[np.float32]] = []
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{path}: no audio stream")
            for frame in container.decode(container.streams.audio[0]):
                parts.append(converter.convert(frame))
        parts.append(converter.flush())
    except AudioDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise AudioDecodeError(f"{path}: cannot decode audio ({exc})") from exc
    samples = _join(parts)
    if not len(samples):
        raise AudioDecodeError(f"{path}: audio stream holds no samples")
    return samples


def float_to_s16(samples: NDArray[np.floating]) -> NDArray[np.int16]:
    """Convert float samples in [-1, 1] to int16 PCM.

    ``round(x * 32768)`` clipped to [-32768, 32767], FFmpeg's convention (see
    :data:`S16_SCALE`); values outside [-1, 1] clip. Shape is preserved.
    """
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * S16_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def samples_to_frame(
    samples: NDArray[np.floating], *, pts: int, sample_rate: int = SAMPLE_RATE
) -> av.AudioFrame:
    """Wrap float mono samples in an s16 mono ``av.AudioFrame`` for aiortc to encode.

    Args:
        samples: float mono, shape ``(n,)``, nominal range [-1, 1] (clipped).
        pts: Presentation timestamp in samples (time base ``1/sample_rate``).
        sample_rate: In Hz, default 48000.

    Returns:
        Frame with format ``s16``, layout ``mono``, ``n`` samples, the given ``pts``,
        ``time_base = Fraction(1, sample_rate)``.

    Raises:
        ValueError: ``samples`` is not one-dimensional.
    """
    array = np.asarray(samples)
    if array.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got shape {array.shape}")
    frame = av.AudioFrame.from_ndarray(
        float_to_s16(array).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = Fraction(1, sample_rate)
    return frame


def write_wav(
    path: str | os.PathLike[str], samples: NDArray[np.floating], sample_rate: int = SAMPLE_RATE
) -> None:
    """Write float mono samples as a 16-bit PCM mono WAV file (stdlib ``wave``).

    Args:
        path: Output file; overwritten if present.
        samples: float mono, shape ``(n,)``, nominal range [-1, 1] (clipped, see
            :func:`float_to_s16`).
        sample_rate: In Hz, default 48000.

    Raises:
        ValueError: ``samples`` is not one-dimensional.
        OSError: the file cannot be written.
    """
    array = np.asarray(samples)
    if array.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got shape {array.shape}")
    with wave.open(os.fspath(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(float_to_s16(array).astype("<i2").tobytes())


def make_noisy_mix(
    clean: NDArray[np.floating],
    noise: NDArray[np.floating],
    snr_db: float,
    *,
    peak: float | None = None,
) -> NDArray[np.float32]:
    """Add ``noise`` to ``clean`` at a given SNR, looping the noise to the clean length.

    SNR definition: ``10*log10(mean(clean**2) / mean(n**2))`` over the whole signals,
    where ``n`` is the looped noise after scaling; so 0 dB means equal mean power.
    Impulsive noise scaled up can exceed [-1, 1] and would clip when stored as 16-bit
    PCM; pass ``peak`` to scale the whole mix (speech and noise alike, so the SNR is
    unchanged) to that peak magnitude. Compare against the clean signal with
    scale-invariant measures (SI-SNR, STOI; PESQ aligns levels itself).

    Args:
        clean: float mono, shape ``(n,)``, n > 0, not all zero.
        noise: float mono, shape ``(m,)``, m > 0, not all zero; same sample rate.
        snr_db: Target SNR in dB.
        peak: If given (> 0), the mix is scaled so that ``max(abs(mix)) == peak``.

    Returns:
        ``clean + scaled looped noise`` (times the peak gain), float32, shape ``(n,)``.

    Raises:
        ValueError: empty or silent input, not one-dimensional, or ``peak <= 0``.
    """
    clean64 = np.asarray(clean, dtype=np.float64)
    noise64 = np.asarray(noise, dtype=np.float64)
    if clean64.ndim != 1 or noise64.ndim != 1:
        raise ValueError("clean and noise must be mono arrays of shape (n,)")
    if not len(clean64) or not len(noise64):
        raise ValueError("clean and noise must not be empty")
    looped = np.resize(noise64, len(clean64))
    clean_power = float(np.mean(clean64**2))
    noise_power = float(np.mean(looped**2))
    if clean_power == 0.0 or noise_power == 0.0:
        raise ValueError("clean and noise must not be silent")
    gain = np.sqrt(clean_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    mix = clean64 + gain * looped
    if peak is not None:
        if not peak > 0:
            raise ValueError(f"peak must be > 0, got {peak}")
        mix_peak = float(np.max(np.abs(mix)))
        if mix_peak == 0.0:
            raise ValueError("the mix is silent (noise cancels the clean signal)")
        mix *= peak / mix_peak
    return mix.astype(np.float32)
