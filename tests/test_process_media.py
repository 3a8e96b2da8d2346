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

pytestmark = pytest.mark.backend_free


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


# -- video --------------------------------------------------------------------------
def _summary_counts(summary: str) -> dict[str, int]:
    match = re.search(
        r"frames processed (\d+), fail-closed \(fully blurred\) (\d+); faces blurred (\d+), "
        r"plates blurred (\d+), text blurred (\d+)",
        summary,
    )
    assert match, summary
    keys = ("processed", "failed_closed", "faces", "plates", "text")
    return dict(zip(keys, (int(v) for v in match.groups()), strict=True))


def _decoded(path: Path) -> tuple[av.video.stream.VideoStream, list[np.ndarray], list[str]]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video)]
        audio = [s.codec_context.name for s in container.streams.audio]
        return video, frames, audio


@pytest.fixture(scope="module")
def face_detectors():
    from streams.media.detectors import YUNET_FILE, CenterFaceDetector, YuNetDetector
    from tests.conftest import MODELS_DIR

    return YuNetDetector(MODELS_DIR / YUNET_FILE.name), CenterFaceDetector()


def _faces(frames: list[np.ndarray], detectors) -> list[int]:
    return [sum(len(d.detect(frame)) for d in detectors) for frame in frames]


def test_video_with_audio_becomes_a_redacted_mp4(tmp_path: Path, face_detectors):
    from bench._video_material import write_pan_video

    clip = write_pan_video(tmp_path / "walk.mkv", frames=6, width=480, height=320, rate=12)
    _, raw, _ = _decoded(clip.path)
    assert min(_faces(raw, face_detectors)) >= 10  # the input is full of faces
    output = tmp_path / "walk.mp4"
    summary = run(str(clip.path), str(output))
    assert "video 480x320 at 12 fps, 6 frames" in summary
    assert "detectors face yunet, plate haar_plate" in summary
    assert "audio: chain deepfilternet3" in summary
    counts = _summary_counts(summary)
    assert counts["processed"] == 6 and counts["failed_closed"] == 0
    assert counts["faces"] >= 6 * 7
    video, frames, audio = _decoded(output)
    assert video.codec_context.name == "h264"
    assert (video.width, video.height) == (480, 320)
    assert video.average_rate == 12
    assert len(frames) == 6
    assert audio == ["aac"]
    with av.open(str(output)) as container:
        sound = container.streams.audio[0]
        seconds = float(sound.duration * sound.time_base)
    assert seconds == pytest.approx(clip.audio_s, abs=0.03)
    # No face left for either detector at Hearth's thresholds.
    assert _faces(frames, face_detectors) == [0] * 6


def test_video_without_audio_with_centerface_and_no_plates(tmp_path: Path, face_detectors):
    from bench._video_material import write_pan_video

    clip = write_pan_video(tmp_path / "mute.mp4", frames=4, width=320, height=240, audio=False)
    output = tmp_path / "out.mp4"
    summary = run(str(clip.path), str(output), "--face-detector", "centerface", "--no-blur-plates")
    assert "detectors face centerface;" in summary
    assert "audio: none in the input" in summary
    assert _summary_counts(summary)["processed"] == 4
    video, frames, audio = _decoded(output)
    assert (video.width, video.height, video.average_rate) == (320, 240, 12)
    assert audio == [] and len(frames) == 4
    assert _faces(frames, face_detectors) == [0] * 4


def test_video_with_blurring_off_passes_the_picture(tmp_path: Path, face_detectors):
    from bench._video_material import write_pan_video

    clip = write_pan_video(tmp_path / "in.mkv", frames=3, width=320, height=240, audio=False)
    output = tmp_path / "plain.mp4"
    summary = run(str(clip.path), str(output), "--no-blur-faces", "--no-blur-plates")
    assert "detectors none (frames pass unchanged)" in summary
    _, frames, _ = _decoded(output)
    _, raw, _ = _decoded(clip.path)
    assert min(_faces(frames, face_detectors)) >= 5
    for got, want in zip(frames, raw, strict=True):  # only H.264's loss
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 4


def test_video_errors_are_clear(tmp_path: Path, settings):
    from bench._video_material import write_pan_video
    from streams.media.detectors import YUNET_FILE

    clip = write_pan_video(tmp_path / "in.mkv", frames=2, width=160, height=120, audio=False)
    with pytest.raises(CommandError, match="--reference is for audio files"):
        run(str(clip.path), str(tmp_path / "o.mp4"), "--reference", str(clip.path))
    models = tmp_path / "models"
    models.mkdir()
    (models / YUNET_FILE.name).write_bytes(b"not the reviewed model")
    settings.HEARTH = {**settings.HEARTH, "MODEL_DIR": str(models)}
    with pytest.raises(CommandError, match="detector model refused"):
        run(str(clip.path), str(tmp_path / "o.mp4"))
    assert not (tmp_path / "o.mp4").exists()


def test_video_with_on_screen_text_has_the_personal_lines_blurred(tmp_path: Path):
    from bench._video_material import screen_boxes, write_pan_video
    from streams.media.text import PersonalTextMatcher, TextReader

    clip = write_pan_video(
        tmp_path / "screen.mkv", frames=8, width=640, height=480, audio=False, screen=True
    )
    output = tmp_path / "screen.mp4"
    summary = run(str(clip.path), str(output), "--no-blur-faces", "--blur-text")
    assert "detectors plate haar_plate, text rapidocr_text" in summary
    counts = _summary_counts(summary)
    assert counts["processed"] == 8 and counts["failed_closed"] == 0
    assert counts["text"] >= 3 * 8 and counts["plates"] >= 8
    _, frames, _ = _decoded(output)
    reader, matcher = TextReader(), PersonalTextMatcher()
    personal = [line for line, is_personal, _ in screen_boxes() if is_personal]
    for index, frame in enumerate(frames):
        lines = [line.text for line in reader.read(frame)]
        assert "Welcome to the show" in lines, (index, lines)  # the rest stays readable
        assert not [t for t in lines if matcher.entities(t) or t in personal], (index, lines)
    # Off by default: the same file without --blur-text keeps its text.
    plain = tmp_path / "plain.mp4"
    summary = run(str(clip.path), str(plain), "--no-blur-faces", "--no-blur-plates")
    _, frames, _ = _decoded(plain)
    assert "jane.doe@example.com" in [line.text for line in reader.read(frames[0])]
