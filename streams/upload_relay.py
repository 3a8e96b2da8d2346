"""Relays upload jobs' progress from the task worker to the web process's pages.

The task worker (``manage.py db_worker``) is another process: with Redis as the
channel layer its ``upload.progress`` events reach the pages directly, but with the
embedded default (the in-memory layer, one process) they cannot. So the web process
(daphne) polls the jobs table every :data:`RELAY_INTERVAL_S` for rows changed since
the last look and sends each owner ``upload.progress`` (and, when a job is done, the
owner and friends ``recordings.changed``) through its own layer. The rows were
committed by the worker, so the events still follow the commit. Runs only under
daphne with the in-memory layer; it also fails, about every 30 s, the jobs whose
worker died mid-run.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

logger = logging.getLogger("hearth.uploads")

RELAY_INTERVAL_S = 0.5
"""Seconds between two looks at the jobs table."""

STALE_CHECK_LOOKS = 60
"""Every this many looks (about 30 s) the relay also fails jobs whose worker died
(:func:`streams.services.upload_fail_stale`)."""

_tasks: set[asyncio.Task[None]] = set()  # keeps the loop's task referenced


def _relay_once(since: datetime) -> datetime:
    """Send the events for jobs changed after ``since``; returns the newest change seen.

    Runs outside any transaction, so ``users_notify`` sends at once."""
    from streams.selectors import upload_list_changed
    from streams.services import _owner_and_friends, upload_json
    from users.events import users_notify

    for job in upload_list_changed(since=since):
        users_notify(user_ids=[job.owner_id], event="upload.progress", data=upload_json(job))
        if job.status == job.DONE:
            users_notify(
                user_ids=_owner_and_friends(job.owner_id), event="recordings.changed", data={}
            )
        since = max(since, job.updated_at)
    return since


async def upload_relay_loop() -> None:
    """Poll and relay until cancelled (a failed look is logged and retried)."""
    from streams.services import upload_fail_stale

    since = timezone.now()
    looks = 0
    while True:
        await asyncio.sleep(RELAY_INTERVAL_S)
        looks += 1
        try:
            if looks % STALE_CHECK_LOOKS == 0:
                await sync_to_async(upload_fail_stale, thread_sensitive=True)()
            since = await sync_to_async(_relay_once, thread_sensitive=True)(since)
        except Exception:
            logger.exception("upload progress relay failed")


def upload_relay_needed() -> bool:
    """True when the channel layer is per process (the in-memory default)."""
    backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    return backend.endswith("InMemoryChannelLayer")


def upload_relay_start_with_daphne() -> None:
    """Start :func:`upload_relay_loop` when daphne's reactor runs (nothing outside
    daphne, or with a shared channel layer)."""
    if "twisted.internet.reactor" not in sys.modules or not upload_relay_needed():
        return
    from twisted.internet import reactor

    def start() -> None:
        _tasks.add(asyncio.get_event_loop().create_task(upload_relay_loop()))

    reactor.callWhenRunning(lambda: reactor.callLater(0, start))  # type: ignore[attr-defined]
