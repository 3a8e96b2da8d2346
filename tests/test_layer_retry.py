"""Channel-layer sends survive a Redis restart (found by bench/soak.py).

channels_redis keeps its pooled connections to the old Redis server after a restart;
each fails once when next used. Before ``users.events.layer_call``, a media worker's
replies (``_reply``) and events sent over such a connection were lost silently.
A private ``redis-server`` on a free loopback port is restarted by the test.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from channels_redis.core import RedisChannelLayer

from streams import rtc
from tests.live_server import free_port

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


class _Redis:
    """A throwaway redis-server on 127.0.0.1 (no persistence) that can be restarted."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[_Redis]:
    server = _Redis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_worker_replies_are_not_lost_after_a_redis_restart(redis_server, monkeypatch) -> None:
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{redis_server.port}/0"], capacity=500)
    monkeypatch.setattr(rtc, "get_channel_layer", lambda: layer)
    pages = [await layer.new_channel() for _ in range(20)]
    # Grow the connection pool: 20 operations at once each take a connection.
    await asyncio.gather(*(layer.group_add(f"session.{i}", page) for i, page in enumerate(pages)))
    await asyncio.to_thread(redis_server.restart)

    server = rtc.MediaServer.__new__(rtc.MediaServer)  # _reply uses nothing of its state
    await asyncio.gather(
        *(
            server._reply(page, {"type": "rtc.listen.answer", "n": i})
            for i, page in enumerate(pages)
        )
    )
    got = [await asyncio.wait_for(layer.receive(page), 5) for page in pages]
    assert [message["n"] for message in got] == list(range(20))
    await layer.flush()
