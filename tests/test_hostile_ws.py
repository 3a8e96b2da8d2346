"""Hostile input on the page WebSocket (issue 9): frames built to crash the consumer,
crashes that must still clean up, and Origins from other ports or schemes."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.mediastreams import AudioStreamTrack
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from project.asgi import application
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


# -- 2. Origin: scheme, host and port must be the site's own -------------------------
@pytest.fixture
async def cookie(ann) -> bytes:
    client = Client()
    await sync_to_async(client.force_login)(ann)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def _connects(
    cookie: bytes,
    origin: str | None,
    *,
    host: str | None = "127.0.0.1:8000",
    extra: list[tuple[bytes, bytes]] | None = None,
    **scope,
) -> bool:
    """Whether a handshake to the real ASGI app with these headers is accepted."""
    headers = [(b"cookie", cookie), *(extra or [])]
    if host is not None:
        headers.append((b"host", host.encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    comm = WebsocketCommunicator(application, "/ws/", headers=headers)
    comm.scope.update(scope)
    connected, _ = await comm.connect()
    if connected:
        await expect(comm, "hello")
        await comm.disconnect()
    return connected


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:9999",  # another port of the same host
        "http://127.0.0.1",  # the default port is another port
        "https://127.0.0.1:8000",  # another scheme
        "http://localhost:8000",  # another allowed host is another site
        "http://evil.example:8000",
        "null",
        "",
        None,
    ],
)
async def test_origin_other_than_the_sites_own_is_refused(cookie, origin) -> None:
    assert not await _connects(cookie, origin)


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("localhost:8000", "http://LOCALHOST:8000"),
        ("[::1]:8000", "http://[::1]:8000"),
        ("127.0.0.1", "http://127.0.0.1:80"),
    ],
)
async def test_the_sites_own_origin_is_accepted(cookie, host, origin) -> None:
    assert await _connects(cookie, origin, host=host)


async def test_host_outside_allowed_hosts_is_refused_even_with_matching_origin(cookie) -> None:
    assert not await _connects(cookie, "http://evil.example:8000", host="evil.example:8000")


async def test_secure_socket_needs_an_https_origin(cookie) -> None:
    assert await _connects(cookie, "https://127.0.0.1:8000", scheme="wss")
    assert not await _connects(cookie, "http://127.0.0.1:8000", scheme="wss")


async def test_csrf_trusted_origin_is_accepted(cookie, settings) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://hearth.example.org", "https://*.example.net"]
    assert await _connects(cookie, "https://hearth.example.org")
    assert await _connects(cookie, "https://app.example.net")
    assert not await _connects(cookie, "http://hearth.example.org")
    assert not await _connects(cookie, "https://hearth.example.org:8443")


async def test_proxy_https_header_counts_only_when_configured(cookie, settings) -> None:
    settings.ALLOWED_HOSTS = ["hearth.example.org"]
    proxied = {"host": "hearth.example.org", "extra": [(b"x-forwarded-proto", b"https")]}
    settings.SECURE_PROXY_SSL_HEADER = None
    assert not await _connects(cookie, "https://hearth.example.org", **proxied)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert await _connects(cookie, "https://hearth.example.org", **proxied)
    assert not await _connects(cookie, "http://hearth.example.org", **proxied)


async def test_handshake_without_host_is_refused(cookie) -> None:
    # RFC 6455 requires Host and browsers always send it: without one there is no
    # site origin to compare with, whatever the Origin says.
    assert not await _connects(cookie, "http://127.0.0.1", host=None)
    assert not await _connects(cookie, "http://127.0.0.1:9999", host=None)


async def test_a_refused_handshake_leaves_no_application_running(cookie) -> None:
    # Before: refusals went through channels' WebsocketDenier, a consumer that made a
    # channel-layer channel and kept receiving on it (a Redis BZPOPMIN per refused
    # socket) until the client went away.
    comm = WebsocketCommunicator(
        application,
        "/ws/",
        headers=[
            (b"cookie", cookie),
            (b"host", b"127.0.0.1:8000"),
            (b"origin", b"http://x.example"),
        ],
    )
    connected, code = await comm.connect()
    assert not connected and code == 1008
    for _ in range(10):
        await asyncio.sleep(0)
    assert comm.future.done() and comm.future.exception() is None
