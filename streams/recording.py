"""Crash-tolerant 16-bit PCM mono WAV recording, and repair of cut-off WAV files.

No Django. Uses the stdlib ``wave`` module. In CPython 3.11 ``wave.Wave_write.writeframes``
calls ``_patchheader()`` after every write, which seeks back and rewrites the RIFF size
(offset 4) and the ``data`` chunk size (offset 40) to the bytes written so far; the
seeks of Python's buffered file push the data to the OS as a side effect, and
:class:`WavRecorder` also calls ``flush()`` explicitly at least every
``flush_interval_s`` of audio. So a process killed between two writes leaves a valid
WAV file with everything written up to the last flush. A process killed between the
sample write and the header patch leaves stale sizes: :func:`wav_repair` fixes them.
"""

from __future__ import annotations

import os
import struct
import threading
import uuid
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self

import av
import numpy as np
from numpy.typing import NDArray

from streams.audio import SAMPLE_RATE, float_to_s16

SAMPLE_WIDTH_BYTES = 2
"""Bytes per sample: 16-bit PCM."""

MAX_DATA_BYTES = 0xFFFFFFFF - 36
"""Largest ``data`` chunk a RIFF file can describe (32-bit sizes): about 12.4 hours
at 48 kHz 16-bit mono."""


class WavFileError(ValueError):
    """A file is not a RIFF/WAVE file this module can read or repair."""


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """Facts about a finished (or repaired) WAV file.

    Attributes:
        frames: Samples per channel in the ``data`` chunk.
        sample_rate: In Hz.
        duration_s: ``frames / sample_rate``, in seconds.
        size_bytes: File size in bytes, header included.
    """

    frames: int
    sample_rate: int
    duration_s: float
    size_bytes: int


class WavRecorder:
    """Append float32 mono audio to a 16-bit PCM mono WAV file as it arrives.

    The file is created on construction (parent directories too) and is a valid WAV
    file after every :meth:`write` (see the module docstring for why a crash leaves a
    readable file). Samples are converted with :func:`streams.audio.float_to_s16`
    (clipped to [-1, 1]). Not thread-safe: one writer per file.

    Args:
        path: The file to create. An existing file is refused unless ``overwrite``.
        sample_rate: In Hz, default 48000.
        flush_interval_s: Audio seconds between explicit ``flush()`` calls (> 0).
        overwrite: Replace an existing file.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        OSError: the directory or file cannot be created.
        ValueError: ``sample_rate`` or ``flush_interval_s`` is not positive.
    """

    def __init__(
        self,
        path: Path,
        sample_rate: int = SAMPLE_RATE,
        *,
        flush_interval_s: float = 1.0,
        overwrite: bool = False,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self._flush_every = max(1, round(flush_interval_s * sample_rate))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(self.path, "wb" if overwrite else "xb")  # noqa: SIM115
        try:
            self._wave: wave.Wave_write | None = wave.open(self._file, "wb")  # noqa: SIM115
            self._wave.setnchannels(1)
            self._wave.setsampwidth(SAMPLE_WIDTH_BYTES)
            self._wave.setframerate(sample_rate)
            self._wave.writeframes(b"")  # header now, so even an empty recording is valid
            self._file.flush()
        except BaseException:
            self._file.close()
            raise
        self._frames = 0
        self._flushed_frames = 0
        self._info: RecordingInfo | None = None
        # write/flush/close may come from different executor threads (a block still
        # being processed while the broadcast stops): wave seeks to patch the header,
        # so interleaved calls would corrupt the file.
        self._lock = threading.RLock()

    @property
    def frames_written(self) -> int:
        """Samples written so far."""
        return self._frames

    @property
    def frames_flushed(self) -> int:
        """Samples known to have been handed to the OS (they survive a process kill)."""
        return self._flushed_frames

    @property
    def duration_s(self) -> float:
        """Audio written so far, in seconds."""
        return self._frames / self.sample_rate

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._info is not None

    def write(self, samples: NDArray[np.floating]) -> None:
        """Append samples and update the header sizes.

        Args:
            samples: float mono, shape ``(n,)``, nominal range [-1, 1], at ``sample_rate``.

        Raises:
            ValueError: closed, not 1-D, or the file would exceed the RIFF size limit
                (:data:`MAX_DATA_BYTES`).
            OSError: the write fails (e.g. disk full).
        """
        with self._lock:
            self._write(samples)

    def _write(self, samples: NDArray[np.floating]) -> None:
        if self._wave is None or self._file is None:
            raise ValueError(f"recorder for {self.path} is closed")
        array = np.asarray(samples)
        if array.ndim != 1:
            raise ValueError(f"expected mono samples of shape (n,), got shape {array.shape}")
        if not len(array):
            return
        if (self._frames + len(array)) * SAMPLE_WIDTH_BYTES > MAX_DATA_BYTES:
            raise ValueError(f"{self.path} would exceed the 4 GiB RIFF size limit")
        self._wave.writeframes(float_to_s16(array).astype("<i2").tobytes())
        self._frames += len(array)
        if self._frames - self._flushed_frames >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        """Hand everything written so far to the OS (``file.flush()``, no ``fsync``)."""
        with self._lock:
            if self._file is None:
                return
            self._file.flush()
            self._flushed_frames = self._frames

    def close(self) -> RecordingInfo:
        """Finish the header, close the file and return its :class:`RecordingInfo`.

        Idempotent: later calls return the same object. Thread-safe with
        :meth:`write` (a write after close raises ``ValueError``).
        """
        with self._lock:
            return self._close()

    def _close(self) -> RecordingInfo:
        if self._info is not None:
            return self._info
        try:
            if self._wave is not None:
                self._wave.close()  # patches the header sizes and flushes
        finally:
            self._wave = None
            if self._file is not None:
                self._file.close()
                self._file = None
        self._flushed_frames = self._frames
        self._info = RecordingInfo(
            frames=self._frames,
            sample_rate=self.sample_rate,
            duration_s=self.duration_s,
            size_bytes=self.path.stat().st_size,
        )
        return self._info

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wav_info(path: Path) -> RecordingInfo:
    """Read frames, sample rate and size of a WAV file from its header (stdlib ``wave``).

    Raises:
        WavFileError: not a PCM RIFF/WAVE file.
        OSError: the file cannot be read.
    """
    try:
        with wave.open(os.fspath(path), "rb") as handle:
            frames = handle.getnframes()
            sample_rate = handle.getframerate()
    except (wave.Error, EOFError) as exc:
        raise WavFileError(f"{path}: not a readable WAV file ({exc})") from exc
    return RecordingInfo(
        frames=frames,
        sample_rate=sample_rate,
        duration_s=frames / sample_rate if sample_rate else 0.0,
        size_bytes=Path(path).stat().st_size,
    )


def wav_repair(path: Path) -> RecordingInfo:
    """Rewrite the RIFF and ``data`` chunk sizes of a WAV file from its actual size.

    For a file whose writer died before patching the header (sizes stale or zero).
    Walks the chunks after ``RIFF....WAVE`` up to ``data`` (which must be the last
    chunk, as :class:`WavRecorder` and ``wave`` write it), sets the data size to the
    rest of the file rounded down to whole frames (truncating a partial trailing
    frame), and the RIFF size to ``file size - 8``. Layout per the Microsoft RIFF
    WAVE specification (Multimedia Programming Interface and Data Specifications 1.0).

    Args:
        path: The WAV file, modified in place.

    Returns:
        The :class:`RecordingInfo` of the repaired file.

    Raises:
        WavFileError: no RIFF/WAVE header, ``fmt `` or ``data`` chunk.
        OSError: the file cannot be read or written.
    """
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(0)
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            raise WavFileError(f"{path}: no RIFF/WAVE header")
        block_align: int | None = None
        position = 12
        while True:
            handle.seek(position)
            chunk = handle.read(8)
            if len(chunk) < 8:
                raise WavFileError(f"{path}: no data chunk")
            chunk_id, chunk_size = struct.unpack("<4sL", chunk)
            if chunk_id == b"data":
                break
            if chunk_id == b"fmt ":
                fmt = handle.read(16)
                if len(fmt) < 16:
                    raise WavFileError(f"{path}: truncated fmt chunk")
                block_align = struct.unpack("<HHLLH", fmt[:14])[4]
            position += 8 + chunk_size + (chunk_size & 1)
        if not block_align:
            raise WavFileError(f"{path}: no usable fmt chunk before the data chunk")
        data_start = position + 8
        data_size = max(0, size - data_start)
        data_size -= data_size % block_align
        data_size = min(data_size, MAX_DATA_BYTES - (MAX_DATA_BYTES % block_align))
        handle.truncate(data_start + data_size)
        handle.seek(4)
        handle.write(struct.pack("<L", data_start + data_size - 8))
        handle.seek(position + 4)
        handle.write(struct.pack("<L", data_size))
    return wav_info(path)


PEAK_SCALE = 1000
"""Peaks are stored as integers in [-PEAK_SCALE, PEAK_SCALE] (full scale = 1000)."""


def wav_peaks(path: Path, points: int = 1000, *, block_frames: int = 1 << 20) -> list[int]:
    """The waveform of a 16-bit PCM mono WAV as ``points`` (min, max) pairs.

    The file is cut into ``points`` equal spans (fewer when it has fewer samples);
    for each the smallest and largest sample are given, scaled to integers in
    [-:data:`PEAK_SCALE`, :data:`PEAK_SCALE`], flattened as ``[min0, max0, min1, ...]``.
    Reads the file once in blocks of ``block_frames`` (memory stays small for hours
    of audio).

    Returns:
        ``2 * min(points, frames)`` integers; empty for a file with no samples.

    Raises:
        WavFileError: not a 16-bit mono PCM RIFF/WAVE file.
        ValueError: ``points`` below 1.
        OSError: the file cannot be read.
    """
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    try:
        handle = wave.open(os.fspath(path), "rb")  # noqa: SIM115 (closed below)
    except (wave.Error, EOFError) as exc:
        raise WavFileError(f"{path}: not a readable WAV file ({exc})") from exc
    with handle:
        if handle.getsampwidth() != SAMPLE_WIDTH_BYTES or handle.getnchannels() != 1:
            raise WavFileError(f"{path}: not 16-bit mono PCM")
        frames = handle.getnframes()
        points = min(points, frames)
        if points == 0:
            return []
        edges = (np.arange(points + 1, dtype=np.int64) * frames) // points
        lows = np.full(points, 32767, dtype=np.int32)
        highs = np.full(points, -32768, dtype=np.int32)
        position = 0
        while position < frames:
            block = np.frombuffer(handle.readframes(block_frames), dtype="<i2")
            if not len(block):
                break
            first = int(np.searchsorted(edges, position, side="right")) - 1
            last = min(
                int(np.searchsorted(edges, position + len(block) - 1, side="right")) - 1, points - 1
            )
            starts = np.maximum(edges[first : last + 1], position) - position
            span = slice(first, last + 1)
            lows[span] = np.minimum(lows[span], np.minimum.reduceat(block, starts))
            highs[span] = np.maximum(highs[span], np.maximum.reduceat(block, starts))
            position += len(block)
    pairs = np.stack([lows, highs], axis=1).astype(np.float64) * PEAK_SCALE / 32768
    return [int(v) for v in np.clip(np.rint(pairs), -PEAK_SCALE, PEAK_SCALE).ravel()]


OPUS_FRAME = 960
"""Samples per Opus frame: 20 ms at 48 kHz."""


def wav_to_opus(source: Path, target: Path, *, bitrate: int) -> int:
    """Transcode a 16-bit PCM mono 48 kHz WAV to Ogg/Opus at ``target``, atomically.

    Encodes with libopus (PyAV) at ``bitrate`` bits per second, application
    ``audio``, 20 ms frames; the last frame is a short one, and the Ogg stream's
    end trimming makes decoders give back exactly the WAV's number of samples. The
    output is written to a hidden temporary file beside ``target``, flushed to disk
    (``fsync``) and renamed over ``target`` only when complete, so a crash leaves
    either no ``target`` or a whole one (and at worst a stray ``.part`` file).

    Returns:
        The size of ``target`` in bytes.

    Raises:
        WavFileError: ``source`` is not a 16-bit mono WAV at 48 kHz.
        ValueError: ``bitrate`` is not positive.
        OSError: reading or writing fails (the temporary file is removed).
    """
    if bitrate <= 0:
        raise ValueError(f"bitrate must be > 0, got {bitrate}")
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        handle = wave.open(os.fspath(source), "rb")  # noqa: SIM115 (closed below)
    except (wave.Error, EOFError) as exc:
        raise WavFileError(f"{source}: not a readable WAV file ({exc})") from exc
    try:
        with handle:
            if (
                handle.getsampwidth() != SAMPLE_WIDTH_BYTES
                or handle.getnchannels() != 1
                or handle.getframerate() != SAMPLE_RATE
            ):
                raise WavFileError(f"{source}: not 16-bit mono PCM at {SAMPLE_RATE} Hz")
            with av.open(os.fspath(temp), "w", format="ogg") as container:
                stream = container.add_stream("libopus", rate=SAMPLE_RATE, layout="mono")
                stream.bit_rate = bitrate
                stream.codec_context.options = {"application": "audio"}
                pts = 0
                while block := handle.readframes(OPUS_FRAME * 250):
                    samples = np.frombuffer(block, dtype="<i2")
                    for start in range(0, len(samples), OPUS_FRAME):
                        part = samples[start : start + OPUS_FRAME]
                        frame = av.AudioFrame.from_ndarray(
                            part.reshape(1, -1).copy(), format="s16", layout="mono"
                        )
                        frame.sample_rate = SAMPLE_RATE
                        frame.pts = pts
                        pts += len(part)
                        for packet in stream.encode(frame):
                            container.mux(packet)
                for packet in stream.encode(None):
                    container.mux(packet)
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temp, target)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, av.FFmpegError):
            raise OSError(f"{source}: transcoding failed ({exc})") from exc
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return target.stat().st_size
