"""Real-time events to users' open pages, sent only after the database commit.

Every signed-in page's WebSocket consumer joins the group ``user_group(user.id)``;
``users_notify`` queues a message for those groups with
``transaction.on_commit`` so a page never learns of a row that was rolled back
(the pattern Zulip uses for presence events).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from redis.exceptions import ConnectionError as RedisConnectionError

logger = logging.getLogger("hearth.events")

SEND_TIMEOUT_S = 5.0
"""Longest a sync caller waits for one channel-layer send on the server's loop."""


def user_group(user_id: int) -> str:
    """Channel-layer group name of all open pages of user ``user_id``."""
    return f"user.{user_id}"


def _server_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop of the server that called into this thread through
    ``sync_to_async``/``database_sync_to_async`` (asgiref records it per thread), if any."""
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    return getattr(SyncToAsync.threadlocal, "main_event_loop", None)


T = TypeVar("T")

LAYER_ATTEMPTS = 4
"""Tries of a channel-layer call that fails on a dead connection (see :func:`layer_call`)."""


async def layer_call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await the channel-layer coroutine ``fn(*args)``, retrying connection errors.

    After a Redis restart, channels_redis's pool still holds connections to the old
    server; each fails once (``redis.exceptions.ConnectionError``) when next used and
    is reconnected afterwards, so with a pool of N dead connections up to N sends in
    a row were lost — a stop reply, a ``session.ended`` — long after Redis was back
    (found by ``bench/soak.py``). A failed write sent nothing, so trying again is safe;
    up to :data:`LAYER_ATTEMPTS` tries, 50-150 ms apart.

    Raises:
        redis.exceptions.ConnectionError, OSError: still failing after every try.
    """
    for attempt in range(LAYER_ATTEMPTS):
        try:
            return await fn(*args)
        except (RedisConnectionError, OSError):
            if attempt == LAYER_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def group_send_from_sync(group: str, message: dict[str, Any]) -> None:
    """Send ``message`` to channel-layer ``group`` from synchronous code, bounded.

    In a database thread of a running server, ``async_to_sync`` hands the send to the
    server's event loop and waits for it without a limit; when that loop has stopped
    (SIGTERM arriving while an ``on_commit`` hook runs) the thread waited forever and
    the process could not exit. Here the send is scheduled on that loop with
    ``run_coroutine_threadsafe`` and awaited for at most :data:`SEND_TIMEOUT_S`; a
    stopped loop skips the send (logged). Outside a server (commands, tests without a
    loop), or when the recorded loop is closed, ``async_to_sync`` runs it on a loop
    of its own, as before.

    Raises:
        Exception: whatever the channel layer raises (callers log and carry on).
    """
    layer = get_channel_layer()
    if layer is None:  # pragma: no cover - settings always define one
        return
    loop = _server_loop()
    if loop is None or loop.is_closed():
        # No server loop (or a finished async_to_sync's loop recorded in this thread,
        # which asgiref also skips): run the send on a loop of its own.
        async_to_sync(layer_call)(layer.group_send, group, message)
        return
    if not loop.is_running():  # stopped, not closed: the server is shutting down
        logger.warning("event loop stopped; %s to %s not sent", message.get("type"), group)
        return
    future = asyncio.run_coroutine_threadsafe(layer_call(layer.group_send, group, message), loop)
    try:
        future.result(timeout=SEND_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        future.cancel()
        logger.warning(
            "%s to %s not sent within %.0f s", message.get("type"), group, SEND_TIMEOUT_S
        )


async def _layer_request(channel: str, message: dict[str, Any], wait_s: float) -> dict[str, Any]:
    layer = get_channel_layer()
    reply_channel = await layer.new_channel()
    await layer_call(layer.send, channel, {**message, "reply_channel": reply_channel})
    async with asyncio.timeout(wait_s):
        return await layer.receive(reply_channel)


def layer_request_from_sync(
    channel: str, message: dict[str, Any], *, timeout: float
) -> dict[str, Any] | None:
    """Send ``message`` to channel-layer ``channel`` with a fresh ``reply_channel`` and
    wait for the first message sent back there, from synchronous code.

    Returns that reply, or None when none came within ``timeout`` seconds, the
    server's event loop is stopping, or the layer failed (logged). Runs on the
    server's loop when called from one of its threads, as :func:`group_send_from_sync`
    does; blocks the calling thread meanwhile.
    """
    loop = _server_loop()
    try:
        if loop is None or loop.is_closed():
            return async_to_sync(_layer_request)(channel, message, timeout)
        if not loop.is_running():
            logger.warning("event loop stopped; %s to %s not sent", message.get("type"), channel)
            return None
        future = asyncio.run_coroutine_threadsafe(_layer_request(channel, message, timeout), loop)
        try:
            return future.result(timeout=timeout + SEND_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise
    except (TimeoutError, concurrent.futures.TimeoutError):
        logger.warning(
            "no reply to %s from %s within %.0f s", message.get("type"), channel, timeout
        )
        return None
    except Exception:
        logger.exception("could not send %s to %s", message.get("type"), channel)
        return None


def _send_now(user_ids: list[int], message: dict[str, Any]) -> None:
    for user_id in user_ids:
        try:
            group_send_from_sync(user_group(user_id), message)
        except Exception:  # a broken layer must not break the request that committed
            logger.exception("could not send %s to user %s", message.get("type"), user_id)


def users_notify(*, user_ids: Iterable[int], event: str, data: dict[str, Any]) -> None:
    """After the current transaction commits, send ``event`` with ``data`` to users.

    The consumer handler ``hearth_event`` relays it to the browser as
    ``{"type": event, **data}``. Outside a transaction it is sent at once.
    """
    ids = sorted(set(user_ids))
    message = {"type": "hearth.event", "event": event, "data": data}
    transaction.on_commit(lambda: _send_now(ids, message))
