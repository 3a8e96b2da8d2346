"""A live broadcast with a camera is recorded as MP4 (the redacted picture + the audio
the listeners get); a crash leaves a fragment file that the start-up repair finishes.

The broadcast test runs aiortc peers in one process on loopback (as
tests/test_video_live.py, whose camera and face checks it reuses); the crash tests
SIGKILL a recorder subprocess and run the start-up cleanup on what it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import AudioStreamTrack
from channels.db import database_sync_to_async
from django.conf import settings as django_settings

from bench._video_material import city_image
from streams import pii_setup, rtc, services
from streams.audio import write_wav
from streams.media import live_pii
from streams.media.detectors import YUNET_FILE, CenterFaceDetector, YuNetDetector
from streams.media.pii_analysis import PiiAnalyser
from streams.media.video import laplacian_variance
from streams.models import Recording
from streams.recording import RecordingInfo
from streams.rtc import media_server
from tests import live_server
from tests.conftest import MODELS_DIR
from tests.live_server import WsClient, session_cookie
from tests.rtc_helpers import (
    accept_answer,
    client_peer,
    close_all,
    connected,
    expect,
    friends_make,
    offer_sdp,
)
from tests.test_live_pii_rtc import _Stalled
from tests.test_mp4_live import WRITER
from tests.test_video_live import (
    FPS,
    HEIGHT,
    TOP,
    WIDTH,
    CityCamera,
    _crop_x,
    _faces_found,
    _go_live,
    _until,
)
from users.models import User

daphne_factory = live_server.daphne_factory
loopback_ice = live_server.loopback_ice

REPO = Path(__file__).resolve().parents[1]
RATE = 48_000


def _decode(path: Path) -> tuple[list[np.ndarray], float, float]:
    """Every video frame (BGR), the video's and the audio's decoded length (s); the
    audio starts with the video (within 1 s: it is placed by arrival times)."""
    with av.open(str(path)) as container:
        assert container.streams.video and container.streams.audio, "video + audio expected"
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = list(container.decode(audio=0))
        samples = sum(f.samples for f in audio)
        audio_s = samples / container.streams.audio[0].rate
        assert audio and audio[0].time is not None and audio[0].time < 1.0, audio[0].time
    with av.open(str(path)) as container:
        video_s = container.duration / av.time_base
    return frames, video_s, audio_s


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
async def test_a_camera_broadcast_is_recorded_as_a_redacted_mp4(settings) -> None:
    # What is blurred, not how fast (see test_video_live): a generous staleness budget.
    settings.HEARTH = {**settings.HEARTH, "VIDEO_STALE_S": 1.5}
    ann, _ben = await friends_make()
    a = await connected(ann)
    pc_a, camera, session_id = await _go_live(a)
    room = media_server().rooms[session_id]
    assert room.video_recording is not None
    await _until(
        lambda: (
            room.video_recording.recorder is not None and room.video_recording.recorder.frames >= 30
        ),
        timeout=90,
    )
    sent_s = camera.sent / FPS  # the camera ran this long before the stop
    await a.send_json_to({"type": "broadcast.stop"})
    ended = await expect(a, "broadcast.ended", timeout=60)
    sent_end_s = camera.sent / FPS  # ... and this long until the connection closed
    await close_all([pc_a], [a])

    recording = await database_sync_to_async(Recording.objects.get)(session_id=session_id)
    assert ended["recording_id"] == recording.id
    assert recording.kind == "video" and recording.file.name.endswith(".mp4")
    path = services.recording_path(recording)
    wav = path.with_suffix(".wav")
    assert not wav.exists() and not services.recording_fragments_path(wav).exists()
    assert recording.size_bytes == path.stat().st_size
    assert recording.blur_faces is True and recording.blur_plates is True
    assert recording.frames_processed > 0 and recording.faces_blurred > 0
    frames, video_s, audio_s = _decode(path)
    assert len(frames) >= 30, len(frames)
    # The file runs from the first frame the server got to the stop.
    assert sent_s - 3.0 < recording.duration_s < sent_end_s + 0.5, (
        recording.duration_s,
        sent_s,
        sent_end_s,
    )
    assert recording.duration_s == pytest.approx(video_s, abs=0.01)
    assert audio_s > 0.5 * video_s, (audio_s, video_s)
    with av.open(str(path)) as container:  # seekable: the index is in the file
        stream = container.streams.video[0]
        container.seek(int(1.0 / stream.time_base), stream=stream)
        assert next(container.decode(stream)).time < video_s

    yunet = YuNetDetector(MODELS_DIR / YUNET_FILE.name)
    centerface = CenterFaceDetector()
    band = city_image()[TOP : TOP + HEIGHT]
    raw = camera.crops[0]
    sharp, misses = 0, []
    for frame in frames[::2]:
        assert frame.shape == (HEIGHT, WIDTH, 3)
        if laplacian_variance(frame) < 0.05 * laplacian_variance(raw):
            continue  # blurred whole (failed closed)
        sharp += 1
        x = _crop_x(frame, band)
        misses += [("yunet", x, b) for b in _faces_found(frame, x, yunet, 0.45)]
        misses += [("centerface", x, b) for b in _faces_found(frame, x, centerface, 0.3)]
    print(f"{len(frames)} frames recorded, {video_s:.2f} s for {sent_s:.2f} s sent, {sharp} sharp")
    assert sharp > 0, f"every sampled frame was blurred whole ({len(frames)} frames)"
    assert misses == [], f"faces left in the recording: {misses}"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
async def test_a_dropped_camera_broadcaster_still_leaves_a_finished_mp4(
    settings, monkeypatch
) -> None:
    settings.HEARTH = {**settings.HEARTH, "MEDIA_RECONNECT_S": 0}
    monkeypatch.setattr(rtc, "VIDEO_COUNTS_S", 0.5)
    ann, _ben = await friends_make()
    a = await connected(ann)
    pc_a, _camera, session_id = await _go_live(a)
    recording_live = media_server().rooms[session_id].video_recording
    assert recording_live is not None
    await _until(
        lambda: recording_live.recorder is not None and recording_live.recorder.frames >= 15,
        timeout=90,
    )
    # While live, the counts reach the row (what a crash repair would keep).
    counted = database_sync_to_async(
        lambda: (
            Recording.objects.get(session_id=session_id).frames_processed
            + Recording.objects.get(session_id=session_id).frames_failed_closed
        )
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while await counted() == 0:
        assert loop.time() < deadline, "the redaction counts never reached the recording"
        await asyncio.sleep(0.2)
    await pc_a.close()  # the broadcaster's connection drops; its page stays
    ended = await expect(a, "session.ended", timeout=60)
    assert ended["reason"] == "disconnected" and ended["recording_id"] is not None
    await close_all([], [a])
    recording = await database_sync_to_async(Recording.objects.get)(id=ended["recording_id"])
    assert recording.kind == "video" and recording.file.name.endswith(".mp4")
    frames, video_s, _audio_s = _decode(services.recording_path(recording))
    assert len(frames) >= 15 and recording.duration_s == pytest.approx(video_s, abs=0.01)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
async def test_the_mp4_gets_the_audio_after_the_bleep_delay_line(
    monkeypatch, noisy_jfk_wav: Path
) -> None:
    # Speech-to-text stuck: the delay line lets out only muted audio, to the listeners
    # and so to the recording; loud speech in the MP4 would be raw audio.
    words = _Stalled()
    monkeypatch.setattr(live_pii, "DRAIN_MARGIN_S", 1.0)
    monkeypatch.setattr(
        rtc,
        "build_analyser",
        lambda timeline, **_: PiiAnalyser(words, pii_setup.detector(), timeline),
    )
    ann, _ben = await friends_make()
    a = await connected(ann)
    player = MediaPlayer(str(noisy_jfk_wav))
    pc = client_peer()
    try:
        pc.addTransceiver(player.audio, direction="sendonly")
        pc.addTrack(CityCamera())
        await a.send_json_to(
            {
                "type": "broadcast.start",
                "sdp": await offer_sdp(pc),
                "bleep": "tone",
                "delay_s": 2.0,
            }
        )
        answer = await expect(a, "broadcast.answer", timeout=60)
        await accept_answer(pc, answer["sdp"])
        live = media_server().rooms[answer["session_id"]].video_recording
        assert live is not None
        await _until(lambda: live.recorder is not None and live.recorder.frames >= 15, timeout=90)
        await asyncio.sleep(2.0)  # audio past the 2 s delay line reaches the file
        await a.send_json_to({"type": "broadcast.stop"})
        ended = await expect(a, "broadcast.ended", timeout=60)
    finally:
        words.release.set()
        if player.audio is not None:
            player.audio.stop()
        await close_all([pc], [a])
    recording = await database_sync_to_async(Recording.objects.get)(id=ended["recording_id"])
    assert recording.kind == "video"
    with av.open(str(services.recording_path(recording))) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert len(audio) > 48_000
    assert float(np.abs(audio).max()) < 0.01, "raw audio reached the MP4"


# --- Crash repair (start-up) ------------------------------------------------------------


def _age(*paths: Path) -> None:
    old = time.time() - django_settings.HEARTH["SESSION_STALE_S"] - 5
    for path in paths:
        os.utime(path, (old, old))


def _live_camera_session(user) -> tuple[Recording, Path]:
    """A live session as a camera broadcast leaves it: its WAV (3 s of tone) and the blur
    switches stored; returns the recording and its WAV path."""
    session, recording = services.live_session_start(
        broadcaster=user, denoise=False, owner_channel="specific.gone!1"
    )
    services.recording_video_expect(session_id=session.id, blur_faces=True, blur_plates=False)
    services.recording_video_counts_set(
        session_id=session.id,
        frames_processed=40,
        faces_blurred=120,
        plates_blurred=0,
        frames_failed_closed=3,
    )
    wav = services.recording_path(recording)
    wav.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(3 * RATE)
    write_wav(wav, (0.2 * np.sin(2 * np.pi * 440 * t / RATE)).astype(np.float32))
    return recording, wav


def _killed_writer(fragments: Path) -> None:
    """Record into ``fragments`` in a subprocess and SIGKILL it mid-write."""
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(fragments), "15"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"  # 3 s of video encoded
        time.sleep(0.3)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
async def test_a_server_killed_mid_camera_broadcast_leaves_an_mp4_the_start_up_finishes(
    daphne_factory, loopback_ice
) -> None:
    user = await database_sync_to_async(User.objects.create_user)("kim", password="pw-kim-1234")
    cookie = await database_sync_to_async(session_cookie)(user)
    server = daphne_factory("daphne")
    pc = client_peer()
    ws = await WsClient.open(server.ws_url, cookie, origin=server.origin, name="kim")
    try:
        await ws.expect("hello")
        pc.addTrack(AudioStreamTrack())
        pc.addTrack(CityCamera())
        await ws.send_json({"type": "broadcast.start", "sdp": await offer_sdp(pc)})
        answer = await ws.expect("broadcast.answer", timeout=60)
        await accept_answer(pc, answer["sdp"])
        recording = await database_sync_to_async(Recording.objects.get)(
            session_id=answer["session_id"]
        )
        wav = services.recording_path(recording)
        fragments = services.recording_fragments_path(wav)

        def whole_fragments() -> int:  # video frames readable from the live file
            with contextlib.suppress(Exception), av.open(str(fragments)) as container:
                return sum(1 for _ in container.demux(video=0))
            return 0

        await _until(lambda: whole_fragments() >= 10, timeout=90)
        server.send_signal(signal.SIGKILL)  # no shutdown hook, no finalise
        assert await asyncio.to_thread(server.wait, 15) is not None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pc.close(), 5)
        await ws.close()
    assert fragments.exists() and not services.recording_mp4_path(wav).exists()
    _age(wav, fragments)
    # What the next start-up runs (MediaServer.ensure_started, in-memory layer).
    assert await database_sync_to_async(services.live_session_end_orphaned)() == 1
    await database_sync_to_async(recording.refresh_from_db)()
    assert recording.kind == "video" and not fragments.exists()
    assert recording.blur_faces is True and recording.blur_plates is True
    frames, video_s, _audio_s = _decode(services.recording_path(recording))
    assert len(frames) >= 10 and recording.duration_s == pytest.approx(video_s, abs=0.01)


@pytest.mark.django_db
def test_start_up_finishes_the_mp4_a_killed_broadcast_left(
    alice, django_capture_on_commit_callbacks
) -> None:
    recording, wav = _live_camera_session(alice)
    fragments = services.recording_fragments_path(wav)
    _killed_writer(fragments)
    _age(wav, fragments)

    with django_capture_on_commit_callbacks(execute=True):
        assert services.live_session_end_orphaned() == 1

    recording.refresh_from_db()
    assert recording.kind == "video" and recording.file.name.endswith(".mp4")
    path = services.recording_path(recording)
    assert not fragments.exists() and not wav.exists()
    assert (recording.blur_faces, recording.blur_plates) == (True, False)
    # The counts stored while live survive the crash.
    assert (recording.frames_processed, recording.faces_blurred) == (40, 120)
    assert (recording.plates_blurred, recording.frames_failed_closed) == (0, 3)
    frames, video_s, audio_s = _decode(path)
    assert len(frames) >= 30  # at least 2 of the 3 s encoded survive the kill
    assert recording.duration_s == pytest.approx(video_s, abs=0.01) and video_s >= 2.0
    assert audio_s > 1.5
    head = path.read_bytes()[:4096]
    assert 0 <= head.find(b"moov") < 4096  # faststart: seekable while it downloads
    # Compression leaves it alone (it is not a WAV).
    assert services.recording_compress(recording_id=recording.id) is None


@pytest.mark.django_db
def test_a_fragment_file_still_being_written_is_left_alone(alice) -> None:
    recording, wav = _live_camera_session(alice)
    fragments = services.recording_fragments_path(wav)
    _killed_writer(fragments)
    _age(wav)  # the WAV looks dead, but the video was written just now
    services.live_session_end_orphaned()
    recording.refresh_from_db()
    assert recording.kind == "audio" and fragments.exists()


@pytest.mark.django_db
def test_the_owner_finishes_from_disk_when_its_own_finalise_failed(
    alice, django_capture_on_commit_callbacks
) -> None:
    recording, wav = _live_camera_session(alice)
    fragments = services.recording_fragments_path(wav)
    _killed_writer(fragments)  # fresh files: the owner knows its writers are closed
    info = RecordingInfo(frames=3 * RATE, sample_rate=RATE, duration_s=3.0, size_bytes=1)
    with django_capture_on_commit_callbacks(execute=True):
        services.live_session_end(session_id=recording.session_id, reason="stopped", info=info)
    recording.refresh_from_db()
    assert recording.kind == "video" and not fragments.exists() and not wav.exists()


@pytest.mark.django_db
def test_redaction_counts_are_stored_on_a_live_recording_only(alice) -> None:
    recording, _ = _live_camera_session(alice)
    with pytest.raises(ValueError):
        services.recording_video_counts_set(
            session_id=recording.session_id,
            frames_processed=-1,
            faces_blurred=0,
            plates_blurred=0,
            frames_failed_closed=0,
        )
    services.live_session_end(session_id=recording.session_id, reason="stopped")
    services.recording_video_counts_set(
        session_id=recording.session_id,
        frames_processed=99,
        faces_blurred=99,
        plates_blurred=99,
        frames_failed_closed=99,
    )
    recording.refresh_from_db()
    assert recording.frames_processed == 40  # the last count while live


@pytest.mark.django_db
def test_an_audio_only_crash_keeps_its_wav(alice) -> None:
    _session, recording = services.live_session_start(
        broadcaster=alice, denoise=False, owner_channel="specific.gone!1"
    )
    wav = services.recording_path(recording)
    wav.parent.mkdir(parents=True, exist_ok=True)
    write_wav(wav, np.zeros(3 * RATE, np.float32))
    _age(wav)
    assert services.live_session_end_orphaned() == 1
    recording.refresh_from_db()
    assert recording.kind == "audio" and recording.file.name.endswith(".wav")
    assert recording.blur_faces is None and wav.exists()
