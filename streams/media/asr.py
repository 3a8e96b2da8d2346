"""Speech-to-text with word timestamps: faster-whisper (CTranslate2) over short windows.

A :class:`Transcriber` turns a window of 48 kHz mono float32 audio into
:class:`Word` items whose times are pts in the stream's 1/48000 time base. Decoding
is greedy (``beam_size=1``, temperature 0, no fallback, a max-token cap per window):
the issue's measurements showed ``tiny.en`` looping on digit strings and ``base``
not; the cap bounds any loop that does happen.

Silero VAD (the ONNX model bundled in the faster-whisper wheel,
``faster_whisper/assets/silero_vad_v6.onnx``; no torch) first says whether a window
holds speech at all: a window without speech is never decoded.

Whisper's encoder always sees 30 s of log-mel frames; windows here are a few
seconds, so the encoder input is cut to the window plus ``encoder_pad_s`` of the
padding (the idea of whisper.cpp's ``audio_ctx``): about 5x less encoder work for
an 8 s window on CPU, at some cost in digit accuracy (digits still come out as
digits, which is what the PII recognisers need).

Imports nothing from Django.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.signal import resample_poly

from streams.media.items import SAMPLE_RATE

ASR_RATE = 16_000
"""Sample rate Whisper (and Silero VAD) expect, in Hz."""

_DECIMATE = SAMPLE_RATE // ASR_RATE  # 3
_FRAMES_PER_S = 100  # Whisper log-mel: hop 160 samples at 16 kHz = 10 ms
_MAX_FRAMES = 3000  # 30 s, Whisper's training window


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word with its time range.

    Attributes:
        text: The word as Whisper wrote it, including its leading space and any
            punctuation (e.g. ``" country."``).
        start: First tick (pts, 1/48000 s) of the word in the stream.
        end: Tick just past the word.
        probability: Whisper's word probability, 0..1.
    """

    text: str
    start: int
    end: int
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class AsrOptions:
    """How a :class:`Transcriber` decodes.

    Attributes:
        language: ISO 639-1 code Whisper is told (no language detection).
        tokens_per_s: Max new tokens per second of window (the per-window cap).
        max_tokens: Upper bound of the cap (Whisper's context is 448 tokens).
        encoder_pad_s: Seconds of padding kept after the window in the encoder input;
            None feeds Whisper's full 30 s.
        vad_threshold: Silero speech probability above which a frame is speech.
    """

    language: str = "en"
    tokens_per_s: float = 10.0
    max_tokens: int = 224
    encoder_pad_s: float | None = 2.0
    vad_threshold: float = 0.5


def to_asr_rate(samples: NDArray[np.float32]) -> NDArray[np.float32]:
    """48 kHz -> 16 kHz by polyphase resampling (scipy ``resample_poly``, 1/3).

    Args:
        samples: float32 mono, shape ``(n,)`` at 48 kHz.

    Returns:
        float32, shape ``(ceil(n / 3),)`` at 16 kHz.
    """
    return resample_poly(samples, 1, _DECIMATE).astype(np.float32)


def _load_whisper(model_dir: Path, *, device: str, compute_type: str, cpu_threads: int) -> Any:
    """A faster-whisper ``WhisperModel`` whose encoder input can be shortened."""
    from faster_whisper import WhisperModel

    class _ShortContextWhisper(WhisperModel):  # type: ignore[misc]
        encoder_frames: int = _MAX_FRAMES

        def encode(self, features: np.ndarray) -> Any:
            if features.ndim == 2:
                features = features[None]
            return super().encode(np.ascontiguousarray(features[..., : self.encoder_frames]))

    return _ShortContextWhisper(
        os.fspath(model_dir),
        device=device,
        compute_type=compute_type,
        cpu_threads=cpu_threads,
        local_files_only=True,
    )


def cuda_available() -> bool:
    """Whether CTranslate2 sees a CUDA device."""
    import ctranslate2

    try:
        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # no CUDA runtime at all
        return False


class Transcriber:
    """Whisper (CTranslate2) over windows of 48 kHz audio, with word timestamps.

    Thread-safe: calls are serialised by a lock (CTranslate2 runs one call on
    ``cpu_threads`` threads; concurrent broadcasts share one model object).

    Args:
        model_dir: A *verified* CTranslate2 Whisper directory (see
            :func:`streams.media.whisper_model.resolve_model_dir`).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when present).
        compute_type: CTranslate2 compute type; ``"int8"`` on CPU by default,
            ``"float16"`` on CUDA when ``"default"``.
        cpu_threads: Intra-op threads (0: CTranslate2's default, 4 or the core count).
        options: Decoding options.

    Raises:
        RuntimeError: CTranslate2 cannot load the model (wrong format, no CUDA).
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "cpu",
        compute_type: str = "default",
        cpu_threads: int = 0,
        options: AsrOptions | None = None,
    ) -> None:
        if device == "auto":
            device = "cuda" if cuda_available() else "cpu"
        if compute_type == "default":
            compute_type = "float16" if device == "cuda" else "int8"
        self.device = device
        self.compute_type = compute_type
        self.options = options or AsrOptions()
        self.model_dir = model_dir
        self._model = _load_whisper(
            model_dir, device=device, compute_type=compute_type, cpu_threads=cpu_threads
        )
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """Source label for decisions, e.g. ``"whisper:whisper-base-ebe41f70d5b6"``."""
        return f"whisper:{self.model_dir.name}"

    def has_speech(self, samples16k: NDArray[np.float32]) -> bool:
        """Whether Silero VAD finds any speech in 16 kHz ``samples16k``."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        vad = VadOptions(
            threshold=self.options.vad_threshold,
            min_speech_duration_ms=120,
            min_silence_duration_ms=300,
            speech_pad_ms=0,
        )
        return bool(get_speech_timestamps(samples16k, vad, sampling_rate=ASR_RATE))

    def transcribe(self, samples: NDArray[np.float32], pts: int) -> list[Word]:
        """Words spoken in a window, with absolute times.

        Args:
            samples: float32 mono at 48 kHz, shape ``(n,)``; at most 30 s.
            pts: Tick of ``samples[0]`` in the stream.

        Returns:
            Words in order, each clamped to ``[pts, pts + n]``; ``[]`` when the VAD
            finds no speech.
        """
        audio = to_asr_rate(samples)
        if not len(audio) or not self.has_speech(audio):
            return []
        seconds = len(audio) / ASR_RATE
        cap = min(self.options.max_tokens, math.ceil(seconds * self.options.tokens_per_s) + 8)
        frames = _MAX_FRAMES
        if self.options.encoder_pad_s is not None:
            frames = min(_MAX_FRAMES, math.ceil((seconds + self.options.encoder_pad_s) * 10) * 10)
        end = pts + len(samples)
        words: list[Word] = []
        with self._lock:
            self._model.encoder_frames = frames
            segments, _info = self._model.transcribe(
                audio,
                language=self.options.language,
                beam_size=1,
                best_of=1,
                temperature=0.0,
                condition_on_previous_text=False,
                word_timestamps=True,
                vad_filter=False,
                max_new_tokens=cap,
                without_timestamps=False,
            )
            for segment in segments:
                for w in segment.words or []:
                    start = min(end, pts + round(w.start * SAMPLE_RATE))
                    stop = min(end, max(start, pts + round(w.end * SAMPLE_RATE)))
                    words.append(Word(w.word, start, stop, float(w.probability)))
        return words
