"""Builds the per-stream processor chain, shared by the live path and ``process_media``.

Both paths call :func:`audio_chain_build`, so offline processing runs exactly the
classes (and settings) a live stream runs.
"""

from __future__ import annotations

from streams.processors.base import SAMPLE_RATE, AudioProcessor, PassThrough, ProcessorChain
from streams.processors.denoise import (
    DEFAULT_ATTEN_LIM_DB,
    DEFAULT_POST_FILTER_BETA,
    MODEL_NAME,
    DeepFilterNet3Denoiser,
)


def audio_chain_build(*, denoise: bool) -> AudioProcessor:
    """Return a fresh :class:`ProcessorChain` for one 48 kHz mono stream.

    Args:
        denoise: True: ``[DeepFilterNet3Denoiser()]`` (latency 1440 samples = 30 ms
            with 960-sample blocks); False: ``[PassThrough()]`` (latency 0).

    Returns:
        A new chain; the caller owns it and must ``close()`` it.

    Raises:
        ModelIntegrityError, ProcessorError: the denoiser cannot be created (see
            :class:`streams.processors.denoise.DeepFilterNet3Denoiser`).
    """
    if denoise:
        return ProcessorChain(
            [
                DeepFilterNet3Denoiser(
                    atten_lim_db=DEFAULT_ATTEN_LIM_DB, post_filter_beta=DEFAULT_POST_FILTER_BETA
                )
            ]
        )
    return ProcessorChain([PassThrough()])


def audio_chain_settings(*, denoise: bool) -> dict[str, object]:
    """Describe the chain :func:`audio_chain_build` makes, for recording metadata.

    Returns:
        JSON-serialisable dict, e.g. ``{"denoise": True, "model": "DeepFilterNet3-v0.5.6",
        "atten_lim_db": 100.0, "post_filter_beta": 0.0, "sample_rate": 48000}``.
    """
    if denoise:
        return {
            "denoise": True,
            "model": MODEL_NAME,
            "atten_lim_db": DEFAULT_ATTEN_LIM_DB,
            "post_filter_beta": DEFAULT_POST_FILTER_BETA,
            "sample_rate": SAMPLE_RATE,
        }
    return {"denoise": False, "sample_rate": SAMPLE_RATE}
