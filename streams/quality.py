"""Objective speech-quality measures: SI-SNR, PESQ (wide-band), STOI; and alignment.

No Django. Inputs are float mono arrays of shape ``(n,)``; ``estimate`` is the
processed signal, ``reference`` the clean one, both at the same sample rate.
"""

from __future__ import annotations

import math
from math import gcd

import numpy as np
import pesq as pesq_lib
import pystoi
from numpy.typing import NDArray
from scipy.signal import correlate, correlation_lags, resample_poly

PESQ_SAMPLE_RATE = 16_000
"""Sample rate of wide-band PESQ (ITU-T P.862.2), in Hz."""


def _mono_pair(
    estimate: NDArray[np.floating], reference: NDArray[np.floating]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.ndim != 1 or ref.ndim != 1:
        raise ValueError("estimate and reference must be mono arrays of shape (n,)")
    if len(est) != len(ref):
        raise ValueError(
            f"estimate and reference differ in length ({len(est)} vs {len(ref)}); use align() first"
        )
    if not len(ref):
        raise ValueError("estimate and reference must not be empty")
    return est, ref


def si_snr(estimate: NDArray[np.floating], reference: NDArray[np.floating]) -> float:
    """Scale-invariant signal-to-noise ratio of ``estimate`` against ``reference``, in dB.

    Both signals are made zero-mean; ``target = (<est, ref> / ||ref||²) ref``,
    ``SI-SNR = 10 log10(||target||² / ||est - target||²)``. Source: Le Roux, Wisdom,
    Erdogan, Hershey, "SDR – half-baked or well done?", ICASSP 2019 (there: SI-SDR).

    Args:
        estimate, reference: float mono arrays of the same shape ``(n,)``, aligned.

    Returns:
        SI-SNR in dB; ``inf`` when the estimate is an exact scaled copy.

    Raises:
        ValueError: shapes differ or are not 1-D, empty input, or a silent reference.
    """
    est, ref = _mono_pair(estimate, reference)
    est = est - est.mean()
    ref = ref - ref.mean()
    ref_energy = float(np.dot(ref, ref))
    if ref_energy == 0.0:
        raise ValueError("reference is silent; SI-SNR is undefined")
    target = (float(np.dot(est, ref)) / ref_energy) * ref
    error_energy = float(np.sum((est - target) ** 2))
    target_energy = float(np.dot(target, target))
    if error_energy == 0.0:
        return math.inf
    if target_energy == 0.0:
        return -math.inf
    return 10.0 * math.log10(target_energy / error_energy)


def align(
    estimate: NDArray[np.floating], reference: NDArray[np.floating], max_lag: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """Find the delay of ``estimate`` relative to ``reference`` and crop both to the overlap.

    The lag maximising the cross-correlation ``sum_t est[t + lag] * ref[t]``
    (``scipy.signal.correlate``, FFT method), searched over ``|lag| <= max_lag``.

    Args:
        estimate, reference: float mono arrays, shapes ``(n,)`` and ``(m,)``.
        max_lag: Largest delay searched, in samples, >= 0.

    Returns:
        ``(estimate_aligned, reference_aligned, lag)``: float64 arrays of equal length
        where ``estimate_aligned[i]`` corresponds to ``reference_aligned[i]``; ``lag``
        in samples, positive when the estimate lags behind the reference.

    Raises:
        ValueError: not 1-D, empty input, negative ``max_lag``, or no overlap.
    """
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.ndim != 1 or ref.ndim != 1 or not len(est) or not len(ref):
        raise ValueError("estimate and reference must be non-empty mono arrays of shape (n,)")
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    corr = correlate(est, ref, mode="full", method="fft")
    lags = correlation_lags(len(est), len(ref), mode="full")
    window = np.abs(lags) <= max_lag
    lag = int(lags[window][np.argmax(corr[window])])
    if lag >= 0:
        est, ref = est[lag:], ref
    else:
        est, ref = est, ref[-lag:]
    length = min(len(est), len(ref))
    if length == 0:
        raise ValueError("estimate and reference do not overlap at the found lag")
    return est[:length], ref[:length], lag


def _to_rate(
    samples: NDArray[np.float64], sample_rate: int, target_rate: int
) -> NDArray[np.float64]:
    if sample_rate == target_rate:
        return samples
    common = gcd(sample_rate, target_rate)
    return resample_poly(samples, target_rate // common, sample_rate // common)


def pesq_wb(
    estimate: NDArray[np.floating],
    reference: NDArray[np.floating],
    sample_rate: int = 48_000,
) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO of ``estimate`` against ``reference``.

    Both are resampled to 16 kHz with ``scipy.signal.resample_poly`` and scored by the
    ``pesq`` package (ITU reference implementation), mode ``"wb"``. Range about
    1.04 (bad) to 4.64 (identical). PESQ compensates delay and level itself.

    Args:
        estimate, reference: float mono arrays of the same shape ``(n,)``.
        sample_rate: Their sample rate in Hz, default 48000.

    Raises:
        ValueError: shapes differ, or not 1-D or empty.
        pesq.PesqError: the ITU code rejects the input (e.g. shorter than ~0.25 s or
            no speech detected).
    """
    est, ref = _mono_pair(estimate, reference)
    return float(
        pesq_lib.pesq(
            PESQ_SAMPLE_RATE,
            _to_rate(ref, sample_rate, PESQ_SAMPLE_RATE),
            _to_rate(est, sample_rate, PESQ_SAMPLE_RATE),
            "wb",
        )
    )


def stoi(
    estimate: NDArray[np.floating],
    reference: NDArray[np.floating],
    sample_rate: int = 48_000,
    *,
    extended: bool = False,
) -> float:
    """Short-time objective intelligibility of ``estimate`` against ``reference``.

    Taal, Hendriks, Heusdens, Jensen, "An Algorithm for Intelligibility Prediction of
    Time-Frequency Weighted Noisy Speech", IEEE TASLP 2011 (``extended``: ESTOI, Jensen
    & Taal, IEEE TASLP 2016), computed by the ``pystoi`` package (resamples to 10 kHz).

    Args:
        estimate, reference: float mono arrays of the same shape ``(n,)``, aligned.
        sample_rate: Their sample rate in Hz, default 48000.
        extended: Compute ESTOI instead of STOI.

    Returns:
        Score in about [0, 1]; higher is more intelligible.

    Raises:
        ValueError: shapes differ, or not 1-D or empty.
    """
    est, ref = _mono_pair(estimate, reference)
    return float(pystoi.stoi(ref, est, sample_rate, extended=extended))
