"""``manage.py process_media``: the live chain over a file, delay-compensated."""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path

import av
import numpy as np
import pytest
from django.core.management import CommandError, call_command

from streams.audio import load_audio, make_noisy_mix
from streams.quality import align, si_snr
from tests.conftest import DATA_DIR


def run(*args: str) -> str:
    out = StringIO()
    call_command("process_media", *args, stdout=out)
    return out.getvalue()


def test_denoise_output_is_aligned_and_cleaner(
    noisy_jfk_speech_level_wav: Path, tmp_path: Path, jfk_48k
):
    output = tmp_path / "out" / "clean.wav"
    output.parent.mkdir()
    summary = run(str(noisy_jfk_speech_level_wav), str(output))
    assert "latency compensated 1440 samples (30.0 ms)" in summary
    assert "deepfilternet3" in summary
    noisy = load_audio(noisy_jfk_speech_level_wav)
    denoised = load_audio(output)
    assert len(denoised) == len(noisy) == len(jfk_48k)
    _, _, lag = align(denoised, jfk_48k, max_lag=4800)
    assert abs(lag) <= 1  # the 30 ms model delay is compensated
    assert si_snr(noisy, jfk_48k) == pytest.approx(0.0, abs=0.1)
    assert si_snr(denoised, jfk_48k) >= 10.0  # measured 12.0 dB


def test_no_denoise_output_equals_input(noisy_jfk_speech_level_wav: Path, tmp_path: Path):
    output = tmp_path / "plain.wav"
    summary = run(str(noisy_jfk_speech_level_wav), str(output), "--no-denoise")
    assert "chain passthrough" in summary
    assert "latency compensated 0 samples" in summary
    noisy = load_audio(noisy_jfk_speech_level_wav)
    plain = load_audio(output)
    assert len(plain) == len(noisy)
    # Identical up to 16-bit quantisation (and clipping of the noise peaks beyond 1).
    expected = np.clip(noisy, -1.0, 32767 / 32768)
    np.testing.assert_allclose(plain, expected, atol=0.5 / 32768 + 1e-9)
    clipped = int(re.search(r"clipped (\d+) samples", summary).group(1))
    assert clipped == np.count_nonzero(np.abs(noisy) > 1)


def test_reference_prints_quality_of_input_and_output(tmp_path: Path, jfk_48k, noise_48k):
    # A 16-bit FLAC input, peak-normalised: any format PyAV decodes is accepted.
    source = tmp_path / "noisy.flac"
    mix = make_noisy_mix(jfk_48k, noise_48k, 0.0, peak=0.95)[: 48_000 * 4]
    with av.open(str(source), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=48_000, layout="mono")
        stream.format = "s16"
        frame = av.AudioFrame.from_ndarray(
            np.round(mix * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48_000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    summary = run(str(source), str(tmp_path / "o.wav"), "--reference", str(DATA_DIR / "jfk.flac"))
    scores = {
        label: tuple(float(v) for v in values)
        for label, *values in re.findall(
            r"^(input|output): SI-SNR (-?[\d.]+) dB, PESQ-WB ([\d.]+), STOI ([\d.]+) "
            r"\(lag 0 samples\)$",
            summary,
            flags=re.MULTILINE,
        )
    }
    assert set(scores) == {"input", "output"}
    assert scores["input"][0] == pytest.approx(si_snr(mix, jfk_48k[: len(mix)]), abs=0.02)
    assert scores["output"][0] > scores["input"][0] + 5.0  # SI-SNR
    assert scores["output"][1] > scores["input"][1]  # PESQ


def test_errors_are_clear(tmp_path: Path, noisy_jfk_speech_level_wav: Path):
    with pytest.raises(CommandError, match="input file not found"):
        run(str(tmp_path / "missing.wav"), str(tmp_path / "o.wav"))
    text = tmp_path / "notes.txt"
    text.write_text("this is not audio")
    with pytest.raises(CommandError, match="cannot read input"):
        run(str(text), str(tmp_path / "o.wav"))
    with pytest.raises(CommandError, match="output directory does not exist"):
        run(str(noisy_jfk_speech_level_wav), str(tmp_path / "nowhere" / "o.wav"))
    with pytest.raises(CommandError, match="output is a directory"):
        run(str(noisy_jfk_speech_level_wav), str(tmp_path))
    with pytest.raises(CommandError, match="cannot read reference"):
        run(str(noisy_jfk_speech_level_wav), str(tmp_path / "o.wav"), "--reference", str(text))
    assert not (tmp_path / "o.wav").exists()
