"""A broadcast whose media path fails (its peer connection failed or closed) is kept
``MEDIA_RECONNECT_S`` for its page to send a fresh SDP offer (``broadcast.reconnect``):
aiortc 1.16 cannot restart ICE, so a new peer connection replaces the old one and
feeds the same session graph, listeners and recording, the gap recorded as silence.

aiortc peers in one process, signalled over communicators (tests/rtc_helpers.py).
"""

from __future__ import annotations

import asyncio
import wave

import numpy as np
import pytest
from aiortc.contrib.media import MediaPlayer
from channels.db import database_sync_to_async

from streams import rtc
from streams.models import LiveSession, Recording
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
        await tab.send_json_to(
            {"type": "broadcast.reconnect", "session_id": session_id, "sdp": await offer_sdp(pc2)}
        )
        answer = await expect(tab, "broadcast.reconnected")
        assert answer["session_id"] == session_id
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
