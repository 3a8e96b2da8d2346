"""Real daphne processes for tests, and a WebSocket client that talks to them.

Everything stays on loopback: daphne binds ``127.0.0.1`` on a free port, every
process gets ``ICE_HOST_ADDRESSES=127.0.0.1`` and ``ICE_SERVERS=[]``.

Use the fixtures (``daphne_factory``, ``loopback_ice``) from a test module by
binding them as module globals (an import would trip ruff F811)::

    from tests import live_server
    daphne_factory = live_server.daphne_factory
    loopback_ice = live_server.loopback_ice

    def test_x(daphne_factory, loopback_ice):
        server = daphne_factory("a")             # started and answering /health
        cookie = session_cookie(user)
        async with WsClient.connect(server.ws_url, cookie, origin=server.origin) as ws:
            await ws.expect("hello")

Subprocesses are always killed in the fixture's teardown (SIGTERM, then SIGKILL),
and their log tails are printed when the test failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/13"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def database_url(settings_dict: dict[str, Any] | None = None) -> str:
    """``DATABASE_URL`` of the database Django is connected to now (the test DB in tests)."""
    if settings_dict is None:
        from django.db import connection

        settings_dict = connection.settings_dict
    engine = settings_dict["ENGINE"]
    name = str(settings_dict["NAME"])
    if engine.endswith("sqlite3"):
        if name == ":memory:" or name.startswith("file:"):
            raise RuntimeError("an in-memory SQLite database cannot be shared with a subprocess")
        return f"sqlite:///{Path(name).resolve()}"
    if "postgresql" in engine:
        user = quote(settings_dict.get("USER") or "", safe="")
        password = quote(settings_dict.get("PASSWORD") or "", safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = settings_dict.get("HOST") or LOOPBACK
        port = settings_dict.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{quote(name, safe='')}"
    raise RuntimeError(f"no DATABASE_URL for engine {engine}")


def subprocess_env(
    *,
    media_root: Path,
    redis_url: str | None = None,
    db_url: str | None = None,
    secret_key: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a Hearth subprocess on the current (test) database.

    ``redis_url`` None means the in-memory channel layer (one process only).
    ``secret_key`` defaults to this process's ``settings.SECRET_KEY``: session
    cookies made here (:func:`session_cookie`) must verify over there.
    """
    if secret_key is None:
        from django.conf import settings

        secret_key = settings.SECRET_KEY
    env = dict(os.environ)
    for name in ("REDIS_URL", "DJANGO_SETTINGS_MODULE", "HEARTH_SQLITE_TEST_NAME"):
        env.pop(name, None)
    db_url = db_url or database_url()
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=db_url,
        MEDIA_ROOT=str(media_root),
        ICE_HOST_ADDRESSES=LOOPBACK,
        ICE_SERVERS="[]",
        SECRET_KEY=secret_key,
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        HEARTH_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        # As in-process tests (conftest): recordings stay WAV and are kept however
        # short; ``extra`` may turn either on.
        RECORDING_COMPRESS="0",
        MIN_RECORDING_S="0",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra or {})
    return env


def daphne_command() -> list[str]:
    """How to run daphne with this interpreter's environment."""
    script = Path(sys.executable).parent / "daphne"
    return [str(script)] if script.exists() else [sys.executable, "-m", "daphne"]


class DaphneProcess:
    """One ``daphne -b 127.0.0.1 -p PORT project.asgi:application`` subprocess.

    stdout and stderr go to ``log_path``. :meth:`stop` (or the context manager)
    always leaves the process dead: SIGTERM, then SIGKILL after ``timeout``.
    """

    def __init__(
        self, *, env: dict[str, str], log_path: Path, port: int | None = None, name: str = "daphne"
    ) -> None:
        self.env = env
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- addresses -------------------------------------------------------------
    @property
    def origin(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return self.origin

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}/ws/"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    # -- life cycle ------------------------------------------------------------
    def start(self, *, wait: bool = True, timeout: float = 60.0) -> DaphneProcess:
        """Start the process; with ``wait``, return once /health answers 200."""
        assert self.proc is None, "already started"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        cmd = [*daphne_command(), "-b", LOOPBACK, "-p", str(self.port), "project.asgi:application"]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal does not reach it
        )
        if wait:
            self.wait_healthy(timeout=timeout)
        return self

    def health(self, timeout: float = 3.0) -> tuple[int, dict[str, Any]]:
        """GET /health (no proxy, loopback only): (status, JSON body)."""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            conn.request("GET", "/health", headers={"Host": f"{LOOPBACK}:{self.port}"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        try:
            data = json.loads(body)
        except ValueError:
            data = {"raw": body[:200].decode(errors="replace")}
        return response.status, data

    def wait_healthy(self, *, timeout: float = 60.0) -> None:
        """Poll /health until 200; fail (with the log tail) on exit or timeout."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited with {self.returncode} before answering /health\n"
                    + self.log_tail()
                )
            try:
                status, data = self.health(timeout=2.0)
                if status == 200:
                    return
                last = (status, data)
            except OSError as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.name} did not answer /health with 200 in {timeout} s (last: {last!r})\n"
            + self.log_tail()
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the daphne process (not its group)."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the exit; returns the exit code or None."""
        assert self.proc is not None, "not started"
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait ``timeout`` s, then SIGKILL; idempotent. Returns the exit code."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                if self.wait(timeout) is None:
                    print(f"[{self.name}] did not exit {timeout} s after SIGTERM: SIGKILL")
                    self.proc.kill()
                    self.wait(10.0)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return self.proc.poll()

    def __enter__(self) -> DaphneProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- logs ------------------------------------------------------------------
    def log_text(self) -> str:
        """Everything the process wrote so far."""
        if self._log is not None:
            with contextlib.suppress(ValueError, OSError):
                self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log, framed with the process name."""
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"----- {self.name} log tail ({self.log_path}) -----\n{tail}\n-----"


class MediaWorkerProcess(DaphneProcess):
    """One ``manage.py mediaworker`` subprocess; ready once it logs "media worker ready".

    Shares :class:`DaphneProcess`'s life cycle (SIGTERM then SIGKILL in :meth:`stop`)
    and logs; it serves no HTTP, so ``port`` is unused. ``args`` are added to the
    command line (e.g. ``--metrics-port``).
    """

    args: tuple[str, ...] = ()

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> MediaWorkerProcess:
        """Start the worker; with ``wait``, return once it is ready."""
        assert self.proc is None, "already started"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "mediaworker", *self.args],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_healthy(timeout=timeout)
        return self

    def wait_healthy(self, *, timeout: float = 60.0) -> None:
        """Wait for the "media worker ready" line; fail (with the log) on exit or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited with {self.returncode} before it was ready\n"
                    + self.log_tail()
                )
            if "media worker ready" in self.log_text():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout} s\n" + self.log_tail())


# -- sessions and WebSockets ---------------------------------------------------
def session_cookie(user: Any) -> str:
    """A ``sessionid`` cookie value signed in as ``user`` (in the current database)."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class WsClient:
    """A Hearth page's WebSocket (JSON text frames) over ``websockets``.

    Frames of other types that arrive while :meth:`expect` waits are kept and
    searched first by later calls, so interleaved events are never lost.
    """

    def __init__(self, ws: Any, *, name: str = "ws") -> None:
        self.ws = ws
        self.name = name
        self.pending: deque[dict[str, Any]] = deque()
        self.received: list[dict[str, Any]] = []

    @classmethod
    async def open(
        cls, url: str, sessionid: str, *, origin: str, name: str = "ws", timeout: float = 10.0
    ) -> WsClient:
        """Connect with the session cookie and an allowed ``Origin``."""
        from websockets.asyncio.client import connect

        ws = await connect(
            url,
            additional_headers={"Cookie": f"sessionid={sessionid}", "Origin": origin},
            proxy=None,
            open_timeout=timeout,
            close_timeout=3,
            max_queue=1024,
            max_size=2**20,
        )
        return cls(ws, name=name)

    async def send_json(self, payload: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(payload))

    async def expect(
        self,
        kind: str,
        *,
        timeout: float = 10.0,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The next frame of type ``kind`` (and ``match``), buffered ones first.

        An ``error`` frame fails unless ``kind == "error"``.
        """
        for frame in list(self.pending):
            if frame["type"] == kind and (match is None or match(frame)):
                self.pending.remove(frame)
                return frame
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                types = [f.get("type") for f in self.received[-20:]]
                raise AssertionError(
                    f"[{self.name}] no {kind!r} frame within {timeout} s (last frames: {types})"
                )
            try:
                raw = await asyncio.wait_for(self.ws.recv(), remaining)
            except TimeoutError:
                continue
            frame = json.loads(raw)
            self.received.append(frame)
            if frame.get("type") == kind and (match is None or match(frame)):
                return frame
            if frame.get("type") == "error" and kind != "error":
                raise AssertionError(
                    f"[{self.name}] error frame while waiting for {kind!r}: {frame}"
                )
            self.pending.append(frame)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- fixtures ------------------------------------------------------------------
@pytest.fixture
def loopback_ice() -> Iterator[None]:
    """This test process's aiortc peers gather 127.0.0.1 host candidates only."""
    from streams.ice import ice_host_addresses_apply

    ice_host_addresses_apply([LOOPBACK])
    yield
    ice_host_addresses_apply([])


@pytest.fixture
def daphne_factory(
    transactional_db: None, tmp_path: Path, settings: Any, request: pytest.FixtureRequest
) -> Iterator[Callable[..., DaphneProcess]]:
    """Start daphne processes on the test database; all are stopped at teardown.

    ``daphne_factory(name, *, redis_url=None, extra_env=None, wait=True,
    mediaworker=False)`` (``mediaworker=True`` runs ``manage.py mediaworker``): the
    processes share ``settings.MEDIA_ROOT`` with the test (so ``Recording.file.path``
    resolves the same). Depends on ``transactional_db`` so rows the test commits are
    visible to them, and so they are gone before the database is flushed.
    """
    started: list[DaphneProcess] = []
    failed_before = request.session.testsfailed

    def start(
        name: str = "daphne",
        *,
        redis_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
        timeout: float = 60.0,
        mediaworker: bool = False,
        args: list[str] | None = None,
    ) -> DaphneProcess:
        env = subprocess_env(
            media_root=Path(settings.MEDIA_ROOT), redis_url=redis_url, extra=extra_env
        )
        kind = MediaWorkerProcess if mediaworker else DaphneProcess
        server = kind(env=env, log_path=tmp_path / f"{name}.log", name=name)
        if isinstance(server, MediaWorkerProcess):
            server.args = tuple(args or ())
        started.append(server)
        server.start(wait=wait, timeout=timeout)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop(timeout=10.0)
        if request.session.testsfailed > failed_before or os.environ.get("HEARTH_SHOW_LOGS"):
            for server in started:
                print("\n" + server.log_tail(80))
