"""Decoding, frame conversion, WAV writing and noisy mixes (streams.audio)."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streams.audio import (
    SAMPLE_RATE,
    AudioDecodeError,
    FrameToMono,
    float_to_s16,
    load_audio,
    make_noisy_mix,
    samples_to_frame,
    write_wav,
)
from tests.conftest import DATA_DIR

pytestmark = pytest.mark.backend_free


def s16_frame(interleaved: np.ndarray, layout: str, rate: int, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(interleaved.reshape(1, -1), format="s16", layout=layout)
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


def tone(n: int, freq: float = 440.0, rate: int = SAMPLE_RATE, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def test_load_audio_decodes_flac_stereo_44k_to_mono_48k(jfk_48k):
    assert jfk_48k.dtype == np.float32
    assert jfk_48k.ndim == 1
    assert len(jfk_48k) == pytest.approx(11.0 * SAMPLE_RATE, abs=48)
    assert 0.5 < np.max(np.abs(jfk_48k)) <= 1.0


def test_load_audio_keeps_48k_s16_wav_sample_exact(noise_48k):
    with wave.open(str(DATA_DIR / "noise_freesound_573577.wav"), "rb") as handle:
        assert (handle.getframerate(), handle.getnchannels(), handle.getsampwidth()) == (
            48_000,
            1,
            2,
        )
        raw = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
    np.testing.assert_array_equal(noise_48k, raw.astype(np.float32) / 32768)


@pytest.mark.parametrize(
    ("name", "message"),
    [("city.jpg", "no audio stream"), ("README.md", "cannot decode")],
)
def test_load_audio_rejects_files_without_audio(name, message):
    with pytest.raises(AudioDecodeError, match=message):
        load_audio(DATA_DIR / name)


def test_load_audio_rejects_missing_and_empty_files(tmp_path: Path):
    with pytest.raises(AudioDecodeError, match="No such file"):
        load_audio(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioDecodeError, match="no samples"):
        load_audio(empty)


def test_frame_to_mono_averages_webrtc_stereo_without_gain():
    # aiortc's Opus decoder: s16 packed stereo, 48 kHz, 960 samples, mono mic in both.
    x = float_to_s16(tone(960 * 3))
    converter = FrameToMono()
    outs = [
        converter.convert(s16_frame(np.stack([chunk, chunk], 1), "stereo", 48_000, pts))
        for pts, chunk in zip((0, 960, 5000), np.split(x, 3), strict=True)
    ]
    assert [len(o) for o in outs] == [960, 960, 960]
    assert all(o.dtype == np.float32 for o in outs)
    np.testing.assert_array_equal(np.concatenate(outs), x.astype(np.float32) / 32768)
    assert len(converter.flush()) == 0

    left_only = FrameToMono().convert(
        s16_frame(np.stack([x[:960], np.zeros(960, np.int16)], 1), "stereo", 48_000, 0)
    )
    np.testing.assert_allclose(left_only, x[:960] / 65536, atol=1e-7)


def test_frame_to_mono_resamples_and_follows_format_changes():
    converter = FrameToMono()
    produced = 0
    for k in range(10):  # 10 x 20 ms at 44.1 kHz
        chunk = float_to_s16(tone(882, rate=44_100, amp=0.3))
        produced += len(converter.convert(s16_frame(chunk, "mono", 44_100, k * 882)))
    # The rate changes mid-stream to 48 kHz stereo: the old resampler is flushed.
    stereo = np.zeros(2 * 960, dtype=np.int16)
    produced += len(converter.convert(s16_frame(stereo, "stereo", 48_000, 0)))
    produced += len(converter.flush())
    assert produced == 9600 + 960
    with pytest.raises(ValueError, match="sample rate"):
        FrameToMono().convert(av.AudioFrame(format="s16", layout="mono", samples=10))


def test_float_to_s16_rounds_and_clips_like_ffmpeg():
    values = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0, 1 / 65536 * 1.01], np.float32)
    np.testing.assert_array_equal(
        float_to_s16(values), [0, 16384, -16384, 32767, -32768, 32767, -32768, 1]
    )
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    np.testing.assert_array_equal(float_to_s16(pcm.astype(np.float32) / 32768), pcm)


def test_samples_to_frame_builds_s16_mono_frame():
    frame = samples_to_frame(np.array([0.25, -2.0, 1.0], np.float32), pts=4800)
    assert frame.format.name == "s16"
    assert frame.layout.name == "mono"
    assert (frame.samples, frame.sample_rate, frame.pts) == (3, 48_000, 4800)
    assert frame.time_base == Fraction(1, 48_000)
    np.testing.assert_array_equal(frame.to_ndarray(), [[8192, -32768, 32767]])
    with pytest.raises(ValueError, match="shape"):
        samples_to_frame(np.zeros((2, 3), np.float32), pts=0)


def test_write_wav_round_trips_through_load_audio(tmp_path: Path):
    signal = tone(4800, amp=0.8)
    path = tmp_path / "tone.wav"
    write_wav(path, signal)
    with wave.open(str(path), "rb") as handle:
        assert handle.getparams()[:4] == (1, 2, 48_000, 4800)
    np.testing.assert_allclose(load_audio(path), signal, atol=0.5 / 32768 + 1e-9)


def test_make_noisy_mix_hits_snr_and_loops_noise(jfk_48k, noise_48k):
    for snr_db in (0.0, 5.0, -3.0):
        mix = make_noisy_mix(jfk_48k, noise_48k, snr_db)
        assert mix.dtype == np.float32 and mix.shape == jfk_48k.shape
        added = mix.astype(np.float64) - jfk_48k
        measured = 10 * np.log10(np.mean(jfk_48k.astype(np.float64) ** 2) / np.mean(added**2))
        assert measured == pytest.approx(snr_db, abs=1e-3)
    # The noise (4.94 s) is looped: the added signal repeats with its period.
    period = len(noise_48k)
    added = make_noisy_mix(jfk_48k, noise_48k, 0.0).astype(np.float64) - jfk_48k
    gain = added[:period] / np.where(noise_48k == 0, 1, noise_48k)
    np.testing.assert_allclose(added[period : 2 * period], added[:period], atol=1e-6)
    assert np.std(gain[noise_48k != 0]) < 1e-3


def test_make_noisy_mix_peak_scales_both_parts(jfk_48k, noise_48k):
    raw = make_noisy_mix(jfk_48k, noise_48k, 0.0)
    assert np.max(np.abs(raw)) > 1.0  # impulsive noise: would clip as 16-bit PCM
    mix = make_noisy_mix(jfk_48k, noise_48k, 0.0, peak=0.95)
    assert np.max(np.abs(mix)) == pytest.approx(0.95, rel=1e-6)
    np.testing.assert_allclose(mix, raw * (0.95 / np.max(np.abs(raw))), rtol=1e-5, atol=1e-7)


def test_make_noisy_mix_rejects_bad_input():
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="silent"):
        make_noisy_mix(x, np.zeros(5, np.float32), 0.0)
    with pytest.raises(ValueError, match="empty"):
        make_noisy_mix(np.zeros(0, np.float32), x, 0.0)
    with pytest.raises(ValueError, match="peak"):
        make_noisy_mix(x, x, 0.0, peak=0.0)
