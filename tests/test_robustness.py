"""Edge cases of the live path: friendships and sessions ending under a socket,
offers with unused media, server faults, and concurrent recorder use."""

from __future__ import annotations

import threading
import wave

import numpy as np
import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from project.asgi import application
from streams import rtc
from streams.models import LiveSession
from streams.recording import WavRecorder
from tests.factories import befriend, make_user
from tests.rtc_helpers import (
    accept_answer,
    client_peer,
    connected,
    expect,
    offer_sdp,
)
from users import services as user_services

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def friends():
    def make():
        a, b = make_user("ann"), make_user("ben")
        befriend(a, b)
        return a, b

    return await database_sync_to_async(make)()


async def _broadcast(comm, *tracks):
    pc = client_peer()
    for track in tracks:
        pc.addTransceiver(track, direction="sendonly")
    await comm.send_json_to(
        {"type": "broadcast.start", "sdp": await offer_sdp(pc), "denoise": False}
    )
    answer = await expect(comm, "broadcast.answer")
    await accept_answer(pc, answer["sdp"])
    return pc, answer["session_id"]


async def test_unfriending_stops_an_ongoing_listen(friends) -> None:
    ann, ben = friends
    a, b = await connected(ann), await connected(ben)
    pc_a, session_id = await _broadcast(a, AudioStreamTrack())
    pc_b = client_peer()
    pc_b.addTransceiver("audio", direction="recvonly")
    await b.send_json_to(
        {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(pc_b)}
    )
    await accept_answer(pc_b, (await expect(b, "listen.answer"))["sdp"])
    assert (await expect(a, "session.stats"))["listeners"] == 1

    await database_sync_to_async(user_services.friendship_delete)(user=ann, friend_id=ben.id)
    ended = await expect(b, "session.ended")
    assert ended == {"type": "session.ended", "session_id": session_id, "reason": "unfriended"}
    assert (await expect(a, "session.stats"))["listeners"] == 0
    room = rtc.media_server().rooms[session_id]
    assert room.listeners == {}
    for pc in (pc_a, pc_b):
        await pc.close()
    for comm in (a, b):
        await comm.disconnect()


async def test_logout_closes_only_that_sessions_socket(friends) -> None:
    ann, _ = friends
    clients = [Client(), Client()]
    for client in clients:
        await sync_to_async(client.force_login)(ann)
    sockets = []
    for client in clients:
        cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
        comm = WebsocketCommunicator(
            application,
            "/ws/",
            headers=[
                (b"cookie", cookie),
                (b"origin", b"http://127.0.0.1"),
                (b"host", b"127.0.0.1"),
            ],
        )
        assert (await comm.connect())[0]
        await expect(comm, "hello")
        sockets.append(comm)
    await sync_to_async(clients[0].post)("/logout/")
    closed = await sockets[0].receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
    await sockets[1].send_json_to({"type": "ping"})  # the other device is still signed in
    assert (await expect(sockets[1], "pong"))["type"] == "pong"
    await sockets[1].disconnect()


async def test_offer_with_video_is_served_and_the_video_goes_through_redaction(friends) -> None:
    ann, _ = friends
    a = await connected(ann)
    pc, session_id = await _broadcast(a, AudioStreamTrack(), VideoStreamTrack())
    room = rtc.media_server().rooms[session_id]
    assert room.runner is not None and room.video_runner is not None
    assert room.video_relay is not None
    directions = {t.kind: t.currentDirection for t in room.pc.getTransceivers()}
    assert directions == {"audio": "recvonly", "video": "recvonly"}
    await a.send_json_to({"type": "broadcast.stop"})
    assert (await expect(a, "broadcast.ended"))["session_id"] == session_id
    await pc.close()
    await a.disconnect()


async def test_offer_that_sends_no_audio_is_refused_and_leaves_no_session(friends) -> None:
    ann, _ = friends
    a = await connected(ann)
    pc = client_peer()
    pc.addTransceiver("audio", direction="recvonly")  # asks to receive, sends nothing
    await a.send_json_to({"type": "broadcast.start", "sdp": await offer_sdp(pc)})
    error = await expect(a, "error")
    assert error["code"] == "bad_sdp" and "no audio" in error["message"]
    live = await database_sync_to_async(LiveSession.objects.filter(ended_at__isnull=True).count)()
    assert live == 0
    await pc.close()
    await a.disconnect()


async def test_server_fault_in_a_handler_gets_an_error_frame_and_the_socket_lives(
    friends, monkeypatch
) -> None:
    ann, _ = friends
    a = await connected(ann)

    async def broken(**kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(rtc.media_server(), "broadcast_start", broken)
    pc = client_peer()
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await a.send_json_to({"type": "broadcast.start", "sdp": await offer_sdp(pc)})
    error = await expect(a, "error")
    assert error["code"] == "internal" and "disk" not in error["message"]
    await a.send_json_to({"type": "ping"})
    assert (await expect(a, "pong"))["type"] == "pong"
    await pc.close()
    await a.disconnect()


def test_recorder_survives_concurrent_writes_and_close(tmp_path) -> None:
    recorder = WavRecorder(tmp_path / "race.wav")
    block = np.full(960, 0.25, np.float32)
    errors: list[BaseException] = []

    def writer() -> None:
        for _ in range(300):
            try:
                recorder.write(block)
            except ValueError:  # closed under us: the allowed outcome
                return
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    info = recorder.close()
    for thread in threads:
        thread.join()
    assert errors == []
    with wave.open(str(tmp_path / "race.wav")) as wav:
        assert wav.getnframes() == info.frames
        data = np.frombuffer(wav.readframes(info.frames), "<i2")
    assert info.frames % 960 == 0 and np.all(data == round(0.25 * 32768))
    assert info.size_bytes == 44 + 2 * info.frames
