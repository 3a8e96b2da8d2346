"""The audio processor protocol, a pass-through, a chain, and an offline runner.

Everything here is plain Python + NumPy (no Django), so a processor can be unit-tested
and benchmarked on its own. Audio is float32 mono at 48 kHz, nominal range [-1, 1]
(the sample rate of WebRTC Opus, RFC 7587, and of DeepFilterNet3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

SAMPLE_RATE = 48_000
"""Sample rate of every processor, in Hz."""

LIVE_BLOCK_SAMPLES = 960
"""Samples per live block: one 20 ms Opus frame at 48 kHz, as aiortc delivers it."""


class ProcessorError(RuntimeError):
    """A processor cannot run: closed, misused from two threads, or a native failure."""


@runtime_checkable
class AudioProcessor(Protocol):
    """One stage of per-stream audio processing; one instance holds one stream's state.

    Attributes:
        name: Short identifier for logs and recording metadata (e.g. ``"deepfilternet3"``).
        sample_rate: Sample rate of input and output, in Hz; always 48000.

    ``process(block)`` takes a float32 mono block of shape ``(n,)`` for any ``n >= 0``
    and returns exactly ``n`` float32 samples. The output is the processed input delayed
    by ``latency_samples`` samples (at 48 kHz); that delay may grow when a block is
    shorter than the processor's internal hop, never shrinks, and is 0 for stateless
    stages. ``close()`` releases native resources; it is idempotent and ``process``
    raises :class:`ProcessorError` after it.
    """

    name: str
    sample_rate: int

    @property
    def latency_samples(self) -> int:
        """Current delay of output relative to input, in samples at ``sample_rate``."""
        ...

    def process(self, block: NDArray[np.float32]) -> NDArray[np.float32]:
        """Process one block of shape ``(n,)``; return exactly ``n`` samples."""
        ...

    def close(self) -> None:
        """Release resources; idempotent."""
        ...


def check_block(block: np.ndarray) -> NDArray[np.float32]:
    """Validate a processor input block and return it as a C-contiguous float32 array.

    Args:
        block: Mono samples, shape ``(n,)``, any floating dtype, nominal range [-1, 1].

    Returns:
        The block as float32, shape ``(n,)`` (no copy when already float32 and contiguous).

    Raises:
        ValueError: ``block`` is not one-dimensional.
        TypeError: ``block`` does not have a floating dtype (integer PCM must be scaled
            to [-1, 1] first, e.g. with :func:`streams.audio.load_audio`).
    """
    array = np.asarray(block)
    if array.ndim != 1:
        raise ValueError(f"expected a mono block of shape (n,), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"expected float samples in [-1, 1], got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


class PassThrough:
    """The identity processor: output = a copy of the input, latency 0.

    Used when denoising is off and as the baseline in ``bench/denoise.py``.
    """

    name = "passthrough"
    sample_rate = SAMPLE_RATE

    def __init__(self) -> None:
        self._closed = False

    @property
    def latency_samples(self) -> int:
        """Always 0 samples."""
        return 0

    def process(self, block: NDArray[np.float32]) -> NDArray[np.float32]:
        """Return a float32 copy of ``block`` (shape ``(n,)``).

        Raises:
            ProcessorError: after :meth:`close`.
            ValueError, TypeError: see :func:`check_block`.
        """
        if self._closed:
            raise ProcessorError("PassThrough is closed")
        return check_block(block).copy()

    def close(self) -> None:
        """Mark closed; idempotent."""
        self._closed = True


class ProcessorChain:
    """Processors applied in order; itself an :class:`AudioProcessor`.

    ``latency_samples`` is the sum of the stages' current latencies. An empty chain is
    the identity (returns a copy).

    Args:
        processors: The stages, first applied first. The chain owns them: ``close()``
            closes every stage.

    Raises:
        ValueError: a stage's ``sample_rate`` is not 48000.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, processors: Sequence[AudioProcessor]) -> None:
        for processor in processors:
            if processor.sample_rate != SAMPLE_RATE:
                raise ValueError(
                    f"processor {processor.name!r} runs at {processor.sample_rate} Hz, "
                    f"the chain at {SAMPLE_RATE} Hz"
                )
        self.processors: tuple[AudioProcessor, ...] = tuple(processors)
        self.name = "+".join(p.name for p in self.processors) or "empty"
        self._closed = False

    @property
    def latency_samples(self) -> int:
        """Sum of the stages' current ``latency_samples``."""
        return sum(p.latency_samples for p in self.processors)

    def process(self, block: NDArray[np.float32]) -> NDArray[np.float32]:
        """Run ``block`` (float32, shape ``(n,)``) through every stage; return ``n`` samples.

        Raises:
            ProcessorError: after :meth:`close`, or a stage returned the wrong length.
            ValueError, TypeError: see :func:`check_block`.
        """
        if self._closed:
            raise ProcessorError("ProcessorChain is closed")
        samples = check_block(block)
        if not self.processors:
            return samples.copy()
        for processor in self.processors:
            out = processor.process(samples)
            if out.shape != samples.shape:
                raise ProcessorError(
                    f"processor {processor.name!r} returned shape {out.shape} "
                    f"for input shape {samples.shape}"
                )
            samples = out
        return samples

    def close(self) -> None:
        """Close every stage once (idempotent); re-raise the first error after all ran."""
        if self._closed:
            return
        self._closed = True
        first_error: BaseException | None = None
        for processor in self.processors:
            try:
                processor.close()
            except Exception as exc:  # close the other stages before re-raising
                first_error = first_error or exc
        if first_error is not None:
            raise first_error


def process_offline(
    processor: AudioProcessor,
    samples: NDArray[np.float32],
    *,
    block_size: int = LIVE_BLOCK_SAMPLES,
) -> tuple[NDArray[np.float32], int]:
    """Run a whole signal through ``processor`` as the live path would, delay-compensated.

    The input is fed in blocks of ``block_size`` samples (default 960 = 20 ms, one live
    Opus frame), the last block zero-padded to full size so every call has the same
    length. Then zeros are fed until the processor has emitted ``latency_samples`` more
    samples, and the first ``latency_samples`` of the output are dropped, so output
    sample ``i`` corresponds to input sample ``i`` (sample-exact).

    Args:
        processor: A fresh processor (its state is consumed; the caller closes it).
        samples: float32 mono input, shape ``(n,)``, 48 kHz.
        block_size: Samples per ``process`` call, > 0.

    Returns:
        ``(output, latency)``: output float32 of shape ``(n,)`` and the latency in
        samples that was compensated.

    Raises:
        ValueError: ``block_size`` <= 0, or ``samples`` is not 1-D (see
            :func:`check_block`).
        TypeError: ``samples`` does not have a floating dtype (see :func:`check_block`).
        ProcessorError: the processor's latency changed after the first block, so no
            single shift can align the output.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be > 0, got {block_size}")
    signal = check_block(samples)
    total = len(signal)
    n_blocks = -(-total // block_size)
    padded = np.zeros(n_blocks * block_size, dtype=np.float32)
    padded[:total] = signal
    outputs: list[NDArray[np.float32]] = []
    latency: int | None = None
    for start in range(0, len(padded), block_size):
        outputs.append(processor.process(padded[start : start + block_size]))
        current = processor.latency_samples
        if latency is None:
            latency = current
        elif current != latency:
            raise ProcessorError(
                f"latency of {processor.name!r} changed from {latency} to {current} samples "
                "mid-stream; cannot align its output"
            )
    latency = processor.latency_samples if latency is None else latency
    emitted = len(padded)
    silence = np.zeros(block_size, dtype=np.float32)
    while emitted < total + latency:
        outputs.append(processor.process(silence))
        emitted += block_size
        if processor.latency_samples != latency:
            raise ProcessorError(
                f"latency of {processor.name!r} changed while flushing; cannot align its output"
            )
    output = np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)
    return output[latency : latency + total].astype(np.float32, copy=False), latency
