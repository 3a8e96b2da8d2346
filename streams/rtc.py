"""The aiortc media server of one daphne process.

Each process has one :class:`MediaServer`. It owns the peer connections of the
broadcasts whose broadcaster's WebSocket landed on this process, and listens on
its own channel-layer channel (``MediaServer.channel_name``, stored on the
``LiveSession`` row as ``owner_channel``). A listener's consumer, on whichever
process, authorises the listener and forwards the SDP offer there; this process
answers back to the consumer's channel. With Redis as the channel layer this
routes signaling between daphne processes.

ICE: ``settings.ICE_SERVERS`` is always passed (default ``[]``): aiortc adds
Google's public STUN server when given none. ``settings.ICE_HOST_ADDRESSES``
restricts the host candidates aioice gathers (e.g. to ``127.0.0.1`` in tests,
which aioice otherwise never offers).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from streams import services
from streams.pipeline import AudioPipeline, ListenerTrack
from streams.processors.factory import audio_chain_build
from streams.recording import RecordingInfo, WavRecorder
from users.events import user_group
from users.models import User
from users.selectors import friend_ids
from users.services import presence_prune

logger = logging.getLogger("hearth.rtc")

SHUTDOWN_TIMEOUT_S = 15.0  # at most this long finalising broadcasts on SIGTERM/SIGINT


class SignalingError(Exception):
    """An SDP exchange that cannot go on; ``code`` for machines, str() for people."""

    def __init__(self, message: str, *, code: str = "bad_sdp") -> None:
        super().__init__(message)
        self.code = code


def ice_configuration() -> RTCConfiguration:
    """``RTCConfiguration`` from ``settings.ICE_SERVERS`` (never aiortc's default list)."""
    servers = []
    for entry in settings.ICE_SERVERS:
        if isinstance(entry, dict) and entry.get("urls"):
            servers.append(
                RTCIceServer(
                    urls=entry["urls"],
                    username=entry.get("username"),
                    credential=entry.get("credential"),
                )
            )
    return RTCConfiguration(iceServers=servers)


_original_get_host_addresses = aioice.ice.get_host_addresses


def ice_host_addresses_apply(addresses: Sequence[str]) -> None:
    """Make aioice gather host candidates on ``addresses`` only (empty: all interfaces).

    aioice (``aioice/ice.py: get_host_addresses``) enumerates interface addresses and
    skips loopback; this replaces that lookup process-wide so tests and
    loopback-only deployments get ``127.0.0.1`` candidates and nothing else.
    """
    if addresses:
        fixed = list(addresses)
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [  # type: ignore[assignment]
            a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
        ]
    else:
        aioice.ice.get_host_addresses = _original_get_host_addresses


def sdp_validate(sdp: object) -> str:
    """Check an SDP offer from a client before aiortc parses it.

    Raises:
        SignalingError: not a string, over ``HEARTH["MAX_SDP_BYTES"]``, not SDP
            (``v=0`` first line, RFC 8866 §5), or without an audio media section.
    """
    if not isinstance(sdp, str) or not sdp.strip():
        raise SignalingError("Missing SDP offer.")
    if len(sdp.encode()) > settings.HEARTH["MAX_SDP_BYTES"]:
        raise SignalingError(
            f"SDP offer too large (limit {settings.HEARTH['MAX_SDP_BYTES']} bytes).",
            code="sdp_too_large",
        )
    if not sdp.lstrip().startswith("v=0"):
        raise SignalingError("Not an SDP offer (it must start with v=0).")
    if "\nm=audio " not in sdp.replace("\r\n", "\n"):
        raise SignalingError("The SDP offer has no audio track.")
    return sdp


async def _answer(pc: RTCPeerConnection, offer_sdp: str) -> str:
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    except Exception as exc:  # aiortc raises ValueError/KeyError/... on malformed SDP
        logger.info("unusable SDP offer: %r", exc)
        raise SignalingError("The SDP offer could not be used.") from exc
    answer = await pc.createAnswer()
    await pc.setLocalDescription(answer)
    return pc.localDescription.sdp


@dataclass
class _Listener:
    pc: RTCPeerConnection
    track: ListenerTrack
    user_id: int


class BroadcastRoom:
    """One live session on this process: the broadcaster's peer connection, the
    audio pipeline, the WAV recorder, and one peer connection per listener."""

    def __init__(
        self,
        *,
        server: MediaServer,
        session_id: int,
        broadcaster_id: int,
        denoise: bool,
        recording_file: Path,
    ) -> None:
        self.server = server
        self.session_id = session_id
        self.broadcaster_id = broadcaster_id
        self.denoise = denoise
        self.recording_file = recording_file
        self.pc: RTCPeerConnection | None = None
        self.pipeline: AudioPipeline | None = None
        self.recorder: WavRecorder | None = None
        self.listeners: dict[str, _Listener] = {}
        self._task: asyncio.Task[None] | None = None
        self.closing = False

    async def open(self, offer_sdp: str) -> str:
        """Answer the broadcaster's SDP offer and start the pipeline on its audio track."""
        loop = asyncio.get_running_loop()
        executor = self.server.executor
        processor = await loop.run_in_executor(
            executor, functools.partial(audio_chain_build, denoise=self.denoise)
        )
        self.recorder = await loop.run_in_executor(executor, WavRecorder, self.recording_file)
        self.pc = pc = RTCPeerConnection(ice_configuration())

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind != "audio" or self.pipeline is not None:
                # Video and extra tracks are not used (never forwarded raw); drain them
                # so aiortc's decoded-frame queue for them does not grow without bound.
                self.server.discard_track(track)
                return
            self.pipeline = AudioPipeline(
                source=track,
                processor=processor,
                executor=executor,
                recorder=self.recorder,
                on_end=self._source_ended,
            )
            self._task = asyncio.ensure_future(self.pipeline.run())

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and not self.closing:
                self.server.broadcast_stop_soon(self.session_id, reason="disconnected")

        self._processor = processor
        answer = await _answer(pc, offer_sdp)
        if self.pipeline is None:
            raise SignalingError("The SDP offer sends no audio (is the microphone track added?).")
        return answer

    def _source_ended(self) -> None:
        if not self.closing:
            self.server.broadcast_stop_soon(self.session_id, reason="disconnected")

    async def add_listener(self, *, key: str, user_id: int, offer_sdp: str) -> str:
        """Answer a listener's recvonly offer with a track of the processed audio."""
        await self.remove_listener(key=key)  # a re-listen from the same page replaces
        if self.pipeline is None:
            raise SignalingError(
                "The broadcast has not started sending audio yet.", code="not_ready"
            )
        pc = RTCPeerConnection(ice_configuration())
        pc.on("track", self.server.discard_track)  # a listener sends nothing we use
        track = ListenerTrack()
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            pc.addTrack(track)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:
            await pc.close()
            logger.info("unusable listener SDP offer: %r", exc)
            raise SignalingError("The SDP offer could not be used.") from exc
        if self.closing or self.pipeline is None:  # the broadcast ended while we answered
            await pc.close()
            raise SignalingError("This broadcast has ended.", code="not_live")
        self.listeners[key] = _Listener(pc=pc, track=track, user_id=user_id)
        self.pipeline.fanout.add(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.remove_listener(key=key, pc=pc)

        await self.publish_stats()
        return pc.localDescription.sdp

    async def remove_listener(self, *, key: str, pc: RTCPeerConnection | None = None) -> None:
        """Close and forget the listener ``key`` (only if its pc is ``pc``, when given)."""
        listener = self.listeners.get(key)
        if listener is None or (pc is not None and listener.pc is not pc):
            return
        del self.listeners[key]
        if self.pipeline is not None:
            self.pipeline.fanout.discard(listener.track)
        listener.track.stop()
        await listener.pc.close()
        if not self.closing:
            await self.publish_stats()

    async def publish_stats(self) -> None:
        """Tell the session's pages and the broadcaster's friends' dashboards how many
        listeners there are."""
        layer = get_channel_layer()
        message = {
            "type": "hearth.event",
            "event": "session.stats",
            "data": {"session_id": self.session_id, "listeners": len(self.listeners)},
        }
        try:
            friends = await database_sync_to_async(friend_ids)(user=self.broadcaster_id)
            groups = [services.session_group(self.session_id)]
            groups += [user_group(uid) for uid in sorted(friends)]
            for group in groups:
                await layer.group_send(group, message)
        except Exception:
            logger.exception("could not publish listener count of session %s", self.session_id)

    async def close(self) -> RecordingInfo | None:
        """Close every peer connection, stop the pipeline, finalise the WAV file."""
        self.closing = True
        for key in list(self.listeners):
            await self.remove_listener(key=key)
        if self.pc is not None:
            await self.pc.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        loop = asyncio.get_running_loop()
        info = None
        if self.recorder is not None:
            info = await loop.run_in_executor(self.server.executor, self.recorder.close)
        processor = getattr(self, "_processor", None)
        if processor is not None:
            try:  # a stalled process() call holds the processor: do not wait for it forever
                await asyncio.wait_for(
                    loop.run_in_executor(self.server.executor, processor.close), timeout=2.0
                )
            except TimeoutError:
                logger.error("processor of session %s did not close; abandoned", self.session_id)
        return info


class MediaServer:
    """All broadcasts owned by this process, and the channel that reaches them."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.rooms: dict[int, BroadcastRoom] = {}
        self.channel_name: str | None = None
        self.executor = ThreadPoolExecutor(
            max_workers=settings.HEARTH["MEDIA_THREADS"], thread_name_prefix="hearth-media"
        )
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: dict[int, asyncio.Task[int | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._blackhole = MediaBlackhole()
        self.shut_down = False

    async def ensure_started(self) -> str:
        """Create this process's channel and background loops (idempotent)."""
        async with self._lock:
            if self.channel_name is None:
                ice_host_addresses_apply(settings.ICE_HOST_ADDRESSES)
                layer = get_channel_layer()
                if isinstance(layer, InMemoryChannelLayer):
                    # One process only: sessions still "live" are a crash's leftovers.
                    await database_sync_to_async(services.live_session_end_orphaned)()
                # The default "specific" prefix matters: channels_redis receives every
                # "specific.<client>!" channel of a process through one shared list and
                # lock; another prefix would hold that lock on its own list and starve
                # the consumers' channels.
                self.channel_name = await layer.new_channel()
                self._tasks = [
                    asyncio.ensure_future(self._receive_loop()),
                    asyncio.ensure_future(self._heartbeat_loop()),
                ]
                _install_shutdown_hook(self)
                logger.info("media server listening on %s", self.channel_name)
        return self.channel_name

    # -- broadcasts -----------------------------------------------------------
    async def broadcast_start(
        self, *, user: User, offer_sdp: str, denoise: bool
    ) -> tuple[int, str]:
        """Open a live session for ``user`` from their SDP offer; returns (session id, answer).

        Raises:
            SignalingError: the offer is unusable (the session is then ended).
            services.LiveSessionError: the user is already live elsewhere.
        """
        if self.shut_down:
            raise SignalingError("The server is shutting down.", code="unavailable")
        channel = await self.ensure_started()
        sdp_validate(offer_sdp)
        session, recording = await database_sync_to_async(services.live_session_start)(
            broadcaster=user, denoise=denoise, owner_channel=channel
        )
        room = BroadcastRoom(
            server=self,
            session_id=session.id,
            broadcaster_id=user.id,
            denoise=denoise,
            recording_file=services.recording_path(recording),
        )
        self.rooms[session.id] = room
        try:
            answer = await room.open(offer_sdp)
        except Exception:
            await self.broadcast_stop(session.id, reason="failed")
            raise
        return session.id, answer

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def broadcast_stop_soon(self, session_id: int, *, reason: str) -> None:
        """Schedule :meth:`broadcast_stop` from a callback (no await available)."""
        self._spawn(self.broadcast_stop(session_id, reason=reason))

    def discard_track(self, track: Any) -> None:
        """Read and drop a received track Hearth does not use (video, extra audio)."""
        self._blackhole.addTrack(track)
        self._spawn(self._blackhole.start())

    async def broadcast_stop(self, session_id: int, *, reason: str) -> int | None:
        """End a broadcast owned here; returns the finalised recording's id (or None).

        Safe to call several times and concurrently: the first call does the work.
        """
        if session_id in self._stopping:
            return await asyncio.shield(self._stopping[session_id])
        room = self.rooms.get(session_id)
        if room is None:  # already stopped (or never here): report what the database has
            recording = await database_sync_to_async(services.live_session_end)(
                session_id=session_id, reason=reason
            )
            return recording.id if recording else None
        task = asyncio.ensure_future(self._stop_room(room, reason))
        self._stopping[session_id] = task
        try:
            return await asyncio.shield(task)
        finally:
            self.rooms.pop(session_id, None)
            self._stopping.pop(session_id, None)

    async def _stop_room(self, room: BroadcastRoom, reason: str) -> int | None:
        info: RecordingInfo | None = None
        try:
            info = await room.close()
        except Exception:
            logger.exception("closing session %s failed; repairing its recording", room.session_id)
        recording = await database_sync_to_async(services.live_session_end)(
            session_id=room.session_id, reason=reason, info=info
        )
        stats = room.pipeline.stats if room.pipeline else None
        logger.info(
            "session %s ended (%s): %s blocks in, %s silenced, failed=%r",
            room.session_id,
            reason,
            stats.blocks_in if stats else 0,
            stats.blocks_silenced if stats else 0,
            stats.failed if stats else "",
        )
        return recording.id if recording else None

    # -- cross-process signaling ---------------------------------------------
    async def _reply(self, channel: str, message: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await get_channel_layer().send(channel, message)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        session_id = int(message.get("session_id", 0))
        reply_channel = str(message.get("reply_channel", ""))
        room = self.rooms.get(session_id)
        if kind == "rtc.listen.start":
            if room is None or room.closing:
                await self._reply(
                    reply_channel,
                    {
                        "type": "rtc.listen.error",
                        "session_id": session_id,
                        "code": "not_live",
                        "message": "This broadcast has ended.",
                    },
                )
                return
            try:
                answer = await room.add_listener(
                    key=reply_channel, user_id=int(message["user_id"]), offer_sdp=message["sdp"]
                )
            except SignalingError as exc:
                await self._reply(
                    reply_channel,
                    {
                        "type": "rtc.listen.error",
                        "session_id": session_id,
                        "code": exc.code,
                        "message": str(exc),
                    },
                )
                return
            await self._reply(
                reply_channel,
                {"type": "rtc.listen.answer", "session_id": session_id, "sdp": answer},
            )
        elif kind == "rtc.listen.stop" and room is not None:
            await room.remove_listener(key=reply_channel)
        else:
            logger.warning("media server ignored message of type %r", kind)

    async def _receive_loop(self) -> None:
        layer = get_channel_layer()
        assert self.channel_name is not None
        while True:
            try:
                message = await layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("channel layer receive failed; retrying")
                await asyncio.sleep(1.0)
                continue
            # Each listener's messages in order, different listeners concurrently: one
            # slow SDP answer must not hold up everyone else's.
            self._spawn(self._handle_in_order(message))

    async def _handle_in_order(self, message: dict[str, Any]) -> None:
        key = str(message.get("reply_channel", ""))
        lock = self._key_locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                await self._handle(message)
        except Exception:
            logger.exception("media server failed to handle %r", message.get("type"))
        finally:
            if not lock.locked() and self._key_locks.get(key) is lock:
                del self._key_locks[key]

    async def _heartbeat_loop(self) -> None:
        interval = settings.HEARTH["SESSION_HEARTBEAT_S"]
        beats = 0
        while True:
            await asyncio.sleep(interval)
            beats += 1
            try:
                live = await database_sync_to_async(services.live_session_heartbeat)(
                    session_ids=list(self.rooms)
                )
                for session_id in set(self.rooms) - live:
                    # Ended elsewhere (e.g. judged stale while the database was stuck):
                    # stop streaming a session the database no longer calls live.
                    logger.warning("session %s was ended elsewhere; stopping it", session_id)
                    self.broadcast_stop_soon(session_id, reason="lost")
                if beats % 6 == 0:  # about every 30 s: clear what crashed processes left
                    await database_sync_to_async(services.live_session_end_stale)()
                    await database_sync_to_async(presence_prune)()
            except Exception:
                logger.exception("heartbeat failed")

    async def shutdown(self) -> None:
        """Stop every broadcast (finalising recordings) and the background loops."""
        if self.shut_down:
            return
        self.shut_down = True
        logger.info("media server shutting down: %d live session(s)", len(self.rooms))
        await asyncio.gather(
            *(self.broadcast_stop(sid, reason="server_shutdown") for sid in list(self.rooms)),
            return_exceptions=True,
        )
        for task in self._tasks:
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def listener_counts(self) -> dict[int, int]:
        """Listener count of each session owned by this process."""
        return {sid: len(room.listeners) for sid, room in self.rooms.items()}


_server: MediaServer | None = None


def media_server() -> MediaServer:
    """This process's :class:`MediaServer` (created on first use).

    Bound to the running event loop: daphne has one for the process's life; a new
    loop (as each async test has) gets a new server.
    """
    global _server
    loop = asyncio.get_running_loop()
    if _server is None or _server.loop is not loop:
        _server = MediaServer()
    return _server


def listener_counts() -> dict[int, int]:
    """Listener counts of the sessions owned by this process (others are absent)."""
    return _server.listener_counts() if _server is not None else {}


def _install_shutdown_hook(server: MediaServer) -> None:
    """On SIGTERM/SIGINT under daphne, finish broadcasts before the reactor stops.

    Daphne runs Twisted's asyncio reactor, whose signal handlers call
    ``reactor.stop()``; a "before shutdown" trigger returning a Deferred holds the
    shutdown until every recording is finalised and every peer connection closed.
    """
    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import defer, reactor

    def before_shutdown() -> defer.Deferred[None]:
        async def bounded() -> None:
            try:
                await asyncio.wait_for(server.shutdown(), timeout=SHUTDOWN_TIMEOUT_S)
            except TimeoutError:
                logger.error("shutdown took over %.0f s; exiting anyway", SHUTDOWN_TIMEOUT_S)

        return defer.Deferred.fromFuture(asyncio.ensure_future(bounded()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
