"""Operational endpoints."""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse


def _database_ok() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


async def health(request: HttpRequest) -> JsonResponse:
    """GET /health → 200 ``{"status": "ok", "database": {...}, "channel_layer": {...}}``.

    The database is checked with ``SELECT 1``; the channel layer with a message sent
    to and received from a fresh channel (a real round trip through Redis when
    ``REDIS_URL`` is set). Any failure answers 503 with the error text.
    """
    report: dict[str, object] = {}
    healthy = True
    started = time.perf_counter()
    try:
        vendor = await sync_to_async(_database_ok)()
        report["database"] = {"status": "ok", "vendor": vendor}
    except Exception as exc:
        healthy = False
        report["database"] = {"status": "error", "error": str(exc)[:200]}
    layer = get_channel_layer()
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "health.ping"})
        message = await asyncio.wait_for(layer.receive(channel), timeout=2.0)
        if message.get("type") != "health.ping":
            raise RuntimeError("channel layer returned a different message")
        report["channel_layer"] = {"status": "ok", "backend": type(layer).__name__}
    except Exception as exc:
        healthy = False
        report["channel_layer"] = {"status": "error", "error": str(exc)[:200] or type(exc).__name__}
    report["status"] = "ok" if healthy else "error"
    report["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return JsonResponse(report, status=200 if healthy else 503)
