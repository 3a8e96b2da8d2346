"""Recordings worth keeping: short broadcasts discarded, finished recordings compressed
to Ogg/Opus (crash-safe), waveform peaks, and the size per minute against WAV.

conftest turns compression and the minimum length off for the rest of the suite;
here they are on, as in production.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings as django_settings

from bench._common import shared_data_dir
from streams import services
from streams.audio import load_audio, write_wav
from streams.models import Recording
from streams.recording import (
    PEAK_SCALE,
    RecordingInfo,
    WavFileError,
    wav_info,
    wav_peaks,
    wav_to_opus,
)
from tests.factories import Inbox, befriend, make_recording
from users.events import user_group

pytestmark = pytest.mark.django_db

RATE = 48_000


@pytest.fixture(autouse=True)
def _production_recordings(settings) -> None:
    settings.HEARTH = {**settings.HEARTH, "RECORDING_COMPRESS": True, "MIN_RECORDING_S": 2.0}


def tone(frames: int, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.sin(np.arange(frames) * 2 * np.pi * 440 / RATE)).astype(np.float32)


def info_of(frames: int) -> RecordingInfo:
    return RecordingInfo(
        frames=frames, sample_rate=RATE, duration_s=frames / RATE, size_bytes=44 + 2 * frames
    )


def start_with_audio(user, frames: int) -> tuple:
    session, recording = services.live_session_start(
        broadcaster=user, denoise=True, owner_channel="specific.owner!1"
    )
    path = services.recording_path(recording)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, tone(frames))
    return session, recording, path


def age_file(path: Path) -> None:
    old = time.time() - django_settings.HEARTH["SESSION_STALE_S"] - 5
    os.utime(path, (old, old))


# --- Short broadcasts ---------------------------------------------------------------


def test_a_broadcast_under_two_seconds_is_discarded_and_the_broadcaster_told(
    alice, bob, layer, django_capture_on_commit_callbacks, monkeypatch
):
    befriend(alice, bob)
    monkeypatch.setattr(services, "recording_compress_soon", lambda **_: None)
    session, _, path = start_with_audio(alice, int(1.9 * RATE))
    page = Inbox(layer, services.session_group(session.id))
    friend = Inbox(layer, user_group(bob.id))
    with django_capture_on_commit_callbacks(execute=True):
        kept = services.live_session_end(
            session_id=session.id, reason="stopped", info=info_of(int(1.9 * RATE))
        )
    assert kept is None
    assert not Recording.objects.exists()
    assert not path.exists()
    ended = [data for event, data in page.events() if event == "session.ended"]
    assert ended == [
        {
            "session_id": session.id,
            "reason": "stopped",
            "recording_id": None,
            "recording_discarded": "too_short",
            "min_recording_s": 2.0,
        }
    ]
    assert ("recordings.changed", {}) in friend.events()


def test_a_broadcast_of_two_seconds_is_kept(alice, django_capture_on_commit_callbacks, monkeypatch):
    compressed: list[int] = []
    session, recording, path = start_with_audio(alice, 2 * RATE)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        kept = services.live_session_end(
            session_id=session.id, reason="stopped", info=info_of(2 * RATE)
        )
    assert kept is not None and kept.duration_s == 2.0
    assert path.exists()
    # Compression is queued only after the commit, never inside the transaction.
    monkeypatch.setattr(
        services, "recording_compress_soon", lambda *, recording_id: compressed.append(recording_id)
    )
    for callback in callbacks:
        callback()
    assert compressed == [recording.id]


def test_a_short_recording_of_a_crashed_session_is_discarded_too(alice):
    _, _, path = start_with_audio(alice, RATE // 2)
    age_file(path)
    assert services.live_session_end_orphaned() == 1
    assert not Recording.objects.exists()


def test_a_short_file_still_being_written_is_kept(alice):
    # A session judged lost whose file was just written: its owner may still be at it.
    _, recording, _ = start_with_audio(alice, RATE // 2)
    assert services.live_session_end_orphaned() == 1
    assert Recording.objects.filter(id=recording.id).exists()


# --- Peaks and transcoding (no Django) ------------------------------------------------


def test_peaks_are_min_max_pairs_of_equal_spans(tmp_path):
    samples = np.zeros(10 * RATE, np.float32)
    samples[RATE : 2 * RATE] = 0.5  # 1-2 s: +0.5
    samples[5 * RATE] = -1.0  # one full-scale negative sample at 5 s
    path = tmp_path / "a.wav"
    write_wav(path, samples)
    peaks = wav_peaks(path, points=10)
    assert len(peaks) == 20
    pairs = list(zip(peaks[::2], peaks[1::2], strict=True))
    assert pairs[1] == (500, 500)
    assert pairs[5] == (-PEAK_SCALE, 0)
    assert pairs[0] == pairs[9] == (0, 0)
    # Reading in small blocks gives the same answer as one pass.
    assert wav_peaks(path, points=7, block_frames=1001) == wav_peaks(path, points=7)


def test_peaks_of_an_empty_or_tiny_file(tmp_path):
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0, np.float32))
    assert wav_peaks(empty) == []
    tiny = tmp_path / "tiny.wav"
    write_wav(tiny, np.array([0.25, -0.25, 0.0], np.float32))
    assert wav_peaks(tiny, points=1000) == [250, 250, -250, -250, 0, 0]
    with pytest.raises(OSError):
        wav_peaks(tmp_path / "missing.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not a wav file at all")
    with pytest.raises(WavFileError):
        wav_peaks(garbage)


def test_opus_transcode_keeps_every_sample_and_leaves_no_temporary_file(tmp_path):
    frames = 3 * RATE + 123  # not a whole number of 20 ms frames
    source = tmp_path / "a.wav"
    write_wav(source, tone(frames))
    target = tmp_path / "a.ogg"
    size = wav_to_opus(source, target, bitrate=48_000)
    assert size == target.stat().st_size > 0
    decoded = load_audio(target)
    assert len(decoded) == frames
    assert {p.name for p in tmp_path.iterdir()} == {"a.wav", "a.ogg"}


def test_a_failed_transcode_leaves_no_output(tmp_path):
    source = tmp_path / "bad.wav"
    source.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(WavFileError):
        wav_to_opus(source, tmp_path / "bad.ogg", bitrate=48_000)
    assert {p.name for p in tmp_path.iterdir()} == {"bad.wav"}


def test_size_per_minute_of_real_speech_against_wav(tmp_path):
    # JFK's 11 s excerpt: the README's MB/min figure comes from this measurement.
    speech = load_audio(shared_data_dir() / "jfk.flac")
    source = tmp_path / "jfk.wav"
    write_wav(source, speech)
    minutes = len(speech) / RATE / 60
    wav_mb_per_min = source.stat().st_size / 1e6 / minutes
    size = wav_to_opus(source, tmp_path / "jfk.ogg", bitrate=48_000)
    opus_mb_per_min = size / 1e6 / minutes
    print(f"WAV {wav_mb_per_min:.2f} MB/min, Ogg/Opus 48 kb/s {opus_mb_per_min:.3f} MB/min")
    assert 5.7 < wav_mb_per_min < 5.8
    assert opus_mb_per_min < 0.40  # 48 kb/s plus Ogg overhead: about 0.36
    assert wav_mb_per_min / opus_mb_per_min > 14


# --- Compressing a finished recording -------------------------------------------------


def test_compress_switches_the_row_to_ogg_after_the_commit(
    alice, bob, layer, django_capture_on_commit_callbacks
):
    befriend(alice, bob)
    recording = make_recording(alice, frames=3 * RATE)
    wav = services.recording_path(recording)
    duration = wav_info(wav).duration_s
    friend = Inbox(layer, user_group(bob.id))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        done = services.recording_compress(recording_id=recording.id, writer_closed=True)
    assert done is not None
    ogg = wav.with_suffix(".ogg")
    assert wav.exists() and ogg.exists()  # the WAV goes only once the row is committed
    for callback in callbacks:
        callback()
    assert not wav.exists()
    recording.refresh_from_db()
    assert recording.file.name.endswith(".ogg") and recording.is_compressed
    assert services.recording_path(recording) == ogg
    assert recording.size_bytes == ogg.stat().st_size < (44 + 2 * 3 * RATE) / 10
    assert recording.duration_s == duration == 3.0
    assert len(recording.peaks) == 2000
    assert len(load_audio(ogg)) == 3 * RATE
    assert ("recordings.changed", {}) in friend.events()


def test_compress_leaves_live_busy_and_compressed_recordings_alone(alice, bob):
    live = make_recording(alice, ended=False, frames=RATE)
    assert services.recording_compress(recording_id=live.id, writer_closed=True) is None
    busy = make_recording(bob, frames=RATE)  # written just now: a writer may be at it
    assert services.recording_compress(recording_id=busy.id) is None
    assert services.recording_path(busy).suffix == ".wav"
    assert services.recording_compress(recording_id=busy.id, writer_closed=True) is not None
    assert services.recording_compress(recording_id=busy.id, writer_closed=True) is None
    assert services.recording_compress(recording_id=999_999) is None


def test_compress_is_off_with_the_setting(alice, settings):
    settings.HEARTH = {**settings.HEARTH, "RECORDING_COMPRESS": False}
    recording = make_recording(alice, frames=RATE)
    age_file(services.recording_path(recording))
    assert services.recording_compress(recording_id=recording.id) is None
    assert services.recording_compress_pending() == 0
    recording.refresh_from_db()
    assert recording.file.name.endswith(".wav")


def test_a_recording_deleted_while_compressing_leaves_no_ogg(
    alice, monkeypatch, django_capture_on_commit_callbacks
):
    recording = make_recording(alice, frames=RATE)
    real = services.wav_to_opus

    def transcode_then_delete(source: Path, target: Path, *, bitrate: int) -> int:
        size = real(source, target, bitrate=bitrate)
        Recording.objects.filter(id=recording.id).delete()  # the owner deleted it meanwhile
        return size

    monkeypatch.setattr(services, "wav_to_opus", transcode_then_delete)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.recording_compress(recording_id=recording.id, writer_closed=True) is None
    assert not services.recording_path(recording).with_suffix(".ogg").exists()


def test_a_crash_during_the_transcode_keeps_the_wav_and_housekeeping_redoes_it(
    alice, monkeypatch, django_capture_on_commit_callbacks
):
    recording = make_recording(alice, frames=RATE)
    wav = services.recording_path(recording)
    real = services.wav_to_opus

    def crash(source: Path, target: Path, *, bitrate: int) -> int:
        # What a kill mid-transcode leaves: a partial temporary file, no target.
        (target.parent / f".{target.name}.dead.part").write_bytes(b"OggS partial")
        raise OSError("killed")

    monkeypatch.setattr(services, "wav_to_opus", crash)
    with pytest.raises(OSError):
        services.recording_compress(recording_id=recording.id, writer_closed=True)
    recording.refresh_from_db()
    assert recording.file.name.endswith(".wav") and wav.exists()
    assert not wav.with_suffix(".ogg").exists()

    monkeypatch.setattr(services, "wav_to_opus", real)
    part = wav.parent / f".{wav.stem}.ogg.dead.part"
    age_file(part)
    age_file(wav)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.recording_compress_pending() == 1
    recording.refresh_from_db()
    assert recording.is_compressed and not wav.exists() and not part.exists()
    assert len(load_audio(services.recording_path(recording))) == RATE


def test_housekeeping_removes_a_wav_left_after_the_commit(
    alice, django_capture_on_commit_callbacks
):
    # Killed between the commit and the unlink: the row names the Ogg file, the WAV stays.
    recording = make_recording(alice, frames=RATE)
    wav = services.recording_path(recording)
    with django_capture_on_commit_callbacks(execute=False):
        services.recording_compress(recording_id=recording.id, writer_closed=True)
    assert wav.exists()
    other = make_recording(alice, frames=RATE, ended=False)  # a live WAV: not touched
    with django_capture_on_commit_callbacks(execute=True):
        assert services.recording_compress_pending() == 0
    assert not wav.exists()
    assert services.recording_path(other).exists()


def test_a_repaired_wav_of_a_crashed_session_is_compressed_by_housekeeping(alice):
    _, recording, path = start_with_audio(alice, 3 * RATE)
    age_file(path)
    assert services.live_session_end_stale() == 0  # its heartbeat is fresh
    services.live_session_end_orphaned()
    age_file(path)  # the repair just wrote it
    recording.refresh_from_db()
    assert recording.ended_at is not None and recording.file.name.endswith(".wav")
    assert services.recording_compress_pending() == 1
    recording.refresh_from_db()
    assert recording.is_compressed and recording.duration_s == 3.0


@pytest.mark.django_db(transaction=True)
def test_recording_compress_soon_runs_in_a_background_thread(alice):
    # The real path: a thread of its own, after the commit, off any transaction.
    recording = make_recording(alice, frames=RATE)
    services.recording_compress_soon(recording_id=recording.id)
    deadline = time.monotonic() + 30
    while not Recording.objects.get(id=recording.id).is_compressed:
        assert time.monotonic() < deadline, "not compressed in the background"
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
async def test_the_housekeeping_loop_compresses_finished_wavs_from_start_up(settings):
    # A WAV left by a crash (or by a process killed mid-transcode) is compressed by the
    # media server's housekeeping, which also runs once at start-up.
    import asyncio
    import contextlib

    from channels.db import database_sync_to_async

    from streams import rtc
    from tests.factories import make_user

    settings.HEARTH = {**settings.HEARTH, "HOUSEKEEPING_S": 0.05}

    def make() -> Recording:
        recording = make_recording(make_user("old"), frames=RATE)
        age_file(services.recording_path(recording))
        return recording

    recording = await database_sync_to_async(make)()
    server = rtc.MediaServer()
    task = asyncio.ensure_future(server._housekeeping_loop())
    try:
        deadline = time.monotonic() + 30
        while not await database_sync_to_async(
            lambda: Recording.objects.get(id=recording.id).is_compressed
        )():
            assert time.monotonic() < deadline, "housekeeping did not compress the WAV"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.workers.shutdown()
