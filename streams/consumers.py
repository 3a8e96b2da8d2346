"""The one WebSocket of every signed-in page: presence, events and signaling.

Thin by design: parse, authorise, call a service or the media server, reply.
Protocol (JSON text frames; every reply to a bad frame is
``{"type": "error", "code", "message", "ref"}``):

client → server: ``ping``; ``broadcast.start {sdp, denoise, title?, bleep?, delay_s?,
blur_faces?, blur_plates?, blur_text?}``;
``broadcast.control {muted?, denoise?}``; ``broadcast.stop``;
``broadcast.resume {session_id}`` (a reconnected page takes its live broadcast back);
``broadcast.reconnect {session_id, sdp}`` (the live page's media path failed: a fresh
SDP offer from a new peer connection replaces it);
``listen.start {session_id, sdp}``; ``listen.stop {session_id}``.

server → client: ``hello {user, server, live}`` (``server``: this process's instance
id; ``live``: the user's own live session, or null),
``pong``, ``broadcast.answer``, ``broadcast.ended``, ``broadcast.resumed``,
``broadcast.reconnected {session_id, sdp}``,
``broadcast.moved`` (another page of the user took the broadcast over),
``listen.answer {session_id, sdp, video}`` (``video``: the answer sends the
broadcaster's redacted camera), and events ``presence``, ``live``, ``friends.changed``,
``session.stats``, ``session.state`` (muted, denoise), ``session.caption`` (masked
live captions), ``session.listeners`` (names,
to the broadcaster's page), ``session.warning``, ``session.ended``,
``recordings.changed``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from project.api import UNCLEAN_TEXT_MESSAGE, text_is_clean
from project.metrics import ConsumerMetricsMixin, ws_error_frame_count
from streams import selectors, services
from streams.rtc import SignalingError, media_server, sdp_validate
from streams.services import media_worker_reserve
from users.events import user_group
from users.models import User
from users.ratelimit import RATE_LIMITED_MESSAGE, user_limited
from users.services import presence_connect, presence_disconnect, presence_touch

logger = logging.getLogger("hearth.ws")

SERVER_INSTANCE = secrets.token_hex(8)
"""This process's id, sent in ``hello``: a page that sees it change knows its server
restarted (its broadcast ended as ``server_shutdown``)."""

Handler = Callable[[dict[str, Any]], Awaitable[None]]

MAX_TITLE_CHARS = 120  # LiveSession.title / Recording.title max_length

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays/objects a frame may have (every protocol frame is flat)."""

# A JSON string (escapes included) or one bracket: strings are skipped whole, so
# brackets inside them do not count. The unrolled form matches in linear time.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class ProtocolError(Exception):
    """A client frame that cannot be served; becomes an ``error`` frame."""

    def __init__(self, message: str, *, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests arrays/objects deeper than ``limit``, found without recursion.

    ``json.loads`` recurses once per level and raises ``RecursionError`` (not a
    ``ValueError``) on a frame of a few thousand ``[``, so the depth is checked first.
    """
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        first = token.group()[0]
        if first in "[{":
            depth += 1
            if depth > limit:
                return True
        elif first in "]}":
            depth -= 1
    return False


def frame_parse(text: str, *, max_bytes: int) -> dict[str, Any]:
    """Decode one client text frame into an object with a string ``type``.

    Raises:
        ProtocolError: over ``max_bytes`` (``too_large``), not valid Unicode or not
            JSON (``bad_json``), nested deeper than ``MAX_JSON_DEPTH`` (``too_deep``),
            a string holding a lone surrogate, or not an object with a ``type``
            (``bad_request``).
    """
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate; daphne never passes one, a test may
        raise ProtocolError("Message is not valid UTF-8.", code="bad_json") from None
    if size > max_bytes:
        raise ProtocolError("Message too large.", code="too_large")
    if json_too_deep(text):
        raise ProtocolError(f"Message nests deeper than {MAX_JSON_DEPTH}.", code="too_deep")
    try:
        content = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, or a number too long for int()
        raise ProtocolError("Message is not valid JSON.", code="bad_json") from None
    try:  # "\ud800" escapes decode to lone surrogates, which later .encode() calls reject
        json.dumps(content, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ProtocolError("Message holds a string that is not valid Unicode.") from None
    if not isinstance(content, dict) or not isinstance(content.get("type"), str):
        raise ProtocolError("Message must be an object with a type.")
    return content


def _session_id(content: dict[str, Any]) -> int:
    value = content.get("session_id")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ProtocolError("session_id must be a positive integer.")
    return value


@dataclass
class _GoLive:
    """A go-live sent to a media worker and not answered yet."""

    request_id: str  # of the current attempt (one per worker asked)
    content: dict[str, Any]  # the page's broadcast.start frame (sdp, denoise, title)
    tried: list[str] = field(default_factory=list)  # workers asked already
    deadline: asyncio.Task[None] | None = None
    timed_out: bool = False  # a worker asked did not answer in time


def _title_parse(value: object) -> str:
    """A broadcast title from a frame: a string of at most 120 characters, trimmed.

    Raises:
        ProtocolError: not a string, too long, or with control/invalid characters.
    """
    if not isinstance(value, str):
        raise ProtocolError("title must be a string.")
    title = value.strip()
    if len(title) > MAX_TITLE_CHARS:
        raise ProtocolError(f"Keep the title to {MAX_TITLE_CHARS} characters.")
    if not text_is_clean(title):
        raise ProtocolError(UNCLEAN_TEXT_MESSAGE)
    return title


def _blur_parse(content: dict[str, Any]) -> tuple[bool, bool, bool]:
    """``blur_faces``, ``blur_plates`` (each true when absent) and ``blur_text`` (false
    when absent) of a go-live: whether the server blurs faces / licence plates /
    on-screen personal text in the camera's frames.

    Raises:
        ProtocolError: one is present and not a boolean.
    """
    switches = []
    for key, default in (("blur_faces", True), ("blur_plates", True), ("blur_text", False)):
        value = content.get(key, default)
        if not isinstance(value, bool):
            raise ProtocolError(f"{key} must be true or false.")
        switches.append(value)
    return switches[0], switches[1], switches[2]


def _bleep_parse(content: dict[str, Any]) -> tuple[str, float]:
    """``bleep`` ("tone", "silence", or false/absent) and ``delay_s`` of a go-live.

    Raises:
        ProtocolError: a value of the wrong kind, a delay outside
            ``PII_DELAY_MIN_S``..``PII_DELAY_MAX_S``, or bleeping asked for on a server
            that turned it off (``PII_LIVE``).
    """
    limits = settings.HEARTH
    bleep = content.get("bleep", False)
    if bleep is True:
        bleep = "tone"
    if bleep is False or bleep is None:
        return "", 0.0
    if bleep not in ("tone", "silence"):
        raise ProtocolError('bleep must be "tone", "silence" or false.')
    if not limits["PII_LIVE"]:
        raise ProtocolError(
            "Bleeping personal information is turned off on this server.", code="unavailable"
        )
    delay = content.get("delay_s", limits["PII_DELAY_S"])
    low, high = limits["PII_DELAY_MIN_S"], limits["PII_DELAY_MAX_S"]
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not low <= delay <= high:
        raise ProtocolError(f"delay_s must be a number of seconds from {low:g} to {high:g}.")
    return bleep, float(delay)


class HearthConsumer(ConsumerMetricsMixin, AsyncWebsocketConsumer):
    """Per-page socket. Joins ``user.<id>`` for events; may broadcast or listen."""

    user: User
    broadcasting: int | None = None
    broadcast_owner: str = ""  # the channel of the worker holding our broadcast
    going_live: _GoLive | None = None
    listening: dict[int, str]
    cleaned_up: bool = False
    logged_out: bool = False  # closed by logout: a live broadcast ends at once (no grace)
    stop_reason: str = "disconnected"  # the end reason of that broadcast
    # session id → the task that gives up on the owner's reply (see on_listen_start)
    listen_replies: dict[int, asyncio.Task[None]]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Run the consumer; clean up after it however it ends.

        ``disconnect()`` runs only for a ``websocket.disconnect`` message. A handler
        that raises past ``receive``'s guards, or a cancelled task, ends the consumer
        without one, and would leave presence rows and a live broadcast behind.
        """
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()

    async def connect(self) -> None:
        """Accept signed-in users only (close 4401 otherwise) and mark them online."""
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.user = user
        self.listening = {}
        self.listen_replies = {}
        self.stops_asked: set[int] = set()
        self.groups_joined: set[str] = set()
        await self.accept()
        await self._join(user_group(user.id))
        await database_sync_to_async(presence_connect)(user=user, channel_name=self.channel_name)
        own = await database_sync_to_async(selectors.live_session_active_for)(user=user)
        await self._send(
            {
                "type": "hello",
                "user": {"id": user.id, "username": user.username},
                "server": SERVER_INSTANCE,
                # The user's own live broadcast (any tab's): pages show it in the live bar.
                "live": {"id": own.id, "started_at": own.started_at.isoformat()} if own else None,
            }
        )

    async def disconnect(self, code: int) -> None:
        """Detach this page from its broadcast (the worker keeps it ``BROADCAST_GRACE_S``
        for the page to come back), leave listened sessions, update presence."""
        await self._cleanup()

    async def _cleanup(self) -> None:
        """The work of ``disconnect()``; runs once, from there or from ``__call__``."""
        if self.cleaned_up or not hasattr(self, "user"):
            return
        self.cleaned_up = True
        for waiter in getattr(self, "listen_replies", {}).values():
            waiter.cancel()
        if self.going_live is not None and self.going_live.deadline is not None:
            self.going_live.deadline.cancel()
        self.going_live = None  # a late answer goes nowhere; its worker stops it
        steps: list[Callable[[], Awaitable[object]]] = []
        if self.broadcasting is not None:
            session_id, self.broadcasting = self.broadcasting, None
            if self.logged_out:
                step = functools.partial(
                    self._broadcast_stop_send, session_id, self.broadcast_owner, self.stop_reason
                )
            else:  # a dropped socket: the worker keeps the broadcast for a grace period
                step = functools.partial(
                    self.channel_layer.send,
                    self.broadcast_owner,
                    {
                        "type": "rtc.broadcast.detach",
                        "session_id": session_id,
                        "reply_channel": self.channel_name,
                    },
                )
            steps.append(step)
        for session_id, owner_channel in list(self.listening.items()):
            steps.append(functools.partial(self._listen_leave, session_id, owner_channel))
        for group in list(self.groups_joined):
            steps.append(
                functools.partial(self.channel_layer.group_discard, group, self.channel_name)
            )
        steps.append(
            functools.partial(
                database_sync_to_async(presence_disconnect),
                user=self.user,
                channel_name=self.channel_name,
            )
        )
        for step in steps:  # each step runs even if an earlier one failed
            try:
                await step()
            except Exception:
                logger.exception("disconnect cleanup step failed")

    # -- plumbing --------------------------------------------------------------
    async def _send(self, payload: dict[str, Any]) -> None:
        """Send one JSON frame; a socket that closed meanwhile is not an error.

        An event can reach this consumer after its client went away and before the
        server's ``websocket.disconnect`` is handled; daphne then raises (autobahn's
        ``Disconnected``). Letting that escape would end the consumer's application
        instance, and with it the ``disconnect()`` cleanup still queued behind it.
        """
        try:
            await self.send(text_data=json.dumps(payload))
        except Exception as exc:
            logger.info("page socket gone; %s not sent (%s)", payload.get("type"), exc)

    async def _error(self, message: str, *, code: str, ref: object = None) -> None:
        ws_error_frame_count(code)
        await self._send({"type": "error", "code": code, "message": message, "ref": ref})

    async def _join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined.add(group)

    async def _leave(self, group: str) -> None:
        await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined.discard(group)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Parse one client frame and dispatch it by ``type``; errors become frames."""
        if text_data is None:
            await self._error("Send JSON text frames.", code="bad_frame")
            return
        try:
            content = frame_parse(text_data, max_bytes=settings.HEARTH["MAX_WS_MESSAGE_BYTES"])
        except ProtocolError as exc:
            await self._error(str(exc), code=exc.code)
            return
        kind = content["type"]
        handler = self._handlers().get(kind)
        if handler is None:
            await self._error(f"Unknown message type {kind!r}.", code="unknown_type", ref=kind)
            return
        self.frame_type = kind  # metrics label (ConsumerMetricsMixin)
        try:
            await handler(content)
        except (ProtocolError, SignalingError, services.LiveSessionError) as exc:
            await self._error(str(exc), code=exc.code, ref=kind)
        except Exception:  # a server fault must not kill the page's socket
            logger.exception("handling %r failed", kind)
            await self._error("Something went wrong on the server.", code="internal", ref=kind)

    def _handlers(self) -> dict[str, Handler]:
        return {
            "ping": self.on_ping,
            "broadcast.start": self.on_broadcast_start,
            "broadcast.stop": self.on_broadcast_stop,
            "broadcast.control": self.on_broadcast_control,
            "broadcast.resume": self.on_broadcast_resume,
            "broadcast.reconnect": self.on_broadcast_reconnect,
            "listen.start": self.on_listen_start,
            "listen.stop": self.on_listen_stop,
        }

    # -- client messages -----------------------------------------------------
    async def on_ping(self, content: dict[str, Any]) -> None:
        """Heartbeat: keeps presence fresh."""
        await database_sync_to_async(presence_touch)(user=self.user, channel_name=self.channel_name)
        await self._send({"type": "pong"})

    async def _rate_limit(self, group: str, rate_setting: str) -> None:
        """Count one attempt of this user; ProtocolError ``rate_limited`` past the limit."""
        limited = await database_sync_to_async(user_limited)(
            user_id=self.user.id, group=group, rate_setting=rate_setting
        )
        if limited:
            raise ProtocolError(RATE_LIMITED_MESSAGE, code="rate_limited")

    async def on_broadcast_start(self, content: dict[str, Any]) -> None:
        """Go live from this page with the SDP offer ``sdp``: place it on a media worker.

        The least-loaded live worker with room gets ``rtc.broadcast.start``; its
        answer (``rtc_broadcast_answer``) or refusal (``rtc_broadcast_error``) comes
        back to this consumer's channel. Attempts are limited per user
        (``HEARTH["BROADCAST_START_RATE"]``).
        """
        await self._rate_limit("ws:broadcast.start", "BROADCAST_START_RATE")
        if self.broadcasting is not None or self.going_live is not None:
            raise ProtocolError("This page is already live.", code="already_live")
        denoise = content.get("denoise", True)
        if not isinstance(denoise, bool):
            raise ProtocolError("denoise must be true or false.")
        title = _title_parse(content.get("title", ""))
        bleep, delay_s = _bleep_parse(content)
        blur_faces, blur_plates, blur_text = _blur_parse(content)
        sdp = sdp_validate(content.get("sdp"))
        if settings.HEARTH["MEDIA_IN_PROCESS"]:
            await media_server().ensure_started()  # this process's worker is placeable
        self.going_live = _GoLive(
            request_id="",
            content={
                "sdp": sdp,
                "denoise": denoise,
                "title": title,
                "bleep": bleep,
                "delay_s": delay_s,
                "blur_faces": blur_faces,
                "blur_plates": blur_plates,
                "blur_text": blur_text,
            },
        )
        try:
            await self._broadcast_place()
        except BaseException:
            self._going_live_drop()  # whatever failed, the page may try again
            raise

    async def _broadcast_place(self) -> None:
        """Send the pending go-live to the least-loaded worker not tried yet.

        Each attempt has its own ``request_id`` and deadline
        (``BROADCAST_REPLY_TIMEOUT_S``): a worker that is full, shutting down or
        silent is added to ``tried`` and the next one is asked; an answer to an
        older attempt is stopped on its worker.

        Raises:
            ProtocolError: ``server_full`` when every live worker is full (or refused),
                ``unavailable`` when no media worker is running at all,
                ``worker_unreachable`` when the workers tried did not answer.
        """
        pending = self.going_live
        assert pending is not None
        if pending.deadline is not None and pending.deadline is not asyncio.current_task():
            pending.deadline.cancel()
        pending.deadline = None
        candidates = await database_sync_to_async(selectors.media_worker_candidates)(
            exclude=pending.tried
        )
        for worker in candidates:
            if not await database_sync_to_async(media_worker_reserve)(worker_id=worker.id):
                continue  # another page took its last slot meanwhile
            pending.tried.append(worker.channel_name)
            pending.request_id = secrets.token_hex(8)
            pending.deadline = asyncio.ensure_future(self._broadcast_reply_deadline(pending))
            await self.channel_layer.send(
                worker.channel_name,
                {
                    "type": "rtc.broadcast.start",
                    "request_id": pending.request_id,
                    "user_id": self.user.id,
                    "reply_channel": self.channel_name,
                    **pending.content,
                },
            )
            return
        self._going_live_drop()
        if pending.timed_out:
            raise ProtocolError(
                "The media server is not answering; try again later.", code="worker_unreachable"
            )
        alive = await database_sync_to_async(selectors.media_workers_alive)()
        if not alive:
            raise ProtocolError(
                "No media server is running right now; try again in a minute.",
                code="unavailable",
            )
        raise ProtocolError(
            "Every media server is full right now; try again in a few minutes.",
            code="server_full",
        )

    def _going_live_drop(self) -> None:
        pending, self.going_live = self.going_live, None
        deadline = pending.deadline if pending is not None else None
        if deadline is not None and deadline is not asyncio.current_task():
            deadline.cancel()

    async def _broadcast_reply_deadline(self, pending: _GoLive) -> None:
        """A worker did not answer this attempt within ``BROADCAST_REPLY_TIMEOUT_S``:
        ask the next one (its late answer, if any, is stopped)."""
        await asyncio.sleep(settings.HEARTH["BROADCAST_REPLY_TIMEOUT_S"])
        if self.going_live is not pending:
            return
        logger.warning("a media worker did not answer a go-live in time; trying another")
        pending.timed_out = True
        await self._broadcast_retry()

    async def _broadcast_retry(self) -> None:
        """Place the pending go-live again; a failure becomes an error frame."""
        try:
            await self._broadcast_place()
        except ProtocolError as exc:
            await self._error(str(exc), code=exc.code, ref="broadcast.start")
        except Exception:
            self._going_live_drop()
            logger.exception("placing a go-live failed")
            await self._error(
                "Something went wrong on the server.", code="internal", ref="broadcast.start"
            )

    async def on_broadcast_resume(self, content: dict[str, Any]) -> None:
        """A page of the broadcaster (its socket back after a drop, or another tab)
        takes the user's own live broadcast ``session_id`` back.

        The worker holding it makes this page its owner (``rtc.broadcast.attach``) and
        answers ``rtc.broadcast.attached`` → ``broadcast.resumed``. A session that has
        ended gets an error: ``server_restarted`` when it ended with its server,
        ``not_live`` otherwise.
        """
        session_id = _session_id(content)
        if self.broadcasting == session_id:
            await self._send({"type": "broadcast.resumed", "session_id": session_id})
            return
        if self.broadcasting is not None or self.going_live is not None:
            raise ProtocolError("This page is already live.", code="already_live")
        session = await database_sync_to_async(selectors.live_session_own_get)(
            user=self.user, session_id=session_id
        )
        if session is None:
            raise ProtocolError("That is not your broadcast.", code="not_allowed")
        if session.ended_at is not None or not session.owner_channel:
            raise self._ended_error(session.end_reason)
        await self._join(services.session_group(session_id))  # no session.ended missed
        await self.channel_layer.send(
            session.owner_channel,
            {
                "type": "rtc.broadcast.attach",
                "session_id": session_id,
                "user_id": self.user.id,
                "reply_channel": self.channel_name,
            },
        )

    async def on_broadcast_reconnect(self, content: dict[str, Any]) -> None:
        """This page's live broadcast ``session_id`` lost its media path (ICE failed):
        its worker swaps in a new peer connection from the fresh SDP offer ``sdp``,
        feeding the same session, listeners and recording; ``broadcast.reconnected
        {session_id, sdp}`` answers. Counted with go-lives per user
        (``BROADCAST_START_RATE``).
        """
        await self._rate_limit("ws:broadcast.reconnect", "BROADCAST_START_RATE")
        session_id = _session_id(content)
        if self.broadcasting != session_id:
            raise ProtocolError("This page is not live with that broadcast.", code="not_live")
        sdp = sdp_validate(content.get("sdp"))
        await self.channel_layer.send(
            self.broadcast_owner,
            {
                "type": "rtc.broadcast.reconnect",
                "session_id": session_id,
                "user_id": self.user.id,
                "reply_channel": self.channel_name,
                "sdp": sdp,
            },
        )

    async def rtc_broadcast_reconnected(self, event: dict[str, Any]) -> None:
        """The worker answered our reconnect offer."""
        session_id = int(event["session_id"])
        if self.broadcasting != session_id:
            return  # stopped or moved meanwhile: the new connection is the worker's to end
        await self._send(
            {"type": "broadcast.reconnected", "session_id": session_id, "sdp": event["sdp"]}
        )

    async def rtc_broadcast_reconnect_error(self, event: dict[str, Any]) -> None:
        """The worker refused our reconnect offer."""
        await self._error(str(event["message"]), code=str(event["code"]), ref="broadcast.reconnect")

    @staticmethod
    def _ended_error(reason: str) -> ProtocolError:
        if reason == "server_shutdown":
            return ProtocolError(
                "The server restarted, so the broadcast ended.", code="server_restarted"
            )
        return ProtocolError("This broadcast has ended.", code="not_live")

    async def rtc_broadcast_attached(self, event: dict[str, Any]) -> None:
        """The worker made this page the owner of the broadcast: it is live again here."""
        session_id = int(event["session_id"])
        if self.broadcasting is not None and self.broadcasting != session_id:
            return  # went live anew meanwhile (cannot happen while that one is live)
        self.broadcasting, self.broadcast_owner = session_id, str(event["worker_channel"])
        await self._send(
            {
                "type": "broadcast.resumed",
                "session_id": session_id,
                **{k: event[k] for k in ("listeners", "muted", "denoise") if k in event},
            }
        )

    async def rtc_broadcast_attach_error(self, event: dict[str, Any]) -> None:
        """The worker no longer holds the broadcast: tell the page why it ended."""
        session_id = int(event["session_id"])
        if self.broadcasting != session_id:
            await self._session_forget(session_id)
        session = await database_sync_to_async(selectors.live_session_own_get)(
            user=self.user, session_id=session_id
        )
        error = self._ended_error(session.end_reason if session is not None else "")
        await self._error(str(error), code=error.code, ref="broadcast.resume")

    async def rtc_broadcast_detached(self, event: dict[str, Any]) -> None:
        """Another page of the user took our broadcast over: this page is no longer live."""
        session_id = int(event["session_id"])
        if self.broadcasting != session_id:
            return
        self.broadcasting = None
        group = services.session_group(session_id)
        if group in self.groups_joined:
            await self._leave(group)
        await self._send({"type": "broadcast.moved", "session_id": session_id})

    async def on_broadcast_control(self, content: dict[str, Any]) -> None:
        """Switch this page's live broadcast: ``muted`` and/or ``denoise`` (booleans).

        The worker applies them and tells the session's pages (``session.state``).
        """
        if self.broadcasting is None:
            raise ProtocolError("This page is not live.", code="not_live")
        switches = {key: content[key] for key in ("muted", "denoise") if key in content}
        if not switches or not all(isinstance(v, bool) for v in switches.values()):
            raise ProtocolError("Send muted and/or denoise as true or false.")
        await self.channel_layer.send(
            self.broadcast_owner,
            {
                "type": "rtc.broadcast.control",
                "session_id": self.broadcasting,
                "reply_channel": self.channel_name,
                **switches,
            },
        )

    async def on_broadcast_stop(self, content: dict[str, Any]) -> None:
        """Stop this page's broadcast; ``broadcast.ended`` follows from its worker.

        A go-live still waiting for its worker is given up at once (``broadcast.ended``
        with no session); its late answer is stopped on the worker.
        """
        if self.going_live is not None:
            self._going_live_drop()
            await self._send({"type": "broadcast.ended", "session_id": None, "recording_id": None})
            return
        if self.broadcasting is None:
            raise ProtocolError("This page is not live.", code="not_live")
        session_id, self.broadcasting = self.broadcasting, None
        await self._broadcast_stop_send(session_id, self.broadcast_owner, "stopped")

    async def _broadcast_stop_send(self, session_id: int, worker: str, reason: str) -> None:
        """Ask ``worker`` to stop ``session_id``; it replies ``rtc.broadcast.ended``."""
        self.stops_asked.add(session_id)
        await self.channel_layer.send(
            worker,
            {
                "type": "rtc.broadcast.stop",
                "session_id": session_id,
                "reason": reason,
                "reply_channel": self.channel_name,
            },
        )

    async def on_listen_start(self, content: dict[str, Any]) -> None:
        """Ask the process that owns a friend's broadcast to answer our SDP offer.

        Attempts are limited per user (``HEARTH["LISTEN_START_RATE"]``).
        """
        await self._rate_limit("ws:listen.start", "LISTEN_START_RATE")
        session_id = _session_id(content)
        sdp = sdp_validate(content.get("sdp"))
        session = await database_sync_to_async(selectors.live_session_visible_get)(
            user=self.user, session_id=session_id
        )
        if session is None:
            raise ProtocolError("You can only listen to friends who are live.", code="not_allowed")
        await self._join(services.session_group(session_id))
        self.listening[session_id] = session.owner_channel
        await self.channel_layer.send(
            session.owner_channel,
            {
                "type": "rtc.listen.start",
                "session_id": session_id,
                "user_id": self.user.id,
                "reply_channel": self.channel_name,
                "sdp": sdp,
            },
        )
        self._listen_reply_wait(session_id)

    def _listen_reply_wait(self, session_id: int) -> None:
        """Give up on the owner's reply to ``listen.start`` after ``LISTEN_REPLY_TIMEOUT_S``.

        An owner process killed without cleanup leaves its channel with nobody reading
        it, and its session looks live until the stale cleanup ends it (a minute on):
        without a deadline the page would wait for an answer all that time.
        """
        self._listen_reply_done(session_id)
        self.listen_replies[session_id] = asyncio.ensure_future(
            self._listen_reply_deadline(session_id)
        )

    def _listen_reply_done(self, session_id: int) -> None:
        waiter = self.listen_replies.pop(session_id, None)
        if waiter is not None and waiter is not asyncio.current_task():
            waiter.cancel()

    async def _listen_reply_deadline(self, session_id: int) -> None:
        await asyncio.sleep(settings.HEARTH["LISTEN_REPLY_TIMEOUT_S"])
        self.listen_replies.pop(session_id, None)
        owner_channel = self.listening.get(session_id)
        if owner_channel is None:
            return
        logger.warning("owner of session %s did not answer a listen in time", session_id)
        await self._listen_leave(session_id, owner_channel)  # a slow owner drops it too
        await self._error(
            "The broadcast's server is not answering; it may have stopped. Try again later.",
            code="owner_unreachable",
            ref="listen.start",
        )

    async def on_listen_stop(self, content: dict[str, Any]) -> None:
        """Stop listening to a session."""
        session_id = _session_id(content)
        owner_channel = self.listening.get(session_id)
        if owner_channel is None:
            raise ProtocolError("You are not listening to that session.", code="not_listening")
        await self._listen_leave(session_id, owner_channel)

    async def _listen_leave(self, session_id: int, owner_channel: str) -> None:
        self.listening.pop(session_id, None)
        self._listen_reply_done(session_id)
        await self._leave(services.session_group(session_id))
        try:
            await self.channel_layer.send(
                owner_channel,
                {
                    "type": "rtc.listen.stop",
                    "session_id": session_id,
                    "reply_channel": self.channel_name,
                },
            )
        except Exception:  # the owner process is gone; nothing to release there
            logger.info("could not reach the owner of session %s", session_id)

    # -- channel-layer messages ----------------------------------------------
    async def hearth_event(self, event: dict[str, Any]) -> None:
        """Relay a server event (presence, live, session.*, ...) to the page."""
        data = event.get("data", {})
        if event.get("event") == "friends.changed" and self.listening:
            await self._recheck_listening()
        if event.get("event") == "session.ended":
            await self._session_forget(data.get("session_id"))
        await self._send({"type": event["event"], **data})

    async def _session_forget(self, session_id: object) -> None:
        """A session this page listened to or broadcast has ended: drop it and its group.

        Leaving ``session.<id>`` stops that session's ``session.stats`` reaching the page.
        """
        if not isinstance(session_id, int):
            return
        self.listening.pop(session_id, None)
        if session_id == self.broadcasting:  # ended by the media server
            self.broadcasting = None
        group = services.session_group(session_id)
        if group in self.groups_joined:
            await self._leave(group)

    async def _recheck_listening(self) -> None:
        """Stop listening to sessions whose broadcaster is no longer a friend."""
        for session_id, owner_channel in list(self.listening.items()):
            visible = await database_sync_to_async(selectors.live_session_visible_get)(
                user=self.user, session_id=session_id
            )
            if visible is None:
                await self._listen_leave(session_id, owner_channel)
                await self._send(
                    {"type": "session.ended", "session_id": session_id, "reason": "unfriended"}
                )

    async def hearth_logout(self, event: dict[str, Any]) -> None:
        """The session this socket was opened with logged out: close (4401)."""
        session = self.scope.get("session")
        if session is not None and event.get("session_key") == session.session_key:
            self.logged_out = True
            await self.close(code=4401)

    async def hearth_account_closed(self, event: dict[str, Any]) -> None:
        """The user's account is being deleted (``users.services.user_delete``): close
        (4401); a broadcast of this page ends at once (``account_deleted``)."""
        self.logged_out = True
        self.stop_reason = "account_deleted"
        await self.close(code=4401)

    async def rtc_listen_answer(self, event: dict[str, Any]) -> None:
        """The owner process answered our listener offer (dropped if we gave up on it)."""
        if event["session_id"] not in self.listening:
            return
        self._listen_reply_done(event["session_id"])
        await self._send(
            {
                "type": "listen.answer",
                "session_id": event["session_id"],
                "sdp": event["sdp"],
                "video": bool(event.get("video", False)),
            }
        )

    async def rtc_listen_error(self, event: dict[str, Any]) -> None:
        """The owner process refused our listener offer: forget the session and its group."""
        session_id = event["session_id"]
        self.listening.pop(session_id, None)
        self._listen_reply_done(session_id)
        group = services.session_group(session_id)
        if session_id != self.broadcasting and group in self.groups_joined:
            await self._leave(group)
        await self._error(event["message"], code=event["code"], ref="listen.start")

    async def rtc_broadcast_answer(self, event: dict[str, Any]) -> None:
        """A worker opened our go-live: this page is live. An answer to a go-live we
        gave up on (deadline, page closing) is stopped at once."""
        pending = self.going_live
        session_id = int(event["session_id"])
        worker = str(event["worker_channel"])
        if pending is None or pending.request_id != event.get("request_id"):
            await self._broadcast_stop_send(session_id, worker, "abandoned")
            self.stops_asked.discard(session_id)  # the page never knew this session
            return
        self._going_live_drop()
        self.broadcasting, self.broadcast_owner = session_id, worker
        await self._join(services.session_group(session_id))
        if not await database_sync_to_async(selectors.live_session_is_live)(session_id=session_id):
            # Ended before we joined its group (we would never hear session.ended).
            await self._session_forget(session_id)
            await self._error(
                "The broadcast ended as it started.", code="not_live", ref="broadcast.start"
            )
            return
        await self._send(
            {"type": "broadcast.answer", "session_id": session_id, "sdp": event["sdp"]}
        )

    async def rtc_broadcast_error(self, event: dict[str, Any]) -> None:
        """A worker refused our go-live: try the next worker when it was full,
        otherwise tell the page."""
        pending = self.going_live
        if pending is None or pending.request_id != event.get("request_id"):
            return
        if event.get("code") in ("worker_full", "unavailable"):
            await self._broadcast_retry()
            return
        self._going_live_drop()
        await self._error(str(event["message"]), code=str(event["code"]), ref="broadcast.start")

    async def rtc_broadcast_ended(self, event: dict[str, Any]) -> None:
        """Our worker stopped the broadcast we asked it to stop (answers to stops we
        did not ask for, e.g. of abandoned go-lives, are not the page's business)."""
        session_id = event["session_id"]
        if session_id not in self.stops_asked:
            return
        self.stops_asked.discard(session_id)
        group = services.session_group(session_id)
        if group in self.groups_joined:
            await self._leave(group)
        await self._send(
            {
                "type": "broadcast.ended",
                "session_id": session_id,
                "recording_id": event.get("recording_id"),
            }
        )
