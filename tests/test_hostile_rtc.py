"""Hostile or broken WebRTC clients (issue 9): what they may cost the server.

Each test names the hole it guards and what the server did before. Every wait is
bounded; timeouts come from short ``HEARTH`` overrides, never from how fast the
machine is. All peers use loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import pytest
from aiortc.mediastreams import AudioStreamTrack
from channels.db import database_sync_to_async

from streams import rtc
from streams.models import LiveSession, Recording
from streams.sdp import candidate_address_refusal, candidates_filter, deny_networks_parse
from tests.rtc_helpers import (
    accept_answer,
    client_peer,
    close_all,
    connected,
    expect,
    friends_make,
    offer_sdp,
)

WAIT_S = 10.0  # upper bound of every wait for something that should happen at once

BAD_ADDRESSES = ["224.0.0.1", "255.255.255.255", "0.0.0.0", "ff02::1", "240.0.0.1", "::"]


@pytest.fixture
def hearth(settings) -> dict[str, Any]:
    """A copy of ``settings.HEARTH`` this test may change."""
    settings.HEARTH = dict(settings.HEARTH)
    return settings.HEARTH


def _candidates(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


def _address(candidate_line: str) -> str:
    return candidate_line.split()[4]


def _hostile_candidates(count: int) -> list[str]:
    """``count`` candidate lines: bad addresses, a DNS name, mDNS names, loopback ports."""
    lines = []
    for i in range(count):
        kind = i % 5
        if kind == 0:
            address = BAD_ADDRESSES[i % len(BAD_ADDRESSES)]
        elif kind == 1:
            address = f"victim{i}.example.com"
        elif kind == 2:
            address = f"{i:08x}-aaaa-bbbb-cccc-dddddddddddd.local"
        else:
            address = "127.0.0.1"  # closed loopback ports: harmless, and allowed
        lines.append(f"a=candidate:{i + 100} 1 udp {1000 + i} {address} {40000 + i} typ host")
    return lines


def _with_candidates(sdp: str, extra: list[str]) -> str:
    """``sdp`` with ``extra`` candidate lines after its own (in its first section)."""
    lines = sdp.split("\r\n")
    last = max(i for i, line in enumerate(lines) if line.startswith("a=candidate:"))
    return "\r\n".join(lines[: last + 1] + extra + lines[last + 1 :])


async def _wait_for(predicate, *, timeout: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# -- 3. an offer aiortc would reject creates nothing ------------------------------------
def _drop(pattern: str):
    return lambda sdp: "\r\n".join(x for x in sdp.split("\r\n") if not re.match(pattern, x))


OFFER_BREAKERS = {
    "no_ice_pwd": _drop(r"a=ice-pwd:"),
    "no_ice_ufrag": _drop(r"a=ice-ufrag:"),
    "no_fingerprint": _drop(r"a=fingerprint:"),
    "no_rtcp_mux": _drop(r"a=rtcp-mux"),
    "receives_only": lambda sdp: sdp.replace("a=sendonly", "a=recvonly"),
    "no_opus": lambda sdp: re.sub(r"a=rtpmap:(\d+) opus/48000/2", r"a=rtpmap:\1 G722/8000", sdp),
    "unparsable": lambda sdp: sdp.replace("a=sendonly", "a=sendonly\r\na=rtpmap:x"),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("breaker", sorted(OFFER_BREAKERS))
async def test_offer_aiortc_cannot_use_creates_no_session_and_no_denoiser(
    breaker: str, monkeypatch
) -> None:
    # Before: an offer passing ``sdp_validate`` (v=0, an m=audio line) but unusable
    # by aiortc created a LiveSession, a Recording and a denoiser (~0.4 s CPU) and
    # only then failed in setRemoteDescription. Now the offer is parsed and checked
    # first: the page gets ``bad_sdp`` and nothing is created.
    calls: list[bool] = []

    def chain_build(*, denoise: bool):
        calls.append(denoise)
        raise AssertionError("audio_chain_build must not run for an unusable offer")

    monkeypatch.setattr(rtc, "audio_chain_build", chain_build)
    ann, _ = await friends_make()
    comm = await connected(ann)
    pc = client_peer()
    try:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        sdp = OFFER_BREAKERS[breaker](await offer_sdp(pc))
        await comm.send_json_to({"type": "broadcast.start", "sdp": sdp, "denoise": True})
        error = await expect(comm, "error", timeout=WAIT_S)
        assert error["ref"] == "broadcast.start" and error["code"] == "bad_sdp"
        assert calls == []
        assert await database_sync_to_async(LiveSession.objects.count)() == 0
        assert await database_sync_to_async(Recording.objects.count)() == 0
        assert rtc.media_server().rooms == {}
    finally:
        await pc.close()
        await comm.disconnect()


# -- 4. remote candidates are capped and filtered ---------------------------------------
def test_candidate_filter_caps_and_drops_addresses_no_client_has() -> None:
    # Before: every a=candidate line reached aioice, which sent STUN checks to each
    # (200 candidates → 1200 packets): a UDP reflection vector. Now at most the cap
    # survive, and none that is multicast, broadcast, unspecified, reserved or a DNS
    # name; loopback and mDNS names stay, and every other line is untouched.
    head = [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=rtpmap:111 opus/48000/2",
    ]
    own = "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"
    tail = ["a=end-of-candidates", "a=sendonly", ""]
    sdp = "\r\n".join([*head, own, *_hostile_candidates(199), *tail])
    assert len(_candidates(sdp)) == 200

    result = candidates_filter(sdp, limit=16, deny=deny_networks_parse(["0.0.0.0/8"]))
    kept = _candidates(result.sdp)
    assert len(kept) == result.kept == 16
    assert kept[0] == own  # offer order: the client's own candidate comes first
    addresses = {_address(line) for line in kept}
    assert not addresses & set(BAD_ADDRESSES)
    assert all(a == "127.0.0.1" or a.endswith(".local") for a in addresses)
    assert any(a.endswith(".local") for a in addresses)
    assert result.dropped_total == 200 - 16
    assert {"multicast", "broadcast", "unspecified", "reserved", "not_ip", "over_limit"} <= set(
        result.dropped
    )
    others = [line for line in result.sdp.split("\r\n") if not line.startswith("a=candidate:")]
    assert others == [*head, *tail]

    # Deny ranges are honoured; loopback passes unless denied.
    deny = deny_networks_parse(["10.0.0.0/8", "fd00:ec2::254"])
    assert candidate_address_refusal("10.1.2.3", deny) == "denied"
    assert candidate_address_refusal("fd00:ec2::254", deny) == "denied"
    assert candidate_address_refusal("::ffff:224.0.0.1", deny) == "multicast"
    assert candidate_address_refusal("192.168.1.20", deny) is None
    assert candidate_address_refusal("::1", deny) is None
    assert candidate_address_refusal("127.0.0.1", deny) is None


@pytest.mark.django_db(transaction=True)
async def test_broadcast_offer_with_200_candidates_is_filtered_and_still_connects(
    hearth,
) -> None:
    hearth["MAX_REMOTE_CANDIDATES"] = 16
    ann, _ = await friends_make()
    comm = await connected(ann)
    pc = client_peer()
    try:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        sdp = await offer_sdp(pc)
        own = _candidates(sdp)
        sdp = _with_candidates(sdp, _hostile_candidates(200 - len(own)))
        assert len(_candidates(sdp)) == 200
        await comm.send_json_to({"type": "broadcast.start", "sdp": sdp, "denoise": False})
        answer = await expect(comm, "broadcast.answer", timeout=WAIT_S)
        server = rtc.media_server()
        room = server.rooms[answer["session_id"]]
        handed = _candidates(room.pc.remoteDescription.sdp)
        assert 0 < len(handed) <= 16
        assert not {_address(line) for line in handed} & set(BAD_ADDRESSES)
        assert server.candidates_dropped >= 200 - 16

        await accept_answer(pc, answer["sdp"])
        await _wait_for(lambda: room.pc.connectionState == "connected")
        await comm.send_json_to({"type": "broadcast.stop"})
        await expect(comm, "broadcast.ended", timeout=WAIT_S)
    finally:
        await pc.close()
        await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_listener_offer_candidates_are_filtered_too(hearth) -> None:
    hearth["MAX_REMOTE_CANDIDATES"] = 4
    ann, ben = await friends_make()
    a, b = await connected(ann), await connected(ben)
    pc_a, pc_b = client_peer(), client_peer()
    try:
        pc_a.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await a.send_json_to(
            {"type": "broadcast.start", "sdp": await offer_sdp(pc_a), "denoise": False}
        )
        answer = await expect(a, "broadcast.answer", timeout=WAIT_S)
        await accept_answer(pc_a, answer["sdp"])
        session_id = answer["session_id"]
        pc_b.addTransceiver("audio", direction="recvonly")
        sdp = _with_candidates(await offer_sdp(pc_b), _hostile_candidates(50))
        await b.send_json_to({"type": "listen.start", "session_id": session_id, "sdp": sdp})
        await expect(b, "listen.answer", timeout=WAIT_S)
        (listener,) = rtc.media_server().rooms[session_id].listeners.values()
        handed = _candidates(listener.pc.remoteDescription.sdp)
        assert 0 < len(handed) <= 4
        assert not {_address(line) for line in handed} & set(BAD_ADDRESSES)
        await a.send_json_to({"type": "broadcast.stop"})
        await expect(a, "broadcast.ended", timeout=WAIT_S)
    finally:
        for pc in (pc_a, pc_b):
            await pc.close()
        for comm in (a, b):
            await comm.disconnect()


# -- 9. peer connections that never connect ---------------------------------------------
async def _live(comm) -> tuple[Any, int]:
    pc = client_peer()
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await comm.send_json_to(
        {"type": "broadcast.start", "sdp": await offer_sdp(pc), "denoise": False}
    )
    answer = await expect(comm, "broadcast.answer", timeout=WAIT_S)
    await accept_answer(pc, answer["sdp"])
    return pc, answer["session_id"]


@pytest.mark.django_db(transaction=True)
async def test_listener_that_never_connects_is_closed_and_never_counted(hearth) -> None:
    # Before: a listener counted (session.stats, the session row) as soon as it was
    # answered, and a client that never applied the answer kept its pc and UDP socket
    # until aioice gave up, if ever. Now it counts only once connected, and is closed
    # (its page told ``connect_timeout``) when not connected in PEER_CONNECT_TIMEOUT_S.
    hearth["PEER_CONNECT_TIMEOUT_S"] = 3.0
    ann, ben = await friends_make()
    a, b = await connected(ann), await connected(ben)
    pc_a = pc_b = None
    try:
        pc_a, session_id = await _live(a)
        room = rtc.media_server().rooms[session_id]
        await _wait_for(lambda: room.pc.connectionState == "connected")
        pc_b = client_peer()
        pc_b.addTransceiver("audio", direction="recvonly")
        await b.send_json_to(
            {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(pc_b)}
        )
        await expect(b, "listen.answer", timeout=WAIT_S)  # ...never applied
        assert len(room.listeners) == 1 and room.stats(media=False)["listeners"] == 0

        error = await expect(b, "error", timeout=WAIT_S)
        assert error["code"] == "connect_timeout" and error["ref"] == "listen.start"
        assert room.listeners == {}
        assert rtc.media_server().pending_listens(ben.id) == 0
        session = await database_sync_to_async(LiveSession.objects.get)(id=session_id)
        assert session.listeners == 0 and session.ended_at is None  # the broadcast goes on
        # No frame the broadcaster's page got ever counted the listener.
        while not await a.receive_nothing(timeout=0.2):
            frame = await a.receive_json_from(timeout=WAIT_S)
            assert frame.get("listeners", 0) == 0, frame
    finally:
        await close_all([pc_a, pc_b], [a, b])


@pytest.mark.django_db(transaction=True)
async def test_broadcaster_that_never_connects_is_ended_as_failed(hearth) -> None:
    # Before: a broadcaster that never applied the answer kept its session "live",
    # its recording open and its denoiser loaded. Now it ends as "failed".
    hearth["PEER_CONNECT_TIMEOUT_S"] = 1.0
    ann, _ = await friends_make()
    comm = await connected(ann)
    pc = client_peer()
    try:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await comm.send_json_to(
            {"type": "broadcast.start", "sdp": await offer_sdp(pc), "denoise": False}
        )
        session_id = (await expect(comm, "broadcast.answer", timeout=WAIT_S))["session_id"]
        ended = await expect(comm, "session.ended", timeout=WAIT_S)  # answer never applied
        assert ended["session_id"] == session_id and ended["reason"] == "failed"
        await _wait_for(lambda: session_id not in rtc.media_server().rooms)
    finally:
        await pc.close()
        await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_fourth_pending_listen_of_one_user_is_refused(hearth) -> None:
    # Before: one user could open any number of listens that never connect, each a pc
    # and a UDP socket on the server. Now the 4th still-connecting one is refused.
    hearth["MAX_PENDING_LISTENS_PER_USER"] = 3
    hearth["PEER_CONNECT_TIMEOUT_S"] = 60.0  # they stay pending for the whole test
    ann, ben = await friends_make()
    a = await connected(ann)
    pages = [await connected(ben) for _ in range(4)]
    pc_a = None
    peers = []
    try:
        pc_a, session_id = await _live(a)
        for i, page in enumerate(pages):
            pc = client_peer()
            peers.append(pc)
            pc.addTransceiver("audio", direction="recvonly")
            await page.send_json_to(
                {"type": "listen.start", "session_id": session_id, "sdp": await offer_sdp(pc)}
            )
            if i < 3:
                await expect(page, "listen.answer", timeout=WAIT_S)
        error = await expect(pages[3], "error", timeout=WAIT_S)
        assert error["code"] == "too_many_pending" and error["ref"] == "listen.start"
        room = rtc.media_server().rooms[session_id]
        assert len(room.listeners) == 3
        await a.send_json_to({"type": "broadcast.stop"})
        await expect(a, "broadcast.ended", timeout=WAIT_S)
        assert rtc.media_server().pending_listens(ben.id) == 0
    finally:
        for pc in [pc_a, *peers]:
            if pc is not None:
                with contextlib.suppress(Exception):
                    await pc.close()
        for comm in [a, *pages]:
            await comm.disconnect()
