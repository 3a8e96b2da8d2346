"""Helpers for the WebRTC tests: client peers, signaling over a communicator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from channels.testing import WebsocketCommunicator

from streams.audio import FrameToMono
from streams.consumers import HearthConsumer


def communicator_for(user: Any) -> WebsocketCommunicator:
    """A WebSocket client of the Hearth consumer signed in as ``user``."""
    comm = WebsocketCommunicator(HearthConsumer.as_asgi(), "/ws/")
    comm.scope["user"] = user
    return comm


async def connected(user: Any) -> WebsocketCommunicator:
    """A connected communicator for ``user`` whose ``hello`` frame was read."""
    comm = communicator_for(user)
    assert (await comm.connect())[0]
    await expect(comm, "hello")
    return comm


async def friends_make() -> tuple[Any, Any]:
    """Two users, "ann" and "ben", who are friends (made in the database thread)."""
    from channels.db import database_sync_to_async

    from tests.factories import befriend, make_user

    def make() -> tuple[Any, Any]:
        ann, ben = make_user("ann"), make_user("ben")
        befriend(ann, ben)
        return ann, ben

    return await database_sync_to_async(make)()


async def close_all(peers: list[Any], comms: list[WebsocketCommunicator]) -> None:
    """Close the peer connections (None entries skipped), then the communicators."""
    for pc in peers:
        if pc is not None:
            await pc.close()
    for comm in comms:
        await comm.disconnect()


async def expect(
    comm: WebsocketCommunicator, kind: str, *, timeout: float = 10.0
) -> dict[str, Any]:
    """Receive frames until one of type ``kind`` (an ``error`` frame fails the test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        assert remaining > 0, f"no {kind!r} frame within {timeout} s"
        frame = await comm.receive_json_from(timeout=remaining)
        if frame["type"] == kind:
            return frame
        if frame["type"] == "error" and kind != "error":
            raise AssertionError(f"error frame while waiting for {kind!r}: {frame}")


async def expect_matching(
    comm: WebsocketCommunicator,
    kind: str,
    match: Callable[[dict[str, Any]], bool] = lambda frame: True,
    *,
    timeout: float = 15.0,
) -> dict[str, Any]:
    """The next frame of type ``kind`` that ``match``es; other frames are skipped, an
    ``error`` frame fails the test unless ``kind == "error"``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        assert remaining > 0, f"no {kind!r} frame within {timeout} s"
        frame = await comm.receive_json_from(timeout=remaining)
        if frame["type"] == kind and match(frame):
            return frame
        assert frame["type"] != "error" or kind == "error", frame


def client_peer() -> RTCPeerConnection:
    """A browser-like aiortc peer with no ICE servers (loopback host candidates only)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def offer_sdp(pc: RTCPeerConnection) -> str:
    """Create and set the local offer (aiortc gathers all candidates before returning)."""
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def accept_answer(pc: RTCPeerConnection, sdp: str) -> None:
    """Apply the server's SDP answer."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


class AudioSink:
    """Collects a received audio track as float32 mono 48 kHz until stopped."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.parts: list[np.ndarray] = []
        self._convert = FrameToMono()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self.track.recv()
                self.parts.append(self._convert.convert(frame))

    @property
    def samples(self) -> np.ndarray:
        """Everything received so far."""
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)

    async def stop(self) -> np.ndarray:
        """Stop collecting and return the samples."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        return self.samples
