"""Hostile input on the page WebSocket (issue 9): frames built to crash the consumer,
crashes that must still clean up, and Origins from other ports or schemes."""

from __future__ import annotations

import pytest
from aiortc.mediastreams import AudioStreamTrack
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from streams import rtc
from streams.consumers import HearthConsumer
from streams.models import LiveSession
from tests.factories import make_user
from tests.rtc_helpers import client_peer, connected, expect, offer_sdp
from users.models import PresenceConnection

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def ann():
    return await database_sync_to_async(make_user)("ann")


async def _error_then_pong(comm: WebsocketCommunicator, text: str) -> dict:
    """Send ``text``; return the error frame it earns after checking the socket lives."""
    await comm.send_to(text_data=text)
    error = await expect(comm, "error")
    assert set(error) == {"type", "code", "message", "ref"}
    await comm.send_json_to({"type": "ping"})
    assert (await expect(comm, "pong"))["type"] == "pong"
    return error


# -- 1. frames that used to crash the consumer ---------------------------------------
async def test_deeply_nested_frame_gets_an_error_and_the_socket_lives(ann) -> None:
    comm = await connected(ann)
    error = await _error_then_pong(comm, "[" * 3000 + "]" * 3000)
    assert error["code"] == "too_deep"
    await comm.disconnect()


async def test_nesting_inside_a_valid_message_is_limited_too(ann) -> None:
    comm = await connected(ann)
    nested = "[" * 40 + "]" * 40
    error = await _error_then_pong(comm, '{"type": "ping", "x": ' + nested + "}")
    assert error["code"] == "too_deep"
    await comm.disconnect()


async def test_brackets_inside_strings_do_not_count_as_nesting(ann) -> None:
    comm = await connected(ann)
    text = '{"type": "ping", "x": "' + "[{" * 500 + '\\"[["}'
    await comm.send_to(text_data=text)
    assert (await expect(comm, "pong"))["type"] == "pong"
    await comm.disconnect()


async def test_number_too_long_to_parse_gets_bad_json(ann) -> None:
    comm = await connected(ann)  # int() refuses > 4300 digits with ValueError
    error = await _error_then_pong(comm, '{"type": "ping", "n": ' + "7" * 5000 + "}")
    assert error["code"] == "bad_json"
    await comm.disconnect()


async def test_raw_lone_surrogate_in_a_frame_gets_an_error(ann) -> None:
    comm = await connected(ann)
    error = await _error_then_pong(comm, '{"type": "ping", "x": "\ud800"}')
    assert error["code"] == "bad_json"
    await comm.disconnect()


# -- 3. lone surrogates in SDP -------------------------------------------------------
@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "broadcast.start", "sdp": "v=0\\ud800\\r\\nm=audio 9 x"}',
        '{"type": "listen.start", "session_id": 1, "sdp": "v=0\\udfff\\r\\nm=audio 9 x"}',
    ],
)
async def test_lone_surrogate_in_sdp_is_a_bad_request(ann, frame: str) -> None:
    comm = await connected(ann)
    error = await _error_then_pong(comm, frame)
    assert error["code"] in {"bad_request", "bad_sdp"}
    await comm.disconnect()


async def test_escaped_surrogate_pair_is_still_accepted(ann) -> None:
    comm = await connected(ann)
    await comm.send_to(text_data='{"type": "ping", "x": "\\ud83d\\ude00"}')
    assert (await expect(comm, "pong"))["type"] == "pong"
    await comm.disconnect()


# -- 1. cleanup whatever way the consumer dies ---------------------------------------
class Crash(BaseException):
    """Not an ``Exception``: escapes every ``except Exception`` in the consumer."""


async def test_a_crashing_consumer_still_cleans_up_presence_and_broadcast(ann, monkeypatch) -> None:
    comm = await connected(ann)
    pc = client_peer()
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await comm.send_json_to({"type": "broadcast.start", "sdp": await offer_sdp(pc)})
    session_id = (await expect(comm, "broadcast.answer"))["session_id"]

    async def crash(self, content):
        raise Crash("handler blew up")

    monkeypatch.setattr(HearthConsumer, "on_ping", crash)
    await comm.send_json_to({"type": "ping"})
    with pytest.raises(Crash):  # frames already queued (live, stats) come first
        for _ in range(100):
            await comm.receive_output(timeout=10)

    presence = await database_sync_to_async(PresenceConnection.objects.filter(user=ann).count)()
    assert presence == 0
    session = await database_sync_to_async(LiveSession.objects.get)(id=session_id)
    assert session.ended_at is not None
    assert session_id not in rtc.media_server().rooms
    await pc.close()
