"""Crash-tolerant WAV recording and repair (streams.recording)."""

from __future__ import annotations

import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from streams.audio import float_to_s16
from streams.recording import (
    RecordingInfo,
    WavFileError,
    WavRecorder,
    wav_info,
    wav_repair,
)

pytestmark = pytest.mark.backend_free

REPO_ROOT = Path(__file__).resolve().parents[1]


def ramp(n: int, start: int = 0) -> np.ndarray:
    """Deterministic test signal: a slow saw-tooth, exactly representable in s16."""
    return (((np.arange(start, start + n) % 2000) - 1000) / 32768).astype(np.float32)


def read_pcm(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path), "rb") as handle:
        assert (handle.getnchannels(), handle.getsampwidth()) == (1, 2)
        return handle.getframerate(), np.frombuffer(
            handle.readframes(handle.getnframes()), dtype="<i2"
        )


def test_recorder_writes_16bit_mono_wav_and_creates_dirs(tmp_path: Path):
    path = tmp_path / "a" / "b" / "rec.wav"
    recorder = WavRecorder(path)
    assert path.exists()
    for start in range(0, 48_000, 960):
        recorder.write(ramp(960, start))
    recorder.write(np.array([2.0, -2.0], np.float32))  # clipped
    assert recorder.frames_written == 48_002
    assert recorder.duration_s == pytest.approx(48_002 / 48_000)
    info = recorder.close()
    assert info == RecordingInfo(
        frames=48_002, sample_rate=48_000, duration_s=48_002 / 48_000, size_bytes=44 + 96_004
    )
    assert recorder.close() is info
    assert recorder.closed
    rate, pcm = read_pcm(path)
    assert rate == 48_000
    np.testing.assert_array_equal(pcm[:48_000], float_to_s16(ramp(48_000)))
    np.testing.assert_array_equal(pcm[48_000:], [32767, -32768])
    assert wav_info(path) == info
    with pytest.raises(ValueError, match="closed"):
        recorder.write(ramp(10))


def test_recorder_is_valid_wav_before_close_and_when_empty(tmp_path: Path):
    path = tmp_path / "live.wav"
    with WavRecorder(path, flush_interval_s=0.01) as recorder:
        assert wav_info(path).frames == 0  # header written at once
        recorder.write(ramp(4800))
        assert recorder.frames_flushed == 4800
        assert wav_info(path).frames == 4800  # header patched after each write
        with pytest.raises(ValueError, match="shape"):
            recorder.write(np.zeros((2, 2), np.float32))
    assert wav_info(path).frames == 4800
    empty = WavRecorder(tmp_path / "empty.wav").close()
    assert (empty.frames, empty.size_bytes) == (0, 44)


def test_recorder_flushes_by_audio_interval(tmp_path: Path):
    recorder = WavRecorder(tmp_path / "r.wav", flush_interval_s=0.1)  # 4800 samples
    recorder.write(ramp(960))
    assert recorder.frames_flushed == 0
    for _ in range(4):
        recorder.write(ramp(960))
    assert recorder.frames_flushed == 4800
    recorder.write(ramp(960))
    assert recorder.frames_flushed == 4800
    recorder.close()
    assert recorder.frames_flushed == 5760


def test_recorder_refuses_to_clobber_unless_asked(tmp_path: Path):
    path = tmp_path / "x.wav"
    WavRecorder(path).close()
    with pytest.raises(FileExistsError):
        WavRecorder(path)
    with WavRecorder(path, overwrite=True) as recorder:
        recorder.write(ramp(10))
    assert wav_info(path).frames == 10
    with pytest.raises(ValueError, match="flush_interval_s"):
        WavRecorder(tmp_path / "y.wav", flush_interval_s=0)


WRITER = """
import sys, time
import numpy as np
from pathlib import Path
from streams.recording import WavRecorder
from tests.test_recording import ramp

recorder = WavRecorder(Path(sys.argv[1]), flush_interval_s=0.25)
reported = 0
start = 0
while True:  # 20 ms blocks, faster than real time, until killed
    recorder.write(ramp(960, start))
    start += 960
    if recorder.frames_flushed != reported:
        reported = recorder.frames_flushed
        print(reported, flush=True)
    time.sleep(0.001)
"""


def test_recording_survives_sigkill_mid_stream(tmp_path: Path):
    path = tmp_path / "killed.wav"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    flushed = 0
    try:
        while flushed < 2 * 48_000:  # the writer says >= 2 s are handed to the OS
            line = proc.stdout.readline()
            assert line, f"writer exited early with {proc.wait()}"
            flushed = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    rate, pcm = read_pcm(path)  # opens with the stdlib reader as-is, no repair
    assert rate == 48_000
    assert len(pcm) >= flushed
    np.testing.assert_array_equal(pcm, float_to_s16(ramp(len(pcm))))
    repaired = wav_repair(path)
    assert repaired.frames >= len(pcm)
    assert repaired.size_bytes == 44 + 2 * repaired.frames
    _, pcm_after = read_pcm(path)
    np.testing.assert_array_equal(pcm_after, float_to_s16(ramp(repaired.frames)))


def test_wav_repair_restores_zeroed_header_sizes(tmp_path: Path):
    path = tmp_path / "crashed.wav"
    with WavRecorder(path) as recorder:
        recorder.write(ramp(12_345))
    with path.open("r+b") as handle:  # writer died before patching the sizes
        handle.seek(4)
        handle.write(b"\0\0\0\0")
        handle.seek(40)
        handle.write(b"\0\0\0\0")
        handle.seek(0, 2)
        handle.write(b"\x01")  # and half a sample at the end
    with pytest.raises(WavFileError):
        wav_info(path)
    info = wav_repair(path)
    assert (info.frames, info.size_bytes, info.sample_rate) == (12_345, 44 + 24_690, 48_000)
    _, pcm = read_pcm(path)
    np.testing.assert_array_equal(pcm, float_to_s16(ramp(12_345)))


def test_wav_repair_rejects_non_wav(tmp_path: Path):
    bogus = tmp_path / "bogus.wav"
    bogus.write_bytes(b"not a wav file at all")
    with pytest.raises(WavFileError, match="RIFF"):
        wav_repair(bogus)
    no_data = tmp_path / "nodata.wav"
    no_data.write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    with pytest.raises(WavFileError, match="data chunk"):
        wav_repair(no_data)
