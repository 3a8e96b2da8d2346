"""Sending channel-layer events from sync code (on_commit hooks in database threads)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async

from users.events import group_send_from_sync


def test_send_from_a_database_thread_returns_when_the_server_loop_has_stopped() -> None:
    # Regression: an on_commit hook that sent an event from a database thread while
    # SIGTERM stopped daphne's loop waited forever in async_to_sync; the interpreter
    # then hung joining that thread at exit, until daphne was SIGKILLed.
    loop = asyncio.new_event_loop()
    loop_stopped = threading.Event()
    returned = threading.Event()
    errors: list[BaseException] = []

    def database_work() -> None:  # runs in asgiref's thread, like an on_commit hook
        loop.call_soon_threadsafe(loop.stop)
        assert loop_stopped.wait(5)
        try:
            group_send_from_sync("user.1", {"type": "hearth.event", "event": "x", "data": {}})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        returned.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        task = loop.create_task(sync_to_async(database_work, thread_sensitive=False)())
        loop.run_forever()
        loop_stopped.set()
        loop.run_until_complete(task)  # the database thread finishes: end cleanly
        loop.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert returned.wait(10), "the send blocked on a stopped event loop"
    server.join(10)
    assert errors == []


@pytest.mark.django_db
async def test_send_from_a_database_thread_reaches_the_group_on_a_running_loop(layer) -> None:
    channel = await layer.new_channel()
    await layer.group_add("user.7", channel)
    message = {"type": "hearth.event", "event": "ping", "data": {"n": 1}}
    await sync_to_async(group_send_from_sync, thread_sensitive=False)("user.7", message)
    assert await asyncio.wait_for(layer.receive(channel), 5) == message


@pytest.mark.django_db
def test_send_after_an_async_to_sync_round_trip_still_arrives(layer) -> None:
    # asgiref records the temporary loop of an async_to_sync call in this thread when
    # that coroutine calls back into sync code; once closed it must not swallow sends.
    from asgiref.sync import async_to_sync, sync_to_async

    from tests.factories import Inbox

    async def round_trip() -> None:
        await sync_to_async(lambda: None)()

    async_to_sync(round_trip)()
    inbox = Inbox(layer, "user.8")
    group_send_from_sync("user.8", {"type": "hearth.event", "event": "ping", "data": {}})
    assert inbox.events() == [("ping", {})]
