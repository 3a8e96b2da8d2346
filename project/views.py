"""Operational endpoints."""

from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger("hearth.health")


def _media_workers_alive() -> int:
    from streams.selectors import media_workers_alive

    return media_workers_alive()


def _database_ok() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


async def health(request: HttpRequest) -> JsonResponse:
    """GET /health → 200 ``{"status": "ok", "database": {...}, "channel_layer": {...},
    "media_workers": N}``.

    ``media_workers`` counts the media workers that stamped themselves within
    ``WORKER_STALE_S`` (informational: a web tier may be up before its workers).

    The database is checked with ``SELECT 1``; the channel layer with a message sent
    to and received from a fresh channel (a real round trip through Redis when
    ``REDIS_URL`` is set). Any failure answers 503 with ``{"status": "error"}`` for the
    failing part; the endpoint is unauthenticated, so the exception (which may name
    hosts, users or databases) goes to the ``hearth.health`` log, not the response.
    """
    report: dict[str, object] = {}
    healthy = True
    started = time.perf_counter()
    try:
        vendor = await sync_to_async(_database_ok)()
        report["database"] = {"status": "ok", "vendor": vendor}
        report["media_workers"] = await sync_to_async(_media_workers_alive)()
    except Exception:
        healthy = False
        logger.exception("Health check: database failed")
        report["database"] = {"status": "error"}
    layer = get_channel_layer()
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "health.ping"})
        message = await asyncio.wait_for(layer.receive(channel), timeout=2.0)
        if message.get("type") != "health.ping":
            raise RuntimeError("channel layer returned a different message")
        report["channel_layer"] = {"status": "ok", "backend": type(layer).__name__}
    except Exception:
        healthy = False
        logger.exception("Health check: channel layer failed")
        report["channel_layer"] = {"status": "error"}
    report["status"] = "ok" if healthy else "error"
    report["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return JsonResponse(report, status=200 if healthy else 503)
