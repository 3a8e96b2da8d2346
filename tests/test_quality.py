"""SI-SNR, alignment, PESQ and STOI (streams.quality)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streams.audio import make_noisy_mix
from streams.quality import align, pesq_wb, si_snr, stoi

pytestmark = pytest.mark.backend_free


def test_si_snr_matches_definition_and_is_scale_invariant():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(48_000)
    noise = rng.standard_normal(48_000)
    noise -= reference * (noise @ reference) / (reference @ reference)  # orthogonal
    noise *= np.linalg.norm(reference) / np.linalg.norm(noise) / 10  # -20 dB
    estimate = reference + noise
    assert si_snr(estimate, reference) == pytest.approx(20.0, abs=0.01)
    assert si_snr(-3.0 * estimate + 0.2, reference) == pytest.approx(20.0, abs=0.01)
    assert si_snr(reference * 0.5, reference) == math.inf


def test_si_snr_of_noisy_mix_equals_mix_snr(jfk_48k, noise_48k):
    for snr_db in (0.0, 10.0):
        mix = make_noisy_mix(jfk_48k, noise_48k, snr_db)
        # Speech and noise are nearly uncorrelated and near zero-mean, so SI-SNR ~ SNR.
        assert si_snr(mix, jfk_48k) == pytest.approx(snr_db, abs=0.2)


def test_si_snr_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        si_snr(np.ones(4), np.ones(5))
    with pytest.raises(ValueError, match="silent"):
        si_snr(np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="mono"):
        si_snr(np.ones((2, 4)), np.ones((2, 4)))


@pytest.mark.parametrize("delay", [1440, -300, 0])
def test_align_finds_delay_and_crops_to_overlap(jfk_48k, delay):
    if delay >= 0:
        delayed = np.concatenate((np.zeros(delay, np.float32), jfk_48k))
    else:
        delayed = jfk_48k[-delay:]
    estimate, reference, lag = align(delayed, jfk_48k, max_lag=4800)
    assert lag == delay
    assert len(estimate) == len(reference) == len(jfk_48k) - max(0, -delay)
    np.testing.assert_array_equal(estimate, reference)


def test_align_respects_max_lag(jfk_48k):
    delayed = np.concatenate((np.zeros(2000, np.float32), jfk_48k))
    _, _, lag = align(delayed, jfk_48k, max_lag=100)
    assert abs(lag) <= 100
    with pytest.raises(ValueError, match="max_lag"):
        align(delayed, jfk_48k, max_lag=-1)


def test_pesq_and_stoi_rank_clean_above_noisy(jfk_48k, noise_48k):
    noisy = make_noisy_mix(jfk_48k, noise_48k, 0.0)
    assert pesq_wb(jfk_48k, jfk_48k) == pytest.approx(4.64, abs=0.01)  # P.862.2 maximum
    noisy_pesq = pesq_wb(noisy, jfk_48k)
    assert 1.0 < noisy_pesq < 2.5  # measured 1.75
    assert stoi(jfk_48k, jfk_48k) == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < stoi(noisy, jfk_48k) < 0.95  # measured 0.82
    assert stoi(noisy, jfk_48k, extended=True) < stoi(noisy, jfk_48k)
