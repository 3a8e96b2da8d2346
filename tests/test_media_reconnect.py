"""A broadcast whose media path fails (its peer connection failed or closed) is kept
``MEDIA_RECONNECT_S`` for its page to send a fresh SDP offer (``broadcast.reconnect``):
aiortc 1.16 cannot restart ICE, so a new peer connection replaces the old one and
feeds the same session graph, listeners and recording, the gap recorded as silence.

A camera broadcast sends its camera again on the new connection: the same redaction
graph reads it, listeners get blurred frames again and the MP4 stays one file.

aiortc peers in one process, signalled over communicators (tests/rtc_helpers.py).
"""

from __future__ import annotations

import asyncio
import wave

import av
import numpy as np
import pytest
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import AudioStreamTrack
from channels.db import database_sync_to_async

from bench._video_material import city_image
from streams import rtc, services
from streams.media.detectors import YUNET_FILE, CenterFaceDetector, YuNetDetector
from streams.media.video import laplacian_variance
from streams.models import LiveSession, Recording
from tests.conftest import MODELS_DIR
from tests.live_flow import go_live, listen, until
from tests.rtc_helpers import (
    accept_answer,
    client_peer,
    close_all,
    connected,
    expect,
    friends_make,
    offer_sdp,
)
from tests.test_video_live import (
    HEIGHT,
    TOP,
    WIDTH,
    CityCamera,
    _crop_x,
    _faces_found,
    _go_live,
    _watch,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _reconnect_window(settings, seconds: float) -> None:
    settings.HEARTH = {**settings.HEARTH, "MEDIA_RECONNECT_S": seconds}


async def _session(session_id: int) -> LiveSession:
    return await database_sync_to_async(LiveSession.objects.get)(id=session_id)


def _longest_silence_s(samples: np.ndarray) -> float:
    """The longest run of exact zeros in int16 ``samples``, in seconds at 48 kHz."""
    silent = np.concatenate([[False], samples == 0, [False]])
    edges = np.flatnonzero(np.diff(silent.astype(np.int8)))
    runs = edges[1::2] - edges[::2]
    return float(runs.max()) / 48_000 if len(runs) else 0.0


async def test_a_failed_media_path_reconnects_into_the_same_session_and_recording(
    settings, noisy_jfk_wav
) -> None:
    _reconnect_window(settings, 15.0)
    ann, ben = await friends_make()
    tab, friend = await connected(ann), await connected(ben)
    pc, player, session_id = await go_live(tab, noisy_jfk_wav)
    listener_pc, sink = await listen(friend, session_id)
    pc2 = player2 = None
    try:
        await until(lambda: len(sink.samples) > 48_000 // 2)
        room = rtc.media_server().rooms[session_id]
        runner, first_pc = room.runner, room.pc
        await until(lambda: first_pc.connectionState == "connected")

        # The media path dies: the first peer's transport closes under the broadcast.
        await pc.close()
        # (aiortc sees the DTLS close at once; a silent path would take consent expiry, 30 s)
        await until(lambda: first_pc.connectionState in ("failed", "closed"), timeout=40)
        await asyncio.sleep(1.0)  # a gap without media
        assert not room.closing and (await _session(session_id)).ended_at is None

        # The page answers with a fresh offer from a new peer connection, same socket.
        player2 = MediaPlayer(str(noisy_jfk_wav))
        pc2 = client_peer()
        pc2.addTransceiver(player2.audio, direction="sendonly")
        pc2.addTransceiver("video", direction="sendonly")  # a camera the broadcast lacks
        await tab.send_json_to(
            {"type": "broadcast.reconnect", "session_id": session_id, "sdp": await offer_sdp(pc2)}
        )
        answer = await expect(tab, "broadcast.reconnected")
        assert answer["session_id"] == session_id
        # An audio broadcast receives no camera after a reconnect either.
        sections = answer["sdp"].split("\r\nm=")[1:]
        assert [s.split(" ", 1)[0] for s in sections] == ["audio", "video"]
        assert "a=recvonly" in sections[0] and "a=inactive" in sections[1]
        await accept_answer(pc2, answer["sdp"])
        await until(lambda: room.pc is not first_pc and room.pc.connectionState == "connected")
        assert room.runner is runner and room.source.replacements == 1 and room.reconnects == 1

        # The listener's own connection never changed, and it hears the broadcast again
        # (after the gap's silence).
        def tail_rms() -> float:
            tail = sink.samples[-24_000:]
            return float(np.sqrt(np.mean(np.square(tail)))) if len(tail) else 0.0

        await until(lambda: tail_rms() > 0.01)
        assert listener_pc.connectionState == "connected"
        assert (await _session(session_id)).ended_at is None

        await tab.send_json_to({"type": "broadcast.stop"})
        ended = await expect(tab, "broadcast.ended")
        session = await _session(session_id)
        assert session.end_reason == "stopped"
        recordings = await database_sync_to_async(list)(
            Recording.objects.filter(owner=ann).order_by("id")
        )
        assert [r.id for r in recordings] == [ended["recording_id"]], "one recording"
        with wave.open(str(settings.MEDIA_ROOT / recordings[0].file.name)) as wav:
            rate = wav.getframerate()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
        wall = (session.ended_at - session.started_at).total_seconds()
        assert len(samples) / rate > 0.7 * wall - 1.0, (len(samples) / rate, wall)
        # The second without media is in the file, as silence.
        assert _longest_silence_s(samples) >= 0.8
    finally:
        player.audio.stop()
        if player2 is not None:
            player2.audio.stop()
        await sink.stop()
        await close_all([pc2, listener_pc], [tab, friend])


async def test_without_a_reconnect_the_broadcast_ends_and_keeps_its_recording(
    settings, noisy_jfk_wav
) -> None:
    _reconnect_window(settings, 1.0)
    ann, ben = await friends_make()
    tab, friend = await connected(ann), await connected(ben)
    pc, player, session_id = await go_live(tab, noisy_jfk_wav)
    try:
        assert (await expect(friend, "live"))["live"] is True
        room = rtc.media_server().rooms[session_id]
        await until(lambda: room.pc.connectionState == "connected")
        await asyncio.sleep(0.5)
        await pc.close()
        ended = await expect(tab, "session.ended", timeout=15)  # the page is told why
        assert ended["session_id"] == session_id and ended["reason"] == "disconnected"
        recording = await database_sync_to_async(Recording.objects.get)(owner=ann)
        assert ended["recording_id"] == recording.id
        assert (await expect(friend, "live"))["live"] is False

        # Too late: the page's reconnect is refused, clearly.
        late = client_peer()
        late.addTransceiver("audio", direction="sendonly")
        await tab.send_json_to(
            {"type": "broadcast.reconnect", "session_id": session_id, "sdp": await offer_sdp(late)}
        )
        error = await expect(tab, "error")
        assert error["code"] == "not_live" and error["ref"] == "broadcast.reconnect"
        await late.close()
    finally:
        player.audio.stop()
        await close_all([], [tab, friend])


async def test_only_the_live_page_may_reconnect_and_only_with_a_usable_offer(
    settings, noisy_jfk_wav
) -> None:
    _reconnect_window(settings, 15.0)
    ann, ben = await friends_make()
    tab, other_tab, friend = await connected(ann), await connected(ann), await connected(ben)
    pc, player, session_id = await go_live(tab, noisy_jfk_wav)
    offer_pc = client_peer()
    offer_pc.addTransceiver("audio", direction="sendonly")
    try:
        sdp = await offer_sdp(offer_pc)
        # Another tab of the broadcaster, and a friend, do not hold the broadcast.
        for comm in (other_tab, friend):
            await comm.send_json_to(
                {"type": "broadcast.reconnect", "session_id": session_id, "sdp": sdp}
            )
            error = await expect(comm, "error")
            assert error["code"] == "not_live" and error["ref"] == "broadcast.reconnect"
        # The live page with an unusable offer: bad_sdp, and the broadcast goes on.
        await tab.send_json_to(
            {"type": "broadcast.reconnect", "session_id": session_id, "sdp": "v=0\r\n"}
        )
        assert (await expect(tab, "error"))["code"] == "bad_sdp"
        await tab.send_json_to({"type": "broadcast.reconnect", "session_id": "1", "sdp": sdp})
        assert (await expect(tab, "error"))["code"] == "bad_request"
        room = rtc.media_server().rooms[session_id]
        assert not room.closing and room.reconnects == 0

        # Reconnecting turned off (MEDIA_RECONNECT_S 0): refused as unavailable.
        _reconnect_window(settings, 0.0)
        await tab.send_json_to(
            {"type": "broadcast.reconnect", "session_id": session_id, "sdp": sdp}
        )
        error = await expect(tab, "error")
        assert error["code"] == "unavailable" and error["ref"] == "broadcast.reconnect"
        assert not room.closing and room.reconnects == 0
    finally:
        player.audio.stop()
        await close_all([pc, offer_pc], [tab, other_tab, friend])


@pytest.mark.slow
async def test_a_camera_broadcast_reconnects_its_camera_into_the_same_redaction_graph(
    settings,
) -> None:
    # What is blurred, not how fast (see test_video_live): a generous staleness budget.
    _reconnect_window(settings, 15.0)
    settings.HEARTH = {**settings.HEARTH, "VIDEO_STALE_S": 1.5}
    ann, ben = await friends_make()
    tab, friend = await connected(ann), await connected(ben)
    pc, camera, session_id = await _go_live(tab)
    listener_pc, collector = await _watch(friend, session_id)
    pc2 = None
    try:
        await until(lambda: len(collector.frames) >= 5, timeout=60)
        room = rtc.media_server().rooms[session_id]
        first_pc, video_runner = room.pc, room.video_runner
        await until(lambda: first_pc.connectionState == "connected")

        # The media path dies; the camera graph waits for a new track, sending nothing.
        await pc.close()
        await until(lambda: first_pc.connectionState in ("failed", "closed"), timeout=40)
        await asyncio.sleep(1.0)  # a gap without media
        assert not room.closing and not room._video_task.done()
        before = len(collector.frames)

        # The page's fresh offer carries the microphone and the camera again.
        pc2 = client_peer()
        pc2.addTrack(AudioStreamTrack())
        pc2.addTrack(CityCamera())
        await tab.send_json_to(
            {"type": "broadcast.reconnect", "session_id": session_id, "sdp": await offer_sdp(pc2)}
        )
        answer = await expect(tab, "broadcast.reconnected", timeout=30)
        await accept_answer(pc2, answer["sdp"])
        await until(lambda: room.pc is not first_pc and room.pc.connectionState == "connected")
        assert room.video_runner is video_runner and room.video_source.replacements == 1

        # The listener's own connection receives the new camera's frames, redacted.
        await until(lambda: len(collector.frames) >= before + 15, timeout=60)
        assert listener_pc.connectionState == "connected"
        frames = await collector.stop()
        video = room.video_stats()
        await tab.send_json_to({"type": "broadcast.stop"})
        ended = await expect(tab, "broadcast.ended", timeout=60)
    finally:
        await close_all([pc2, listener_pc], [tab, friend])

    yunet = YuNetDetector(MODELS_DIR / YUNET_FILE.name)
    centerface = CenterFaceDetector()
    band = city_image()[TOP : TOP + HEIGHT]
    raw_detail = laplacian_variance(camera.crops[0])
    sharp_after, misses = 0, []
    for index, frame in enumerate(frames):  # before and after the gap: never a face
        assert frame.shape == (HEIGHT, WIDTH, 3)
        if laplacian_variance(frame) < 0.05 * raw_detail:
            continue  # blurred whole (failed closed): nothing to find
        sharp_after += index >= before
        x = _crop_x(frame, band)
        misses += [(index, "yunet", b) for b in _faces_found(frame, x, yunet, 0.45)]
        misses += [(index, "centerface", b) for b in _faces_found(frame, x, centerface, 0.3)]
    print(
        f"{len(frames)} frames ({before} before the reconnect), {sharp_after} sharp after; {video}"
    )
    assert sharp_after > 0, "every frame after the reconnect was blurred whole"
    assert misses == [], f"faces left: {misses}; {video}"

    # One recording: one playable MP4 holding the picture before and after the gap.
    recordings = await database_sync_to_async(list)(Recording.objects.filter(owner=ann))
    assert [r.id for r in recordings] == [ended["recording_id"]], "one recording"
    assert recordings[0].kind == "video" and recordings[0].file.name.endswith(".mp4")
    with av.open(str(services.recording_path(recordings[0]))) as container:
        times = [f.time for f in container.decode(video=0)]
    gaps = np.diff(times)
    assert len(times) >= 20 and (gaps > 0).all(), times
    longest = int(np.argmax(gaps))
    assert gaps[longest] >= 0.8, f"no gap in the picture: {gaps.max():.2f} s"
    assert len(times) - longest - 1 >= 10, "too few frames after the reconnect"
