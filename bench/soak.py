"""Soak: broadcasters and listeners come and go for minutes against 2 daphnes and 2
media workers, while one worker is killed (and replaced) and Redis is restarted.

Usage::

    .venv/bin/python bench/soak.py [--duration 300] [--broadcasters 2] [--listeners 4]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/hearth_soak .venv/bin/python bench/soak.py

What it starts (all on 127.0.0.1, everything stopped at the end whatever happens):

* its own ``redis-server`` on a free port (no persistence), so that restarting it
  disturbs nothing else;
* a database of its own: with ``DATABASE_URL`` (PostgreSQL) a throwaway database
  ``hearth_soak_<pid>`` on that server (``createdb``, dropped with ``dropdb --force``
  at the end), else a SQLite file in a temporary folder; migrated with
  ``manage.py migrate``; users, friendships and session cookies are made with the
  ORM in this process. ``MEDIA_ROOT`` is in the temporary folder;
* 2 daphnes with ``MEDIA_IN_PROCESS=0`` and 2 ``manage.py mediaworker`` processes
  (``MEDIA_WORKER_CAPACITY=--capacity``, ``WORKER_STALE_S=--worker-stale-s``), all
  with ``REDIS_URL`` on the private Redis and ``ICE_HOST_ADDRESSES=127.0.0.1``. The
  bench's own aiortc peers gather loopback candidates only
  (``streams.ice.ice_host_addresses_apply``).

Phases:

1. Calibration (offline, in this process): the broadcast signal is white noise
   (Gaussian, RMS 0.1 = -20 dBFS, a 10 s loop made with a fixed seed). Its RMS is the
   raw level; the same samples go through the live path's chain
   (``audio_chain_build(denoise=True)``, DeepFilterNet3, in 20 ms blocks) and every
   1 s window of the output is measured.
2. Warm-up and live control: ``2 * capacity`` go-lives (at most 4; they spread over
   both workers): one with ``denoise: false`` (the control, whose listeners get the
   raw signal through the server's pass-through chain) and the rest denoised; one
   listener each on the control and on the first denoised broadcast for 8 s. Then
   everything stops; once no session is live and 10 s have passed, every process's
   fds, threads and RSS are sampled (psutil): the baseline of steady state.
3. Churn, ``--duration`` seconds: ``--broadcasters`` slots each open a page (a
   WebSocket on one daphne, alternating), go live (denoised, white noise) for a
   random 10-30 s, stop, close the page, pause 0.5-2 s, and again; ``--listeners``
   slots each pick a live broadcast (the least listened to, at least 6 s left), open
   a page (alternating daphnes), listen for a random 5-15 s, stop, close. Users come
   from pools twice the slot counts (each listener is a friend of every broadcaster).
   At 1/3 of the duration the worker holding the most live sessions is killed with
   SIGKILL and a replacement worker is started 3 s later; at 2/3 Redis is stopped
   (SIGTERM) and started again on the same port. A page whose WebSocket drops
   reconnects (within 30 s, backing off 0.25-2 s, counted); a broadcaster page whose
   broadcast was cut goes live again if it has at least 5 s left, a listener page
   listens again if the session is still live. At the end of the duration every page
   stops what it does; then the bench waits until no session is live, settles 10 s
   and samples the processes again.
4. Checks, with the servers still up: sessions by end reason (stuck = still live),
   every ``Recording`` row's file, log lines, then SIGTERM to every process.

Figures (and the hard requirements: the exit status is 1 if one fails):

* sessions started/ended, by end reason (database); go-live and listen attempts,
  answered, refused by error code (client); broadcasts the server ended (by reason,
  as the page saw ``session.ended``); WebSocket drops, reconnects and reconnect
  times. **Stuck sessions** (still live after the drain) must be 0; every session on
  the killed worker must end as ``worker_lost``.
* signaling latency: ``broadcast.start`` sent → ``broadcast.answer`` received, and
  ``listen.start`` → ``listen.answer`` (the offer is made before the clock starts;
  the frame's arrival is stamped by the socket's reader task); p50/p95/max.
* recordings: every row at the end must be **playable**: ``ended_at`` set; the file
  exists and its size equals ``size_bytes``; a RIFF/WAVE header whose RIFF size is
  the file size - 8, a PCM ``fmt`` chunk (1 channel, 16 bit, 48 kHz) and a ``data``
  chunk whose size is the rest of the file; ``wave`` reads every frame to the end;
  duration > 0 and equal to ``duration_s`` (±1 ms). Must be 100%. Sessions that
  ended without a recording (nothing was recorded: the server drops empty ones) are
  counted, not failed.
* leaks: fds, threads and RSS of each process at the baseline and at the end (both
  idle), and the maximum while running. The replacement worker's baseline is its
  first sample idle (no session on its ``MediaWorker`` row) after it had held one,
  else its first sample after start. Flagged (a failure) when the end exceeds the
  baseline by more than ``FD_TOLERANCE`` fds, ``THREAD_TOLERANCE`` threads, or
  ``max(RSS_TOLERANCE_MIB, RSS_TOLERANCE_PCT of baseline)`` of RSS. Client connections
  to Redis and PostgreSQL are printed apart and not counted: their pools grow to the
  peak of concurrent commands and keep those connections (a plateau, not a leak; the
  series over the run shows which). fds are sorted by kind and threads by name so a
  flag says what grew. Also counted from the logs: ERROR/Traceback lines, and daphne's
  "took too long to shut down and was killed" (a page's consumer that never ended).
* **raw-audio exposure**, defined as: a 1 s window (50 consecutive decoded 20 ms
  frames) of a listener of a *denoised* broadcast whose RMS is within
  ``EXPOSURE_MARGIN_DB`` (10 dB) of the raw signal's RMS (-20 dBFS), i.e. at or above
  -30 dBFS, is one exposed second; likewise for every whole 1 s window of a denoised
  session's recording. Must be 0. The margin is 10 dB, not 6, because the raw noise
  reaches a listener about 4.5 dB quieter after two Opus codecs (the control below
  measures it: -24.5 dBFS); a 6 dB margin would leave 1.5 dB. Why this is sound,
  checked in every run: DeepFilterNet3 removes stationary white noise almost entirely
  (offline, every processed window lies 35-50 dB under the raw level, and live about
  55 dB; the run fails if any offline window lies less than ``SOUNDNESS_GAP_DB`` under
  the threshold), while raw audio stays near the raw level (every raw window is at or
  above the threshold offline; live, the control broadcast's listener, which receives
  the raw noise through the server's pass-through chain and both Opus codecs, must
  have at least ``CONTROL_CAUGHT_MIN`` of its windows flagged). The fail-closed output
  (silence) is never flagged. Limits: raw audio leaking for less than about a third of
  a second within a 1 s window is not caught (-24.5 dBFS + 10 log10(0.3) = -30); the
  loudest 20 ms frame heard is printed for that.

Context is printed too: the bench's own CPU, the servers', and the rest of the
machine's (other programs share these cores, e.g. a test suite).
Every loop is bounded in count and time; the whole run is capped at
``--duration + RUN_SLACK_S``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import wave
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import numpy as np
from numpy.typing import NDArray

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import psutil  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402
from av import AudioFrame  # noqa: E402

from bench._common import in_temp_workdir  # noqa: E402
from streams.audio import samples_to_frame  # noqa: E402
from tests.live_server import (  # noqa: E402
    LOOPBACK,
    DaphneProcess,
    MediaWorkerProcess,
    WsClient,
    free_port,
    subprocess_env,
)

T = TypeVar("T")

SR = 48_000
FRAME = 960
FPS = SR // FRAME
WINDOW_FRAMES = FPS  # 1 s exposure windows
NOISE_RMS = 0.1  # white noise, -20 dBFS
NOISE_LOOP_S = 10
NOISE_SEED = 573577
CALIBRATION_S = 12
EXPOSURE_MARGIN_DB = 10.0
SOUNDNESS_GAP_DB = 10.0
CONTROL_CAUGHT_MIN = 0.8
SILENCE_FLOOR = 1e-12  # mean square floor for dB figures (-120 dBFS)

BROADCAST_HOLD_S = (10.0, 30.0)
LISTEN_HOLD_S = (5.0, 15.0)
MIN_BROADCAST_LEFT_S = 5.0  # a cut broadcaster page goes live again only with this left
MIN_LISTEN_LEFT_S = 6.0  # a listener picks broadcasts with at least this left
KILL_AT = 1 / 3
REDIS_RESTART_AT = 2 / 3
REPLACE_DELAY_S = 3.0
WARMUP_LISTEN_S = 8.0
SETTLE_S = 10.0
SAMPLE_EVERY_S = 5.0

GO_LIVE_WAIT_S = 30.0  # BROADCAST_REPLY_TIMEOUT_S (15 s) + margin
LISTEN_WAIT_S = 15.0
STOP_WAIT_S = 30.0
TRACK_WAIT_S = 10.0
HELLO_WAIT_S = 5.0
RECONNECT_WINDOW_S = 30.0
PAGE_SLACK_S = 150.0  # over a page's planned life before it is abandoned
DRAIN_S = 120.0
SESSIONS_END_SLACK_S = 60.0  # over WORKER_STALE_S, for every session to end
PROCESS_START_S = 90.0
RUN_SLACK_S = 600.0

MAX_OPEN_TRIES = 60
MAX_FRAMES_PER_SOCKET = 200_000
MAX_FRAMES_PER_WAIT = 100_000
MAX_SINK_FRAMES = 50 * 120
MAX_PAGES_PER_SLOT = 1_000
MAX_GO_LIVES_PER_PAGE = 3
MAX_LISTENS_PER_PAGE = 3
MAX_PICK_TRIES = 20
MAX_SAMPLES = 10_000

FD_TOLERANCE = 8
POOLED_KINDS = ("redis", "postgres")
THREAD_TOLERANCE = 4
RSS_TOLERANCE_MIB = 48.0
RSS_TOLERANCE_PCT = 20.0

MiB = 1024 * 1024

_DB = ThreadPoolExecutor(1, thread_name_prefix="soak-db")
"""Every ORM call of this process runs on this one thread (one connection to close)."""


def db_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the ORM thread and wait for it (from synchronous code)."""
    return _DB.submit(functools.partial(fn, *args, **kwargs)).result()


async def in_db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the ORM thread without blocking the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_DB, functools.partial(fn, *args, **kwargs))


def dbfs(mean_square: float) -> float:
    """A mean square (full scale 1.0) in dBFS, floored at -120."""
    return 10 * math.log10(max(mean_square, SILENCE_FLOOR))


def quantile_ms(values: list[float], q: float) -> float:
    """Quantile ``q`` (0..1) of seconds, in ms; NaN when empty."""
    return float(np.quantile(values, q) * 1000) if values else float("nan")


# ==============================================================================
# Infrastructure: Redis, the database, the processes
# ==============================================================================
class PrivateRedis:
    """``redis-server`` on 127.0.0.1 and a free port, without persistence, for this run.

    :meth:`restart` stops it (SIGTERM) and starts it again on the same port: every
    channel-layer group, queued message and rate-limit counter is gone.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """The ``REDIS_URL`` of this server (database 0)."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The running server's pid (None when stopped)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def ping(self) -> bool:
        """True if the server answers ``PING`` within 1 s."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, wait_s: float = 15.0) -> None:
        """Start the server and wait until it answers (RuntimeError after ``wait_s``)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    LOOPBACK,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {wait_s} s")

    def stop(self, wait_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``wait_s``; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart(self) -> float:
        """Stop and start again on the same port; returns the downtime in seconds."""
        started = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - started


@dataclass
class Database:
    """The run's database: a throwaway PostgreSQL database, or a SQLite file.

    Attributes:
        url: Its ``DATABASE_URL``.
        pg_name: The PostgreSQL database created for the run (None for SQLite).
        pg_args: ``-h/-p/-U`` arguments of ``createdb``/``dropdb``.
        pg_env: Environment for them (``PGPASSWORD`` when the URL has a password).
    """

    url: str
    pg_name: str | None = None
    pg_args: list[str] = field(default_factory=list)
    pg_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, base_url: str | None, workdir: Path) -> Database:
        """Create ``hearth_soak_<pid>`` on ``base_url``'s server, or a SQLite file.

        Raises:
            ValueError: ``base_url`` is not a PostgreSQL URL.
            subprocess.CalledProcessError: ``createdb`` failed.
        """
        if not base_url:
            return cls(url=f"sqlite:///{workdir / 'soak.sqlite3'}")
        parts = urlsplit(base_url)
        if parts.scheme not in ("postgres", "postgresql", "pgsql"):
            raise ValueError(f"DATABASE_URL must be PostgreSQL for this bench, not {parts.scheme}")
        name = f"hearth_soak_{os.getpid()}"
        args = ["-h", parts.hostname or LOOPBACK, "-p", str(parts.port or 5432)]
        if parts.username:
            args += ["-U", unquote(parts.username)]
        env = dict(os.environ)
        if parts.password:
            env["PGPASSWORD"] = unquote(parts.password)
        subprocess.run(["createdb", *args, name], env=env, check=True, timeout=60)
        url = parts._replace(path=f"/{name}").geturl()
        return cls(url=url, pg_name=name, pg_args=args, pg_env=env)

    def drop(self) -> None:
        """Drop the PostgreSQL database (``--force`` ends leftover connections)."""
        if self.pg_name is None:
            return
        subprocess.run(
            ["dropdb", "--force", "--if-exists", *self.pg_args, self.pg_name],
            env=self.pg_env,
            check=False,
            timeout=60,
        )

    @property
    def engine(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return "postgresql" if self.pg_name else "sqlite"


def django_setup(db_url: str, media: Path, secret_key: str) -> None:
    """Point this process's Django at the run's database and ``MEDIA_ROOT``; migrate it."""
    os.environ.pop("REDIS_URL", None)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=db_url,
        MEDIA_ROOT=str(media),
        SECRET_KEY=secret_key,
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        ICE_HOST_ADDRESSES=LOOPBACK,
        ICE_SERVERS="[]",
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        check=True,
        timeout=300,
    )
    import django

    django.setup()


@dataclass
class Account:
    """A user of the run: username, id and a signed-in ``sessionid`` cookie."""

    name: str
    user_id: int
    cookie: str


def accounts_make(broadcasters: int, listeners: int) -> tuple[list[Account], list[Account]]:
    """Make broadcaster and listener users; every listener befriends every broadcaster.

    Runs on the ORM thread (see :func:`db_call`).
    """
    from tests.live_server import session_cookie
    from users.models import Friendship, User

    def make(name: str) -> tuple[Any, Account]:
        user = User.objects.create_user(name, password="soak-pass-123")
        return user, Account(name=name, user_id=user.id, cookie=session_cookie(user))

    made_b = [make(f"soak-b{i}") for i in range(broadcasters)]
    made_l = [make(f"soak-l{i}") for i in range(listeners)]
    for b, _ in made_b:
        for listener, _ in made_l:
            low, high = sorted((b, listener), key=lambda u: u.id)
            Friendship.objects.create(user_low=low, user_high=high)
    return [a for _, a in made_b], [a for _, a in made_l]


class AccountPool:
    """Accounts handed out least recently used first (a user is on one page at a time)."""

    def __init__(self, accounts: list[Account]) -> None:
        self._free: deque[Account] = deque(accounts)

    def take(self) -> Account | None:
        """The least recently used free account (None if all are taken)."""
        return self._free.popleft() if self._free else None

    def give_back(self, account: Account) -> None:
        """Return an account to the end of the queue."""
        self._free.append(account)


@dataclass
class ProcSample:
    """One psutil sample of a process: when (monotonic s), fds, threads, RSS (bytes),
    and, for a media worker, the sessions its ``MediaWorker`` row counts (else -1).

    ``fd_kinds`` sorts the fds (``redis``/``postgres`` TCP connections, ``udp`` sockets
    such as ICE transports, ``unix``, other TCP by state, pipes, eventfd/epoll, files)
    and ``thread_names`` counts threads by their kernel name, to tell what grew.
    """

    t: float
    fds: int
    threads: int
    rss: int
    sessions: int = -1
    fd_kinds: Counter[str] = field(default_factory=Counter)
    thread_names: Counter[str] = field(default_factory=Counter)


def fd_kinds(proc: psutil.Process, fds: int, redis_port: int) -> Counter[str]:
    """``proc``'s fds by kind (see :class:`ProcSample`)."""
    kinds: Counter[str] = Counter()
    sockets = 0
    for conn in proc.net_connections(kind="all"):
        sockets += 1
        if conn.family == socket.AF_UNIX:
            kinds["unix"] += 1
        elif conn.type == socket.SOCK_DGRAM:
            kinds["udp"] += 1
        elif conn.raddr and conn.raddr.port == redis_port:
            kinds[f"redis {conn.status.lower()}"] += 1
        elif conn.raddr and conn.raddr.port == 5432:
            kinds["postgres"] += 1
        else:
            kinds[f"tcp {conn.status.lower()}"] += 1
    kinds.update(non_socket_fds(proc.pid, sockets))
    del fds  # the kinds add up to the count taken just before
    return kinds


def non_socket_fds(pid: int, sockets_seen: int) -> Counter[str]:
    """``pid``'s fds that are not the ``sockets_seen`` inet/unix sockets, by kind: pipes,
    eventfd/epoll, other sockets (netlink...), files by suffix."""
    kinds: Counter[str] = Counter()
    sockets = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:"):
                sockets += 1
            elif target.startswith("pipe:"):
                kinds["pipe"] += 1
            elif target.startswith("anon_inode:"):
                kinds[target.removeprefix("anon_inode:").strip("[]")] += 1
            elif target.startswith("/dev/"):
                kinds[target] += 1
            else:
                kinds[f"file *{Path(target).suffix or '/' + Path(target).parent.name}"] += 1
    if sockets > sockets_seen:
        kinds["other socket"] = sockets - sockets_seen
    return kinds


def pooled_fds(sample: ProcSample) -> int:
    """Client connections to Redis and PostgreSQL in ``sample`` (their pools grow to
    the peak number of concurrent commands and keep them)."""
    return sum(n for kind, n in sample.fd_kinds.items() if kind.startswith(POOLED_KINDS))


def unpooled_fds(sample: ProcSample) -> int:
    """Every other fd of ``sample`` (what the leak check counts)."""
    return sample.fds - pooled_fds(sample)


def thread_names(pid: int) -> Counter[str]:
    """Threads of ``pid`` by kernel name (``/proc/PID/task/*/comm``)."""
    names: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                names[(task / "comm").read_text().strip()] += 1
    return names


def proc_sample(pid: int, sessions: int = -1, *, redis_port: int = 0) -> ProcSample | None:
    """Sample ``pid`` (None if it is gone)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            fds = proc.num_fds()
            return ProcSample(
                t=time.monotonic(),
                fds=fds,
                threads=proc.num_threads(),
                rss=proc.memory_info().rss,
                sessions=sessions,
                fd_kinds=fd_kinds(proc, fds, redis_port),
                thread_names=thread_names(pid),
            )
    except psutil.Error:
        return None


def counter_diff(before: Counter[str], after: Counter[str]) -> str:
    """``redis +2, udp -1`` for the keys that changed, or ``=``."""
    keys = sorted(set(before) | set(after))
    parts = [f"{k} {after[k] - before[k]:+d}" for k in keys if after[k] != before[k]]
    return ", ".join(parts) or "="


@dataclass
class Watched:
    """A server process of the run, its samples and its fate.

    Attributes:
        name: ``web-a``, ``worker-1``, ...
        proc: The process wrapper (``tests.live_server``).
        role: ``web``, ``worker`` or ``replacement``.
        baseline: The steady-state start sample (see the module docstring).
        end: The last sample, idle, after the drain.
        killed: True for the worker this bench killed.
    """

    name: str
    proc: DaphneProcess
    role: str
    samples: list[ProcSample] = field(default_factory=list)
    baseline: ProcSample | None = None
    end: ProcSample | None = None
    killed: bool = False
    exit_code: int | None = None

    def max_of(self, attr: str) -> int:
        """Largest ``attr`` over the samples (0 without samples)."""
        return max((getattr(s, attr) for s in self.samples), default=0)

    def series(self, start: float, points: int = 8) -> str:
        """fds (of them pooled connections)/threads/RSS MiB at ``points`` evenly spaced
        samples since ``start`` (monotonic s), e.g. ``0 s 17(2)/3/129, 60 s 21(5)/3/130``."""
        picked = [s for s in self.samples if s.t >= start]
        if not picked:
            return "n/a"
        step = max(1, (len(picked) - 1) // max(1, points - 1))
        chosen = picked[::step]
        if chosen[-1] is not picked[-1]:
            chosen.append(picked[-1])
        return ", ".join(
            f"{s.t - start:.0f} s {s.fds}({pooled_fds(s)})/{s.threads}/{s.rss / MiB:.0f}"
            for s in chosen
        )

    def replacement_baseline(self) -> ProcSample | None:
        """First idle sample after the worker held a session, else its first sample."""
        held = False
        for sample in self.samples:
            if sample.sessions > 0:
                held = True
            elif held and sample.sessions == 0:
                return sample
        return self.samples[0] if self.samples else None

    def leaks(self) -> list[str]:
        """What grew past the tolerances between ``baseline`` and ``end``."""
        if self.baseline is None or self.end is None:
            return []
        found = []
        b, e = self.baseline, self.end
        if unpooled_fds(e) - unpooled_fds(b) > FD_TOLERANCE:
            found.append(f"fds other than pooled connections {unpooled_fds(b)}→{unpooled_fds(e)}")
        if e.threads - b.threads > THREAD_TOLERANCE:
            found.append(f"threads {b.threads}→{e.threads}")
        limit = max(RSS_TOLERANCE_MIB * MiB, b.rss * RSS_TOLERANCE_PCT / 100)
        if e.rss - b.rss > limit:
            found.append(f"RSS {b.rss / MiB:.0f}→{e.rss / MiB:.0f} MiB")
        return found


# ==============================================================================
# Client side: tracks, sinks, pages
# ==============================================================================
def white_noise(seconds: float, seed: int = NOISE_SEED) -> NDArray[np.float32]:
    """Gaussian white noise of RMS ``NOISE_RMS`` (float32 mono at 48 kHz)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0.0, NOISE_RMS, int(seconds * SR)), -1, 1).astype(np.float32)


class NoiseTrack(MediaStreamTrack):
    """Audio track looping ``noise`` at real time (20 ms s16 mono frames) from a random
    offset."""

    kind = "audio"

    def __init__(self, noise: NDArray[np.float32], rng: random.Random) -> None:
        super().__init__()
        self.noise = noise
        self._offset = rng.randrange(len(noise) // FRAME) * FRAME
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> AudioFrame:
        """Next frame, paced at real time."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += FRAME
            delay = self._start + self._pts / SR - now
            if delay > 0:
                await asyncio.sleep(delay)
        at = (self._offset + self._pts) % len(self.noise)
        return samples_to_frame(self.noise[at : at + FRAME], pts=self._pts, sample_rate=SR)


class LevelSink:
    """Consumes a received audio track, keeping each decoded frame's mean square
    (full scale 1.0; all channels, which carry the same mono signal)."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.energies: list[float] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(MediaStreamError):
            for _ in range(MAX_SINK_FRAMES):
                frame = await self.track.recv()
                samples = frame.to_ndarray().astype(np.float64)
                scale = 32768.0 if frame.format.name.startswith("s16") else 1.0
                self.energies.append(float(np.mean(samples**2)) / scale**2)

    async def stop(self) -> None:
        """Stop consuming."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


def window_levels(energies: list[float]) -> list[float]:
    """dBFS of each whole 1 s window (``WINDOW_FRAMES`` frames) of frame mean squares."""
    whole = len(energies) // WINDOW_FRAMES * WINDOW_FRAMES
    if not whole:
        return []
    blocks = np.asarray(energies[:whole]).reshape(-1, WINDOW_FRAMES).mean(axis=1)
    return [dbfs(float(x)) for x in blocks]


def client_peer() -> RTCPeerConnection:
    """A browser-like aiortc peer with no ICE servers (loopback host candidates only)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def offer_sdp(pc: RTCPeerConnection) -> str:
    """Create and set the local offer (aiortc gathers every candidate first)."""
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def pc_close(pc: RTCPeerConnection) -> None:
    """Close a peer connection, giving up after 5 s."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pc.close(), 5)


@dataclass
class Figures:
    """Counters of the client side (pages, signaling, listening)."""

    go_live_attempts: int = 0
    go_live_answered: int = 0
    go_live_refused: Counter[str] = field(default_factory=Counter)
    listen_attempts: int = 0
    listen_answered: int = 0
    listen_refused: Counter[str] = field(default_factory=Counter)
    broadcast_latency_s: list[float] = field(default_factory=list)
    listen_latency_s: list[float] = field(default_factory=list)
    stops_sent: int = 0
    stops_confirmed: int = 0
    stops_with_recording: int = 0
    stop_failures: Counter[str] = field(default_factory=Counter)
    ended_by_server: Counter[str] = field(default_factory=Counter)
    broadcasts_cut_by_drop: int = 0
    listens_ended: Counter[str] = field(default_factory=Counter)
    listen_errors_after_answer: Counter[str] = field(default_factory=Counter)
    listens_cut_by_drop: int = 0
    listens_no_track: int = 0
    listens_idle: int = 0
    listens_with_frames: int = 0
    listens_without_frames: int = 0
    frames_heard: int = 0
    stray_errors: Counter[str] = field(default_factory=Counter)
    pages_opened: int = 0
    pages_not_opened: int = 0
    page_timeouts: Counter[str] = field(default_factory=Counter)
    client_exceptions: Counter[str] = field(default_factory=Counter)
    ws_connects: int = 0
    ws_connect_failures: Counter[str] = field(default_factory=Counter)
    ws_drops: int = 0
    ws_drop_codes: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    reconnect_failures: int = 0
    reconnect_s: list[float] = field(default_factory=list)
    windows: int = 0
    exposed_windows: int = 0
    max_window_dbfs: float = -120.0
    max_frame_dbfs: float = -120.0
    window_levels: list[float] = field(default_factory=list)
    session_ids: set[int] = field(default_factory=set)


class Page:
    """One signed-in page's WebSocket on one daphne; it reconnects when dropped.

    A reader task puts every frame in ``inbox`` stamped with its arrival (``"_t"``,
    monotonic seconds); a socket that drops puts ``{"type": "_dropped"}`` there.
    :meth:`reconnect` opens a new socket (with a fresh inbox) within
    ``RECONNECT_WINDOW_S``, as a browser page's script would.
    """

    def __init__(self, server: DaphneProcess, account: Account, figures: Figures) -> None:
        self.server = server
        self.account = account
        self.figures = figures
        self.name = f"{account.name}@{server.name}"
        self.ws: Any = None
        self.live_ws: Any = None  # the socket that got its hello
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closing = False
        self._reader: asyncio.Task[None] | None = None

    async def open(self, window_s: float = RECONNECT_WINDOW_S) -> bool:
        """Connect and wait for ``hello``, retrying (0.25-2 s apart) for ``window_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window_s
        backoff = 0.25
        for _ in range(MAX_OPEN_TRIES):
            if self.closing:
                return False
            self.figures.ws_connects += 1
            try:
                client = await WsClient.open(
                    self.server.ws_url,
                    self.account.cookie,
                    origin=self.server.origin,
                    name=self.name,
                    timeout=5.0,
                )
            except Exception as exc:
                self.figures.ws_connect_failures[type(exc).__name__] += 1
            else:
                inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
                self.ws, self.inbox = client.ws, inbox
                self._reader = asyncio.ensure_future(self._read(client.ws, inbox))
                frame = await self.wait(lambda f: f["type"] == "hello", HELLO_WAIT_S)
                if frame is not None and frame["type"] == "hello":
                    self.live_ws = client.ws
                    return True
                self.figures.ws_connect_failures["no hello"] += 1
                await self._drop_socket()
            if loop.time() + backoff >= deadline:
                return False
            await asyncio.sleep(backoff)
            backoff = min(2.0, backoff * 2)
        return False

    async def _read(self, ws: Any, inbox: asyncio.Queue[dict[str, Any]]) -> None:
        with contextlib.suppress(Exception):
            for _ in range(MAX_FRAMES_PER_SOCKET):
                frame = json.loads(await ws.recv())
                frame["_t"] = time.monotonic()
                inbox.put_nowait(frame)
        if self.closing:
            return
        if ws is self.live_ws:
            self.live_ws = None
            self.figures.ws_drops += 1
            self.figures.ws_drop_codes[str(ws.close_code)] += 1
        inbox.put_nowait({"type": "_dropped", "_t": time.monotonic()})

    async def wait(
        self, match: Callable[[dict[str, Any]], bool], wait_s: float
    ) -> dict[str, Any] | None:
        """The next frame that ``match``es, or a ``_dropped`` frame; None after ``wait_s``.

        Other frames are dropped (error frames among them are counted as stray).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        for _ in range(MAX_FRAMES_PER_WAIT):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                frame = await asyncio.wait_for(self.inbox.get(), remaining)
            except TimeoutError:
                return None
            if frame["type"] == "_dropped" or match(frame):
                return frame
            if frame["type"] == "error":
                self.figures.stray_errors[f"{frame.get('ref')}:{frame.get('code')}"] += 1
        return None

    async def send(self, payload: dict[str, Any]) -> bool:
        """Send one JSON frame; False if the socket is gone."""
        if self.ws is None:
            return False
        try:
            await self.ws.send(json.dumps(payload))
        except Exception:
            return False
        return True

    async def reconnect(self) -> bool:
        """Open a new socket after a drop (counted, timed)."""
        started = time.monotonic()
        await self._drop_socket()
        ok = await self.open()
        if ok:
            self.figures.reconnects += 1
            self.figures.reconnect_s.append(time.monotonic() - started)
        else:
            self.figures.reconnect_failures += 1
        return ok

    async def _drop_socket(self) -> None:
        ws, self.ws, self.live_ws = self.ws, None, None
        reader, self._reader = self._reader, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def close(self) -> None:
        """Close the page for good (no reconnect)."""
        self.closing = True
        await self._drop_socket()


@dataclass
class Deadline:
    """A page's planned end (monotonic seconds); the warm-up moves it."""

    at: float

    def left(self) -> float:
        """Seconds left (negative when past)."""
        return self.at - time.monotonic()


@dataclass
class LiveInfo:
    """A broadcast the bench's broadcasters hold: its session, planned end (monotonic),
    whether it is denoised, when it was answered, and its listeners now."""

    session_id: int
    ends_at: float
    denoise: bool
    started: float
    listeners: int = 0


@dataclass
class Outcome:
    """The result of one request: ``answered``, ``refused``, ``timeout`` or ``dropped``."""

    kind: str
    frame: dict[str, Any] | None = None
    latency_s: float = 0.0

    @property
    def code(self) -> str:
        """The error code (refused) or the kind."""
        if self.kind == "refused" and self.frame is not None:
            return str(self.frame.get("code"))
        return self.kind


async def request(
    page: Page,
    payload: dict[str, Any],
    *,
    answer: str,
    ref: str,
    session_id: int | None = None,
    wait_s: float,
) -> Outcome:
    """Send ``payload``; wait for the ``answer`` frame (for ``session_id``), an error
    frame whose ``ref`` is ``ref``, or a drop. The latency runs from just before the
    send to the answer's arrival stamp."""
    started = time.monotonic()
    if not await page.send(payload):
        return Outcome("dropped")

    def match(frame: dict[str, Any]) -> bool:
        if frame["type"] == answer:
            return session_id is None or frame.get("session_id") == session_id
        return frame["type"] == "error" and frame.get("ref") == ref

    frame = await page.wait(match, wait_s)
    if frame is None:
        return Outcome("timeout")
    if frame["type"] == "_dropped":
        return Outcome("dropped", frame)
    if frame["type"] == "error":
        return Outcome("refused", frame)
    return Outcome("answered", frame, frame["_t"] - started)


# ==============================================================================
# Exposure calibration
# ==============================================================================
@dataclass
class Calibration:
    """The exposure threshold and the offline evidence that it separates raw from
    processed audio (dBFS figures of 1 s windows)."""

    raw_level_dbfs: float
    raw_windows_dbfs: list[float]
    processed_windows_dbfs: list[float]

    @property
    def threshold_dbfs(self) -> float:
        """A 1 s window at or above this level is an exposed second."""
        return self.raw_level_dbfs - EXPOSURE_MARGIN_DB

    @property
    def problems(self) -> list[str]:
        """Why the definition would be unsound on this material (empty: sound)."""
        found = []
        if min(self.raw_windows_dbfs) < self.threshold_dbfs:
            found.append("a raw window lies under the threshold (raw audio would be missed)")
        if max(self.processed_windows_dbfs) > self.threshold_dbfs - SOUNDNESS_GAP_DB:
            found.append(
                f"a processed window lies less than {SOUNDNESS_GAP_DB:g} dB under the threshold"
            )
        return found


def calibrate(noise: NDArray[np.float32]) -> Calibration:
    """Measure the raw signal and its DeepFilterNet3 output (the live path's chain)."""
    from streams.processors.factory import audio_chain_build

    signal_ = np.resize(noise, CALIBRATION_S * SR).astype(np.float32)
    chain = audio_chain_build(denoise=True)
    try:
        out = np.concatenate(
            [chain.process(signal_[i : i + FRAME]) for i in range(0, len(signal_), FRAME)]
        )
    finally:
        chain.close()

    def windows(x: NDArray[np.float32]) -> list[float]:
        n = len(x) // SR
        blocks = x[: n * SR].astype(np.float64).reshape(n, SR)
        return [dbfs(float(v)) for v in np.mean(blocks**2, axis=1)]

    return Calibration(
        raw_level_dbfs=dbfs(float(np.mean(signal_.astype(np.float64) ** 2))),
        raw_windows_dbfs=windows(signal_),
        processed_windows_dbfs=windows(out),
    )


# ==============================================================================
# Checks on the database and the files
# ==============================================================================
@dataclass
class RecordingReport:
    """The recordings at the end: how many, how many playable, what was wrong."""

    total: int = 0
    playable: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    denoised_windows: int = 0
    exposed_windows: int = 0
    max_window_dbfs: float = -120.0


def wav_check(path: Path, *, size_bytes: int, duration_s: float) -> tuple[list[str], bytes]:
    """Problems with a recording's WAV file (empty: playable) and its PCM data.

    Checks the RIFF/WAVE header chunk by chunk, that ``wave`` reads every frame to
    the end, and the row's ``size_bytes`` and ``duration_s`` against the file.
    """
    problems: list[str] = []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [f"unreadable ({exc})"], b""
    if len(raw) != size_bytes:
        problems.append(f"file is {len(raw)} B, row says {size_bytes}")
    if len(raw) < 44 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return [*problems, "no RIFF/WAVE header"], b""
    if struct.unpack_from("<I", raw, 4)[0] != len(raw) - 8:
        problems.append("RIFF size is not the file size - 8")
    pos, fmt_ok, data_size, data_at = 12, False, -1, -1
    for _ in range(64):
        if pos + 8 > len(raw):
            break
        chunk, size = raw[pos : pos + 4], struct.unpack_from("<I", raw, pos + 4)[0]
        if chunk == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", raw, pos + 8)
            fmt_ok = (tag, channels, rate, bits) == (1, 1, SR, 16)
        if chunk == b"data":
            data_size, data_at = size, pos + 8
            break
        pos += 8 + size + (size & 1)
    if not fmt_ok:
        problems.append("fmt chunk is not PCM mono 16-bit 48 kHz")
    if data_at < 0:
        return [*problems, "no data chunk"], b""
    if data_size != len(raw) - data_at:
        problems.append(f"data size {data_size} is not the rest of the file ({len(raw) - data_at})")
    try:
        with wave.open(str(path), "rb") as handle:
            frames = handle.getnframes()
            read = 0
            for _ in range(frames // SR + 2):
                chunk_bytes = handle.readframes(SR)
                if not chunk_bytes:
                    break
                read += len(chunk_bytes) // 2
    except (wave.Error, EOFError, OSError) as exc:
        return [*problems, f"wave cannot read it ({exc})"], b""
    if read != frames:
        problems.append(f"read {read} of {frames} frames")
    if frames <= 0:
        problems.append("no audio (0 frames)")
    if abs(frames / SR - duration_s) > 0.001:
        problems.append(f"duration {frames / SR:.3f} s, row says {duration_s:.3f} s")
    return problems, raw[data_at : data_at + data_size]


def recordings_check(threshold_dbfs: float) -> RecordingReport:
    """Check every ``Recording`` row's file (ORM thread); exposure of denoised ones."""
    from streams.models import Recording
    from streams.services import recording_path

    report = RecordingReport()
    for rec in Recording.objects.select_related("session").order_by("id"):
        report.total += 1
        problems, pcm = wav_check(
            recording_path(rec), size_bytes=rec.size_bytes, duration_s=rec.duration_s
        )
        if rec.ended_at is None:
            problems.append("not finalised (ended_at is null)")
        if problems:
            reason = rec.session.end_reason if rec.session else "?"
            report.problems.append(
                f"recording {rec.id} (session {rec.session_id}, {reason}): " + "; ".join(problems)
            )
            continue
        report.playable += 1
        report.seconds += rec.duration_s
        if rec.session is not None and rec.session.denoise and pcm:
            samples = np.frombuffer(pcm, dtype="<i2")
            n = len(samples) // SR
            if n:
                blocks = samples[: n * SR].astype(np.float64).reshape(n, SR) / 32768.0
                levels = [dbfs(float(v)) for v in np.mean(blocks**2, axis=1)]
                report.denoised_windows += n
                report.exposed_windows += sum(1 for v in levels if v >= threshold_dbfs)
                report.max_window_dbfs = max(report.max_window_dbfs, *levels)
    return report


@dataclass
class SessionReport:
    """The live sessions at the end (database)."""

    started: int = 0
    ended: Counter[str] = field(default_factory=Counter)
    stuck: list[str] = field(default_factory=list)
    without_recording: Counter[str] = field(default_factory=Counter)
    killed: dict[int, tuple[str, float]] = field(default_factory=dict)


def sessions_report(killed_ids: list[int], killed_at_wall: float) -> SessionReport:
    """Sessions by end reason, the stuck ones, and the killed worker's (ORM thread)."""
    from streams.models import LiveSession, Recording

    report = SessionReport()
    with_recording = set(Recording.objects.values_list("session_id", flat=True))
    for session in LiveSession.objects.order_by("id"):
        report.started += 1
        if session.ended_at is None:
            report.stuck.append(f"session {session.id} on {session.owner_channel}")
            continue
        report.ended[session.end_reason] += 1
        if session.id not in with_recording:
            report.without_recording[session.end_reason] += 1
        if session.id in killed_ids:
            report.killed[session.id] = (
                session.end_reason,
                session.ended_at.timestamp() - killed_at_wall,
            )
    for session_id in killed_ids:
        report.killed.setdefault(session_id, ("still live", float("nan")))
    return report


def live_sessions() -> list[tuple[int, str]]:
    """(id, owner channel) of every live session (ORM thread)."""
    from streams.models import LiveSession

    return list(
        LiveSession.objects.filter(ended_at__isnull=True).values_list("id", "owner_channel")
    )


def worker_rows() -> list[tuple[int, str, int]]:
    """(pid, channel, sessions) of every ``MediaWorker`` row (ORM thread)."""
    from streams.models import MediaWorker

    return list(MediaWorker.objects.values_list("pid", "channel_name", "sessions"))


def db_close() -> None:
    """Close this thread's database connection (ORM thread)."""
    from django.db import connections

    connections.close_all()


SESSION_END_LINE = re.compile(r"session \d+ ended \([^)]*\): (\d+) blocks in, (\d+) silenced")


def blocks_failed_closed(text: str) -> tuple[int, int]:
    """(blocks in, blocks silenced) summed over a worker log's "session N ended" lines."""
    total = silenced = 0
    for match in SESSION_END_LINE.finditer(text):
        total += int(match.group(1))
        silenced += int(match.group(2))
    return total, silenced


LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")


def log_problems(text: str, limit: int = 8) -> tuple[int, list[str]]:
    """Count ERROR/CRITICAL/Traceback lines; the first ``limit`` distinct ones (no time)."""
    lines = [line for line in text.splitlines() if LOG_PROBLEM.search(line)]
    distinct: list[str] = []
    for line in lines:
        key = re.sub(r"^\S+ \S+ ", "", line)[:200]
        key = re.sub(r"\d+", "N", key)
        if key not in distinct:
            distinct.append(key)
    return len(lines), distinct[:limit]


# ==============================================================================
# The soak
# ==============================================================================
@dataclass
class Options:
    """Command-line options (seconds and counts)."""

    duration_s: float
    broadcasters: int
    listeners: int
    capacity: int
    worker_stale_s: float
    seed: int
    kill: bool = True
    redis_restart: bool = True


class Soak:
    """The cluster, the clients and the fault injection of one run."""

    def __init__(
        self,
        opts: Options,
        workdir: Path,
        database: Database,
        redis: PrivateRedis,
        accounts: tuple[list[Account], list[Account]],
        calibration: Calibration,
        noise: NDArray[np.float32],
    ) -> None:
        self.opts = opts
        self.workdir = workdir
        self.database = database
        self.redis = redis
        broadcasters, listeners = accounts
        self.control_b = broadcasters[: self.warmup_count]
        self.control_l = listeners[:2]
        self.b_pool = AccountPool(broadcasters[self.warmup_count :])
        self.l_pool = AccountPool(listeners[2:])
        self.calibration = calibration
        self.noise = noise
        self.fig = Figures()
        self.warm_fig = Figures()
        self.live: dict[int, LiveInfo] = {}
        self.watched: list[Watched] = []
        self.daphnes: list[DaphneProcess] = []
        self.churn_start = 0.0
        self.churn_end = math.inf
        self.killed_name = ""
        self.killed_ids: list[int] = []
        self.killed_at_wall = 0.0
        self.replacement_ready_s = float("nan")
        self.redis_downtime_s = float("nan")
        self.events: list[str] = []
        self.control_windows: list[float] = []
        self.warm_denoised_windows: list[float] = []
        self.warmup_ids: set[int] = set()
        self.died: list[str] = []
        self.stuck_after_drain = 0
        self._sampling = False

    @property
    def warmup_count(self) -> int:
        """Warm-up go-lives: ``2 * capacity``, at most 4, at least 2."""
        return max(2, min(4, 2 * self.opts.capacity))

    def note(self, text: str) -> None:
        """Print and keep a timeline event (seconds since the churn started)."""
        at = time.monotonic() - self.churn_start if self.churn_start else 0.0
        line = f"[{at:6.1f} s] {text}"
        self.events.append(line)
        print(line, flush=True)

    # -- processes ---------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Environment of every server process."""
        return subprocess_env(
            media_root=self.workdir / "media",
            redis_url=self.redis.url,
            db_url=self.database.url,
            secret_key=os.environ["SECRET_KEY"],
            extra={
                "MEDIA_IN_PROCESS": "0",
                "MEDIA_WORKER_CAPACITY": str(self.opts.capacity),
                "WORKER_STALE_S": f"{self.opts.worker_stale_s:g}",
            },
        )

    def process_new(self, name: str, role: str) -> Watched:
        """A server process wrapper (not started), watched from now on."""
        kind = DaphneProcess if role == "web" else MediaWorkerProcess
        proc = kind(env=self.env(), log_path=self.workdir / f"{name}.log", name=name)
        watched = Watched(name=name, proc=proc, role=role)
        self.watched.append(watched)
        return watched

    async def cluster_start(self) -> None:
        """Start 2 daphnes and 2 media workers and wait until all are ready."""
        web = [self.process_new(n, "web") for n in ("web-a", "web-b")]
        workers = [self.process_new(n, "worker") for n in ("worker-1", "worker-2")]
        for w in [*web, *workers]:
            w.proc.start(wait=False)
        for w in [*web, *workers]:
            await asyncio.to_thread(w.proc.wait_healthy, timeout=PROCESS_START_S)
        self.daphnes = [w.proc for w in web]

    def cluster_stop(self) -> None:
        """SIGTERM every process (SIGKILL after 15 s); keep the exit codes."""
        for w in self.watched:
            if w.proc.proc is not None:
                code = w.proc.stop(timeout=15.0)
                if not w.killed:
                    w.exit_code = code

    async def sample_all(self) -> None:
        """One psutil sample of every running server process (with worker loads)."""
        rows = {pid: sessions for pid, _, sessions in await in_db(worker_rows)}
        for w in self.watched:
            if w.proc.running and len(w.samples) < MAX_SAMPLES:
                sample = proc_sample(
                    w.proc.pid, rows.get(w.proc.pid, -1), redis_port=self.redis.port
                )
                if sample is not None:
                    w.samples.append(sample)

    async def sampler(self) -> None:
        """Sample every ``SAMPLE_EVERY_S`` while ``_sampling``."""
        for _ in range(MAX_SAMPLES):
            if not self._sampling:
                return
            try:
                await self.sample_all()
            except Exception as exc:
                self.note(f"sampling failed: {exc!r}")
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def quiesce(self) -> int:
        """Wait until no session is live (bounded), then ``SETTLE_S``; returns the
        sessions still live."""
        deadline = time.monotonic() + self.opts.worker_stale_s + SESSIONS_END_SLACK_S
        live: list[tuple[int, str]] = []
        while time.monotonic() < deadline:
            live = await in_db(live_sessions)
            if not live:
                break
            await asyncio.sleep(1.0)
        await asyncio.sleep(SETTLE_S)
        return len(live)

    # -- faults ------------------------------------------------------------------
    async def sleep_until(self, at: float) -> None:
        """Sleep until monotonic time ``at``."""
        await asyncio.sleep(max(0.0, at - time.monotonic()))

    async def kill_worker(self) -> None:
        """SIGKILL the worker holding the most live sessions; start a replacement."""
        rows = await in_db(worker_rows)
        live = await in_db(live_sessions)
        per_channel = Counter(channel for _, channel in live)
        candidates = [
            (per_channel[channel], w)
            for pid, channel, _ in rows
            for w in self.watched
            if w.role != "web" and w.proc.running and w.proc.pid == pid
        ]
        if not candidates:
            self.note("no worker to kill")
            return
        _, victim = max(candidates, key=lambda c: c[0])
        channel = next(ch for pid, ch, _ in rows if pid == victim.proc.pid)
        self.killed_ids = [sid for sid, ch in live if ch == channel]
        self.killed_at_wall = time.time()
        victim.killed = True
        self.killed_name = victim.name
        victim.end = proc_sample(victim.proc.pid, redis_port=self.redis.port)
        victim.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.proc.wait, 10)
        self.note(f"SIGKILL {victim.name} holding sessions {self.killed_ids}")
        await asyncio.sleep(REPLACE_DELAY_S)
        replacement = self.process_new("worker-3", "replacement")
        started = time.monotonic()
        replacement.proc.start(wait=False)
        await asyncio.to_thread(replacement.proc.wait_healthy, timeout=PROCESS_START_S)
        self.replacement_ready_s = time.monotonic() - started
        self.note(
            f"replacement worker-3 (pid {replacement.proc.pid}) ready in "
            f"{self.replacement_ready_s:.1f} s"
        )

    async def restart_redis(self) -> None:
        """Stop Redis (SIGTERM) and start it again on the same port."""
        self.note("Redis: SIGTERM, then start again")
        self.redis_downtime_s = await asyncio.to_thread(self.redis.restart)
        self.note(f"Redis back after {self.redis_downtime_s:.2f} s")

    async def faults(self) -> None:
        """The worker kill at ``KILL_AT`` and the Redis restart at ``REDIS_RESTART_AT``."""
        d = self.opts.duration_s
        await self.sleep_until(self.churn_start + d * KILL_AT)
        if self.opts.kill:
            await self.kill_worker()
        await self.sleep_until(self.churn_start + d * REDIS_RESTART_AT)
        if self.opts.redis_restart:
            await self.restart_redis()

    # -- broadcasters ------------------------------------------------------------
    async def broadcast_once(
        self, page: Page, deadline: Deadline, rng: random.Random, *, denoise: bool, fig: Figures
    ) -> str:
        """Go live on ``page`` until ``deadline``; returns how it ended: ``stopped``,
        ``ended`` (by the server), ``dropped``/``lost`` (socket), ``refused``, ``timeout``."""
        pc = client_peer()
        track = NoiseTrack(self.noise, rng)
        session_id: int | None = None
        try:
            pc.addTransceiver(track, direction="sendonly")
            sdp = await offer_sdp(pc)
            fig.go_live_attempts += 1
            got = await request(
                page,
                {"type": "broadcast.start", "sdp": sdp, "denoise": denoise},
                answer="broadcast.answer",
                ref="broadcast.start",
                wait_s=GO_LIVE_WAIT_S,
            )
            if got.kind != "answered" or got.frame is None:
                fig.go_live_refused[got.code] += 1
                if got.kind == "dropped":
                    return "dropped" if await page.reconnect() else "lost"
                return got.kind
            fig.go_live_answered += 1
            fig.broadcast_latency_s.append(got.latency_s)
            session_id = int(got.frame["session_id"])
            fig.session_ids.add(session_id)
            await pc.setRemoteDescription(RTCSessionDescription(got.frame["sdp"], "answer"))
            self.live[session_id] = LiveInfo(session_id, deadline.at, denoise, time.monotonic())
            for _ in range(MAX_FRAMES_PER_WAIT):
                left = deadline.left()
                if left <= 0:
                    break
                frame = await page.wait(
                    lambda f: f["type"] == "session.ended" and f.get("session_id") == session_id,
                    min(left, 1.0),
                )
                if frame is None:
                    continue
                self.live.pop(session_id, None)
                if frame["type"] == "_dropped":
                    fig.broadcasts_cut_by_drop += 1
                    return "dropped" if await page.reconnect() else "lost"
                fig.ended_by_server[str(frame.get("reason"))] += 1
                return "ended"
            self.live.pop(session_id, None)
            fig.stops_sent += 1
            got = await request(
                page,
                {"type": "broadcast.stop"},
                answer="broadcast.ended",
                ref="broadcast.stop",
                session_id=session_id,
                wait_s=STOP_WAIT_S,
            )
            if got.kind == "answered" and got.frame is not None:
                fig.stops_confirmed += 1
                fig.stops_with_recording += bool(got.frame.get("recording_id"))
            else:
                fig.stop_failures[got.code] += 1
            return "stopped"
        finally:
            if session_id is not None:
                self.live.pop(session_id, None)
            track.stop()
            await pc_close(pc)

    async def broadcast_page(
        self, account: Account, server: DaphneProcess, hold_s: float, rng: random.Random
    ) -> None:
        """A broadcaster's page: open it, go live for ``hold_s`` (again after a cut), close."""
        page = Page(server, account, self.fig)
        try:
            if not await page.open():
                self.fig.pages_not_opened += 1
                return
            self.fig.pages_opened += 1
            deadline = Deadline(min(time.monotonic() + hold_s, self.churn_end))
            for _ in range(MAX_GO_LIVES_PER_PAGE):
                if deadline.left() < MIN_BROADCAST_LEFT_S:
                    break
                outcome = await self.broadcast_once(page, deadline, rng, denoise=True, fig=self.fig)
                if outcome in ("stopped", "lost"):
                    break
                await asyncio.sleep(1.0)
        finally:
            await page.close()

    async def broadcaster_slot(self, slot: int) -> None:
        """Broadcast page after broadcast page until the churn ends."""
        await self._churn_slot(
            slot,
            kind="broadcast",
            pool=self.b_pool,
            page=self.broadcast_page,
            seed=self.opts.seed * 1000 + slot,
            start_s=slot * 3.0,
            min_left_s=MIN_BROADCAST_LEFT_S,
            hold_s=BROADCAST_HOLD_S,
            pause_s=(0.5, 2.0),
        )

    async def _churn_slot(
        self,
        slot: int,
        *,
        kind: str,
        pool: AccountPool,
        page: Callable[..., Awaitable[None]],
        seed: int,
        start_s: float,
        min_left_s: float,
        hold_s: tuple[float, float],
        pause_s: tuple[float, float],
    ) -> None:
        """One churn slot: after ``start_s``, open ``page`` with an account from
        ``pool`` on the daphnes in turn, each held a random ``hold_s`` (bounded by
        ``PAGE_SLACK_S`` more), a random ``pause_s`` apart, until less than
        ``min_left_s`` of the churn is left (at most ``MAX_PAGES_PER_SLOT`` pages).
        Timeouts and exceptions are counted under ``kind``."""
        rng = random.Random(seed)
        await asyncio.sleep(start_s)
        for n in range(MAX_PAGES_PER_SLOT):
            if time.monotonic() >= self.churn_end - min_left_s:
                return
            account = pool.take()
            if account is None:
                await asyncio.sleep(1.0)
                continue
            server = self.daphnes[(slot + n) % len(self.daphnes)]
            hold = rng.uniform(*hold_s)
            try:
                await asyncio.wait_for(page(account, server, hold, rng), hold + PAGE_SLACK_S)
            except TimeoutError:
                self.fig.page_timeouts[kind] += 1
            except Exception as exc:
                self.fig.client_exceptions[f"{kind}: {type(exc).__name__}: {exc}"[:120]] += 1
            finally:
                pool.give_back(account)
            await asyncio.sleep(rng.uniform(*pause_s))

    # -- listeners ---------------------------------------------------------------
    async def pick_session(self, rng: random.Random) -> LiveInfo | None:
        """A live denoised broadcast with ``MIN_LISTEN_LEFT_S`` left, least listened first."""
        for _ in range(MAX_PICK_TRIES):
            now = time.monotonic()
            if now >= self.churn_end - MIN_LISTEN_LEFT_S:
                return None
            options = [
                info
                for info in self.live.values()
                if info.denoise
                and info.ends_at - now >= MIN_LISTEN_LEFT_S
                and now - info.started >= 1
            ]
            if options:
                fewest = min(info.listeners for info in options)
                return rng.choice([info for info in options if info.listeners == fewest])
            await asyncio.sleep(0.5)
        return None

    def account_listen(self, sink: LevelSink, *, denoise: bool, fig: Figures) -> list[float]:
        """Count a finished listen's frames and exposed windows; returns its window levels."""
        energies = sink.energies
        if energies:
            fig.listens_with_frames += 1
            fig.frames_heard += len(energies)
        else:
            fig.listens_without_frames += 1
        levels = window_levels(energies)
        if denoise:
            fig.windows += len(levels)
            exposed = sum(1 for v in levels if v >= self.calibration.threshold_dbfs)
            fig.exposed_windows += exposed
            fig.window_levels += levels
            if levels:
                fig.max_window_dbfs = max(fig.max_window_dbfs, *levels)
            if energies:
                fig.max_frame_dbfs = max(fig.max_frame_dbfs, dbfs(max(energies)))
        return levels

    async def listen_once(
        self, page: Page, info: LiveInfo, listen_end: float, fig: Figures
    ) -> tuple[str, list[float]]:
        """Listen to ``info``'s session on ``page`` until ``listen_end``; returns how it
        ended (``done``, ``ended``, ``error``, ``dropped``/``lost``, ``refused``,
        ``timeout``, ``no_track``) and the listen's 1 s window levels."""
        pc = client_peer()
        sink: LevelSink | None = None
        session_id = info.session_id
        counted = False
        try:
            pc.addTransceiver("audio", direction="recvonly")
            got_track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
            pc.on("track", lambda track: got_track.done() or got_track.set_result(track))
            sdp = await offer_sdp(pc)
            fig.listen_attempts += 1
            got = await request(
                page,
                {"type": "listen.start", "session_id": session_id, "sdp": sdp},
                answer="listen.answer",
                ref="listen.start",
                session_id=session_id,
                wait_s=LISTEN_WAIT_S,
            )
            if got.kind != "answered" or got.frame is None:
                fig.listen_refused[got.code] += 1
                if got.kind == "dropped":
                    return ("dropped" if await page.reconnect() else "lost"), []
                return got.kind, []
            fig.listen_answered += 1
            fig.listen_latency_s.append(got.latency_s)
            await pc.setRemoteDescription(RTCSessionDescription(got.frame["sdp"], "answer"))
            try:
                track = await asyncio.wait_for(got_track, TRACK_WAIT_S)
            except TimeoutError:
                fig.listens_no_track += 1
                return "no_track", []
            sink = LevelSink(track)
            info.listeners += 1
            counted = True
            result = "done"
            for _ in range(MAX_FRAMES_PER_WAIT):
                left = listen_end - time.monotonic()
                if left <= 0:
                    break
                frame = await page.wait(
                    lambda f: (
                        (f["type"] == "session.ended" and f.get("session_id") == session_id)
                        or (f["type"] == "error" and f.get("ref") == "listen.start")
                    ),
                    left,
                )
                if frame is None:
                    break
                if frame["type"] == "_dropped":
                    fig.listens_cut_by_drop += 1
                    result = "dropped" if await page.reconnect() else "lost"
                elif frame["type"] == "session.ended":
                    fig.listens_ended[str(frame.get("reason"))] += 1
                    result = "ended"
                else:
                    fig.listen_errors_after_answer[str(frame.get("code"))] += 1
                    result = "error"
                break
            if result == "done":
                await page.send({"type": "listen.stop", "session_id": session_id})
            return result, []
        finally:
            levels: list[float] = []
            if sink is not None:
                await sink.stop()
                levels = self.account_listen(sink, denoise=info.denoise, fig=fig)
            if counted:
                info.listeners -= 1
            await pc_close(pc)
            if fig is self.warm_fig:
                (self.control_windows if not info.denoise else self.warm_denoised_windows).extend(
                    levels
                )

    async def listen_page(
        self, account: Account, server: DaphneProcess, hold_s: float, rng: random.Random
    ) -> None:
        """A listener's page: pick a broadcast, open, listen ``hold_s`` (again after a
        drop while it is live), close."""
        info = await self.pick_session(rng)
        if info is None:
            self.fig.listens_idle += 1
            return
        page = Page(server, account, self.fig)
        try:
            if not await page.open():
                self.fig.pages_not_opened += 1
                return
            self.fig.pages_opened += 1
            listen_end = min(time.monotonic() + hold_s, self.churn_end)
            for _ in range(MAX_LISTENS_PER_PAGE):
                if listen_end - time.monotonic() < 1.0 or info.session_id not in self.live:
                    break
                outcome, _ = await self.listen_once(page, info, listen_end, self.fig)
                if outcome in ("done", "ended", "error", "lost"):
                    break
                await asyncio.sleep(0.5)
        finally:
            await page.close()

    async def listener_slot(self, slot: int) -> None:
        """Listen page after listen page until the churn ends."""
        await self._churn_slot(
            slot,
            kind="listen",
            pool=self.l_pool,
            page=self.listen_page,
            seed=self.opts.seed * 1000 + 500 + slot,
            start_s=2.0 + slot * 1.5,
            min_left_s=MIN_LISTEN_LEFT_S,
            hold_s=LISTEN_HOLD_S,
            pause_s=(0.3, 1.5),
        )

    # -- warm-up and live control ------------------------------------------------
    async def warmup(self) -> None:
        """Go live ``warmup_count`` times (first raw, the rest denoised) over both
        workers; listen to the raw one and the first denoised one for
        ``WARMUP_LISTEN_S``; stop everything."""
        fig = self.warm_fig
        rng = random.Random(self.opts.seed)
        deadline = Deadline(math.inf)  # until the listens are done
        broadcasts = []
        for i, account in enumerate(self.control_b):
            page = Page(self.daphnes[i % 2], account, fig)
            if not await page.open():
                raise RuntimeError(f"warm-up page {page.name} did not open")
            task = asyncio.ensure_future(
                self.broadcast_once(page, deadline, rng, denoise=i > 0, fig=fig)
            )
            broadcasts.append((page, task))
            for _ in range(100):  # next go-live once this one is answered (placement order)
                if len(self.live) > i or task.done():
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        sessions = sorted(self.live.values(), key=lambda info: info.session_id)
        self.warmup_ids = {info.session_id for info in sessions}
        listens = []
        for i, info in enumerate(sessions[:2]):
            page = Page(self.daphnes[(i + 1) % 2], self.control_l[i], fig)
            if not await page.open():
                raise RuntimeError(f"warm-up page {page.name} did not open")
            listen_end = time.monotonic() + WARMUP_LISTEN_S
            listens.append((page, self.listen_once(page, info, listen_end, fig)))
        await asyncio.gather(*(coro for _, coro in listens), return_exceptions=True)
        deadline.at = time.monotonic()
        await asyncio.gather(*(task for _, task in broadcasts), return_exceptions=True)
        for page, _ in [*listens, *broadcasts]:
            await page.close()

    # -- the run -----------------------------------------------------------------
    async def run(self) -> None:
        """Warm up, take the baseline, churn with faults, drain, take the end samples."""
        await self.cluster_start()
        self.note(f"cluster up: {', '.join(f'{w.name} pid {w.proc.pid}' for w in self.watched)}")
        await self.warmup()
        left = await self.quiesce()
        if left:
            self.note(f"{left} warm-up session(s) still live after the wait")
        await self.sample_all()
        for w in self.watched:
            w.baseline = w.samples[-1] if w.samples else None
        self.churn_start = time.monotonic()
        self.churn_end = self.churn_start + self.opts.duration_s
        self.note(f"churn starts: {self.opts.duration_s:g} s")
        self._sampling = True
        sampler = asyncio.ensure_future(self.sampler())
        faults = asyncio.ensure_future(self.faults())
        slots = [
            asyncio.ensure_future(self.broadcaster_slot(i)) for i in range(self.opts.broadcasters)
        ]
        slots += [asyncio.ensure_future(self.listener_slot(i)) for i in range(self.opts.listeners)]
        try:
            _, pending = await asyncio.wait(slots, timeout=self.opts.duration_s + DRAIN_S)
            if pending:
                self.note(f"{len(pending)} client slot(s) did not finish in time; cancelled")
        finally:
            for task in [*slots, faults]:
                task.cancel()
            await asyncio.gather(*slots, faults, return_exceptions=True)
        self.note("churn over; waiting for every session to end")
        self.stuck_after_drain = await self.quiesce()
        self._sampling = False
        await sampler
        await self.sample_all()
        for w in self.watched:
            if w.killed:
                continue
            w.end = w.samples[-1] if w.samples else None
            if w.role == "replacement":
                w.baseline = w.replacement_baseline()
            if not w.proc.running:
                self.died.append(f"{w.name} exited with {w.proc.returncode}")
        self.note("end samples taken")
        dump = {
            w.name: [
                {"t": s.t - self.churn_start, "fds": s.fds, "threads": s.threads, "rss": s.rss}
                | {"sessions": s.sessions, "fd_kinds": dict(s.fd_kinds)}
                for s in w.samples
            ]
            for w in self.watched
        }
        (self.workdir / "samples.json").write_text(json.dumps(dump))


# ==============================================================================
# Report
# ==============================================================================
def counter_text(counter: Counter[str]) -> str:
    """``a 3, b 1`` (most common first), or ``none``."""
    return ", ".join(f"{k} {v}" for k, v in counter.most_common()) or "none"


def latency_text(values: list[float]) -> str:
    """``p50 / p95 / max`` in ms with the count."""
    if not values:
        return "n/a"
    return (
        f"p50 {quantile_ms(values, 0.5):.0f} ms, p95 {quantile_ms(values, 0.95):.0f} ms, "
        f"max {max(values) * 1000:.0f} ms (n={len(values)})"
    )


@dataclass
class Verdict:
    """The hard requirements that failed (empty: passed)."""

    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, text: str) -> None:
        """Record ``text`` as a failure unless ``ok``."""
        if not ok:
            self.failures.append(text)


def report(
    soak: Soak, sessions: SessionReport, recordings: RecordingReport, cpu: dict[str, float]
) -> Verdict:
    """Print every figure; returns the verdict on the hard requirements."""
    fig, cal, verdict = soak.fig, soak.calibration, Verdict()
    print()
    print("=" * 78)
    print(
        f"Soak: {soak.opts.duration_s:g} s churn, {soak.opts.broadcasters} broadcasters / "
        f"{soak.opts.listeners} listeners at most, worker capacity {soak.opts.capacity}, "
        f"WORKER_STALE_S {soak.opts.worker_stale_s:g}, database {soak.database.engine}, "
        f"{os.cpu_count()} CPUs"
    )
    print("=" * 78)
    print("\nTimeline:")
    for line in soak.events:
        print(f"  {line}")

    print("\nRaw-audio exposure definition (offline calibration, 1 s windows):")
    print(
        f"  raw white noise {cal.raw_level_dbfs:.1f} dBFS (windows {min(cal.raw_windows_dbfs):.1f}"
        f"..{max(cal.raw_windows_dbfs):.1f}); threshold {cal.threshold_dbfs:.1f} dBFS; "
        f"DeepFilterNet3 output windows {min(cal.processed_windows_dbfs):.1f}"
        f"..{max(cal.processed_windows_dbfs):.1f} dBFS"
    )
    verdict.check(not cal.problems, "exposure definition unsound: " + "; ".join(cal.problems))
    caught = sum(1 for v in soak.control_windows if v >= cal.threshold_dbfs)
    ctrl = len(soak.control_windows)
    print(
        f"  live control (denoise off, raw through the server): {caught}/{ctrl} windows flagged"
        + (
            f", levels {min(soak.control_windows):.1f}..{max(soak.control_windows):.1f} dBFS "
            f"(median {np.median(soak.control_windows) - cal.threshold_dbfs:+.1f} dB over the "
            "threshold)"
            if ctrl
            else ""
        )
    )
    verdict.check(
        ctrl > 0 and caught >= CONTROL_CAUGHT_MIN * ctrl,
        f"the live control's raw audio was not caught ({caught}/{ctrl} windows)",
    )
    warm = soak.warm_denoised_windows
    warm_flagged = sum(1 for v in warm if v >= cal.threshold_dbfs)
    print(
        f"  warm-up denoised listen: {warm_flagged}/{len(warm)} windows flagged"
        + (f", levels {min(warm):.1f}..{max(warm):.1f} dBFS" if warm else "")
    )

    print("\nSessions (database, warm-up included):")
    print(f"  started {sessions.started} (warm-up {len(soak.warmup_ids)})")
    print(f"  ended by reason: {counter_text(sessions.ended)}")
    print(
        "  ended without a recording (nothing recorded): "
        + counter_text(sessions.without_recording)
    )
    print(f"  stuck (still live after the drain): {len(sessions.stuck)} {sessions.stuck[:5]}")
    verdict.check(not sessions.stuck, f"{len(sessions.stuck)} session(s) stuck live")
    if soak.killed_name:
        killed = ", ".join(
            f"{sid}: {reason} after {after:.1f} s"
            for sid, (reason, after) in sessions.killed.items()
        )
        print(f"  killed {soak.killed_name}'s sessions: {killed or 'none'}")
        verdict.check(
            all(reason == "worker_lost" for reason, _ in sessions.killed.values()),
            "a session of the killed worker did not end as worker_lost",
        )
    verdict.check(bool(soak.killed_name) or not soak.opts.kill, "no worker was killed")

    w = soak.warm_fig
    print(
        f"  warm-up: {w.go_live_answered}/{w.go_live_attempts} go-lives answered "
        f"({counter_text(w.go_live_refused)} refused), {w.listen_answered}/{w.listen_attempts} "
        f"listens answered ({counter_text(w.listen_refused)} refused)"
    )
    print("\nClients (churn):")
    print(
        f"  go-live: {fig.go_live_attempts} attempts, {fig.go_live_answered} answered, "
        f"refused/failed: {counter_text(fig.go_live_refused)}"
    )
    print(
        f"  stops: {fig.stops_sent} sent, {fig.stops_confirmed} confirmed "
        f"({fig.stops_with_recording} with a recording), failed: {counter_text(fig.stop_failures)}"
    )
    print(f"  broadcasts ended by the server: {counter_text(fig.ended_by_server)}")
    print(f"  broadcasts cut by a socket drop: {fig.broadcasts_cut_by_drop}")
    print(
        f"  listen: {fig.listen_attempts} attempts, {fig.listen_answered} answered, "
        f"refused/failed: {counter_text(fig.listen_refused)}; no track {fig.listens_no_track}; "
        f"nothing live to pick {fig.listens_idle}"
    )
    print(
        f"  listens ended by session.ended: {counter_text(fig.listens_ended)}; errors after the "
        f"answer: {counter_text(fig.listen_errors_after_answer)}; cut by a socket drop: "
        f"{fig.listens_cut_by_drop}"
    )
    print(
        f"  listens that received audio frames: {fig.listens_with_frames}, none: "
        f"{fig.listens_without_frames} ({fig.frames_heard} frames = {fig.frames_heard / FPS:.0f} s)"
    )
    print(f"  stray error frames: {counter_text(fig.stray_errors)}")
    print(
        f"  pages: {fig.pages_opened} opened, {fig.pages_not_opened} not opened; "
        f"timeouts {counter_text(fig.page_timeouts)}; "
        f"exceptions {counter_text(fig.client_exceptions)}"
    )
    print(
        f"  WebSockets: {fig.ws_connects} connects "
        f"({counter_text(fig.ws_connect_failures)} failed), "
        f"{fig.ws_drops} drops (close codes {counter_text(fig.ws_drop_codes)}), "
        f"{fig.reconnects} reconnects"
        + (
            f" in {min(fig.reconnect_s):.2f}..{max(fig.reconnect_s):.2f} s"
            if fig.reconnect_s
            else ""
        )
        + f", {fig.reconnect_failures} failed"
    )
    silent = fig.ws_connect_failures["no hello"]
    print(
        f"  sockets accepted but never served (no hello within {HELLO_WAIT_S:g} s, closed and "
        f"retried): {silent}"
    )
    verdict.check(fig.go_live_answered > 0 and fig.listen_answered > 0, "no broadcast or no listen")
    verdict.check(
        not fig.client_exceptions, "client exceptions: " + counter_text(fig.client_exceptions)
    )

    print("\nSignaling latency (churn):")
    print(f"  broadcast.start → broadcast.answer: {latency_text(fig.broadcast_latency_s)}")
    print(f"  listen.start → listen.answer: {latency_text(fig.listen_latency_s)}")
    print(f"  both: {latency_text(fig.broadcast_latency_s + fig.listen_latency_s)}")

    print("\nRecordings (every row at the end):")
    pct = 100 * recordings.playable / recordings.total if recordings.total else float("nan")
    print(
        f"  {recordings.playable}/{recordings.total} playable ({pct:.1f}%), "
        f"{recordings.seconds:.0f} s of audio"
    )
    for line in recordings.problems[:10]:
        print(f"  ! {line}")
    verdict.check(
        recordings.total > 0 and recordings.playable == recordings.total,
        f"{recordings.total - recordings.playable} recording(s) not playable",
    )

    print("\nRaw-audio exposure (must be 0):")
    median = float(np.median(fig.window_levels)) if fig.window_levels else float("nan")
    print(
        f"  listeners of denoised broadcasts: {fig.exposed_windows} exposed of {fig.windows} "
        f"1 s windows (median {median:.1f} dBFS, loudest {fig.max_window_dbfs:.1f} dBFS, "
        f"threshold {cal.threshold_dbfs:.1f}); loudest 20 ms frame {fig.max_frame_dbfs:.1f} dBFS"
    )
    print(
        f"  denoised recordings: {recordings.exposed_windows} exposed of "
        f"{recordings.denoised_windows} 1 s windows (loudest {recordings.max_window_dbfs:.1f} dBFS)"
    )
    verdict.check(fig.windows > 0, "no listener window measured")
    verdict.check(
        fig.exposed_windows == 0 and recordings.exposed_windows == 0,
        f"raw-audio exposure: {fig.exposed_windows} listener + {recordings.exposed_windows} "
        "recording seconds",
    )

    print("\nProcesses (baseline idle after warm-up → end idle after drain; max while running):")
    print("  | process | fds | threads | RSS MiB | exit | log ERROR/Traceback lines |")
    for w in soak.watched:
        b, e = w.baseline, w.end
        if b is None or e is None:
            cells = "n/a | n/a | n/a"
        else:
            cells = (
                f"{b.fds} → {e.fds} (max {w.max_of('fds')}) | "
                f"{b.threads} → {e.threads} (max {w.max_of('threads')}) | "
                f"{b.rss / MiB:.0f} → {e.rss / MiB:.0f} (max {w.max_of('rss') / MiB:.0f})"
            )
        log = w.proc.log_text()
        count, distinct = log_problems(log)
        hung = log.count("took too long to shut down and was killed")
        exit_text = "SIGKILL (bench)" if w.killed else str(w.exit_code)
        print(f"  | {w.name} ({w.role}) | {cells} | {exit_text} | {count} |")
        for line in distinct:
            print(f"      {line}")
        print(f"      fds(pooled)/threads/RSS MiB over the run: {w.series(soak.churn_start)}")
        if b is not None and e is not None:
            print(
                f"      pooled Redis/PostgreSQL connections {pooled_fds(b)} → {pooled_fds(e)} "
                f"(max {max(pooled_fds(s) for s in w.samples)}; not counted as a leak), "
                f"other fds {unpooled_fds(b)} → {unpooled_fds(e)}"
            )
        if hung:
            print(
                f'      {hung} consumer(s) that daphne killed: "took too long to shut down" '
                "(a cancelled channel-layer receive that never finished)"
            )
        if b is not None and e is not None:
            print(f"      fds by kind: {counter_diff(b.fd_kinds, e.fd_kinds)}")
            print(f"      threads by name: {counter_diff(b.thread_names, e.thread_names)}")
        leaks = [] if w.killed else w.leaks()
        if leaks:
            print(f"      LEAK? {', '.join(leaks)}")
        verdict.check(not leaks, f"{w.name} grew: {', '.join(leaks)}")
    verdict.check(not soak.died, "process died: " + "; ".join(soak.died))
    for line in soak.died:
        print(f"  ! {line}")

    blocks = [blocks_failed_closed(w.proc.log_text()) for w in soak.watched if w.role != "web"]
    total, silenced = sum(b for b, _ in blocks), sum(s for _, s in blocks)
    print(
        f"\nBlocks the workers' graphs failed closed (silence; overload): {silenced}/{total} "
        f"({100 * silenced / max(1, total):.1f}%, sessions that ended on a live worker)"
    )
    print("\nCPU over the whole run, % of one core:")
    print("  " + ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items()))
    print()
    if verdict.failures:
        print("FAILED:")
        for line in verdict.failures:
            print(f"  - {line}")
    else:
        print("PASSED: recordings 100% playable, no raw-audio exposure, no stuck session, flat")
    return verdict


# ==============================================================================
# Main
# ==============================================================================
class CpuMeter:
    """CPU seconds of this process, the server processes and the whole machine."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.machine0 = self._machine()
        self.self0 = self._own()
        self.servers: dict[int, float] = {}

    @staticmethod
    def _machine() -> float:
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    @staticmethod
    def _own() -> float:
        times = psutil.Process().cpu_times()
        return times.user + times.system

    def note_servers(self, pids: list[int]) -> None:
        """Remember the latest CPU seconds of each server pid (call before they exit)."""
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                self.servers[pid] = times.user + times.system

    def result(self) -> dict[str, float]:
        """% of one core: bench, servers, redis-less rest of the machine."""
        wall = max(1e-9, time.monotonic() - self.started)
        own = self._own() - self.self0
        servers = sum(self.servers.values())
        machine = self._machine() - self.machine0
        return {
            "bench process": 100 * own / wall,
            "servers": 100 * servers / wall,
            "everything else": 100 * max(0.0, machine - own - servers) / wall,
        }


async def soak_main(soak: Soak, cpu: CpuMeter) -> tuple[SessionReport, RecordingReport]:
    """Run the soak and the checks; the cluster is always stopped."""
    from streams.ice import ice_host_addresses_apply

    ice_host_addresses_apply([LOOPBACK])
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)

    async def watch_cpu() -> None:
        for _ in range(MAX_SAMPLES):
            cpu.note_servers([w.proc.pid for w in soak.watched if w.proc.running])
            await asyncio.sleep(1.0)

    cpu_task = asyncio.ensure_future(watch_cpu())
    try:
        await soak.run()
        soak.note("checking sessions and recordings")
        sessions = await in_db(sessions_report, soak.killed_ids, soak.killed_at_wall)
        recordings = await in_db(recordings_check, soak.calibration.threshold_dbfs)
        cpu.note_servers([w.proc.pid for w in soak.watched if w.proc.running])
        return sessions, recordings
    finally:
        cpu_task.cancel()
        await asyncio.to_thread(soak.cluster_stop)


def run(opts: Options, workdir: Path) -> int:
    """Set everything up in ``workdir``, soak, report, tear down; returns the exit code."""
    database: Database | None = None
    redis: PrivateRedis | None = None
    soak: Soak | None = None
    started = time.monotonic()
    try:
        database = Database.create(os.environ.get("DATABASE_URL"), workdir)
        print(f"database: {database.engine} {database.pg_name or database.url}", flush=True)
        (workdir / "media").mkdir()
        django_setup(database.url, workdir / "media", "soak-secret-key-not-for-production")
        warm = max(2, min(4, 2 * opts.capacity))
        accounts = db_call(accounts_make, warm + 2 * opts.broadcasters, 2 + 2 * opts.listeners)
        noise = white_noise(NOISE_LOOP_S)
        calibration = calibrate(noise)
        print(
            f"calibration: raw {calibration.raw_level_dbfs:.1f} dBFS, processed windows up to "
            f"{max(calibration.processed_windows_dbfs):.1f} dBFS, threshold "
            f"{calibration.threshold_dbfs:.1f} dBFS",
            flush=True,
        )
        redis = PrivateRedis(workdir)
        redis.start()
        print(f"redis on port {redis.port}", flush=True)
        soak = Soak(opts, workdir, database, redis, accounts, calibration, noise)
        cpu = CpuMeter()
        try:
            sessions, recordings = asyncio.run(
                asyncio.wait_for(soak_main(soak, cpu), opts.duration_s + RUN_SLACK_S)
            )
        except TimeoutError:
            print(f"the run took over {opts.duration_s + RUN_SLACK_S:g} s; stopped", flush=True)
            return 1
        except asyncio.CancelledError:
            print("terminated", flush=True)
            return 143
        finally:
            signal.signal(signal.SIGTERM, _terminate)  # the loop's handler is gone
        verdict = report(soak, sessions, recordings, cpu.result())
        print(f"\ntotal {time.monotonic() - started:.0f} s; machine load {os.getloadavg()}")
        return 1 if verdict.failures else 0
    finally:
        if soak is not None:
            soak.cluster_stop()
        if redis is not None:
            redis.stop()
        with contextlib.suppress(Exception):
            db_call(db_close)
        _DB.shutdown(wait=True)
        if database is not None:
            database.drop()


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM outside the event loop: unwind through every ``finally`` (cleanup)."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Parse options and run in a temporary folder (kept with ``--keep``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="churn seconds (60-3600)")
    parser.add_argument("--broadcasters", type=int, default=2, help="concurrent broadcasters (1-4)")
    parser.add_argument("--listeners", type=int, default=4, help="concurrent listeners (1-8)")
    parser.add_argument("--capacity", type=int, default=2, help="broadcasts per worker (1-8)")
    parser.add_argument(
        "--worker-stale-s", type=float, default=10.0, help="WORKER_STALE_S of the servers"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the clients")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--no-kill", action="store_true", help="do not kill a worker (diagnosis)")
    parser.add_argument(
        "--no-redis-restart", action="store_true", help="do not restart Redis (diagnosis)"
    )
    args = parser.parse_args(argv)
    if not 60 <= args.duration <= 3600:
        parser.error("--duration takes 60..3600")
    if not 1 <= args.broadcasters <= 4 or not 1 <= args.listeners <= 8:
        parser.error("--broadcasters takes 1..4, --listeners 1..8")
    if not 1 <= args.capacity <= 8 or not 2 <= args.worker_stale_s <= 60:
        parser.error("--capacity takes 1..8, --worker-stale-s 2..60")
    opts = Options(
        duration_s=args.duration,
        broadcasters=args.broadcasters,
        listeners=args.listeners,
        capacity=args.capacity,
        worker_stale_s=args.worker_stale_s,
        seed=args.seed,
        kill=not args.no_kill,
        redis_restart=not args.no_redis_restart,
    )
    signal.signal(signal.SIGTERM, _terminate)
    return in_temp_workdir("hearth-soak-", lambda workdir: run(opts, workdir), keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
