"""``manage.py mediaworker``: a media worker process (the media tier of Hearth).

Holds the peer connections, media graphs and recordings of the broadcasts placed on
it; web processes (daphne, with ``MEDIA_IN_PROCESS=0``) carry no media. Run any
number, on any machine that shares the database, Redis (``REDIS_URL``) and
``MEDIA_ROOT`` with the web tier. SIGTERM/SIGINT stop every broadcast here
(recordings finalised) and remove the worker's row before exiting.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from streams.rtc import SHUTDOWN_TIMEOUT_S, MediaServer, media_server_install


class Command(BaseCommand):
    """``mediaworker [--capacity N] [--metrics-port P [--metrics-addr A]]``: run until
    SIGTERM/SIGINT, then finalise."""

    help = "Run a media worker: take go-lives and listens placed on it over the channel layer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--capacity",
            type=int,
            default=None,
            help="broadcasts this worker takes (default HEARTH['MEDIA_WORKER_CAPACITY'])",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="serve this worker's Prometheus metrics on this port (no token: bind privately)",
        )
        parser.add_argument(
            "--metrics-addr",
            default="127.0.0.1",
            help="address for --metrics-port (default 127.0.0.1)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if isinstance(get_channel_layer(), InMemoryChannelLayer):
            raise CommandError(
                "A separate media worker needs a shared channel layer: set REDIS_URL "
                "(with the in-memory layer, daphne runs its own worker)."
            )
        capacity = options["capacity"]
        if capacity is not None and capacity < 1:
            raise CommandError("--capacity must be at least 1.")
        if options["metrics_port"] is not None:
            from project.metrics import metrics_serve

            metrics_serve(options["metrics_port"], addr=options["metrics_addr"])
        asyncio.run(self._run(capacity))

    async def _run(self, capacity: int | None) -> None:
        server = MediaServer(worker=True)
        if capacity is not None:
            server.capacity = capacity
        media_server_install(server)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        channel = await server.ensure_started()
        self.stdout.write(
            f"media worker ready on {channel} (capacity {server.capacity}, "
            f"database {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]})"
        )
        self.stdout.flush()
        await stop.wait()
        self.stdout.write("media worker stopping: finalising broadcasts")
        try:
            await asyncio.wait_for(server.shutdown(), timeout=SHUTDOWN_TIMEOUT_S)
        except TimeoutError:
            self.stderr.write(f"shutdown took over {SHUTDOWN_TIMEOUT_S:.0f} s; exiting anyway")
