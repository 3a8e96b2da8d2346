"""Fan-out benchmark: one broadcaster, N listeners through one real daphne process.

Usage::

    .venv/bin/python bench/fanout.py [--listeners 1,8,16,32] [--seconds 10] [--client-procs 4]

Starts daphne on 127.0.0.1 (a fresh SQLite database in a temporary folder, migrated
first; the in-memory channel layer; ``ICE_HOST_ADDRESSES=127.0.0.1``), and creates one
broadcaster and ``max(N)`` listener users, each a friend of the broadcaster, with the
Django ORM in this process. Each mode gets a fresh daphne: first
``MEDIA_RELAY_ENCODE=once`` (processed audio Opus-encoded once per broadcast, packets
forwarded to every listener), then ``MEDIA_RELAY_ENCODE=per_listener`` (the old path:
each listener's aiortc sender encodes), the baseline. For each N and mode:

* the broadcaster, one aiortc peer in this process, goes live with denoising on and
  plays the noisy JFK mix with a voiced burst every second (``bench/live.py``'s
  ``BurstSource`` and ``write_program``; material from ``../shared/data``);
* N aiortc recvonly listeners join, spread over ``--client-procs`` client processes
  (``python bench/fanout.py --client``, driven over stdin/stdout with JSON lines), each
  listener with its own WebSocket signed in as its own friend of the broadcaster, so
  that one client process is not the bottleneck. A listener only counts its decoded
  frames and checks each one's peak (no conversion). Client processes run at nice 19:
  the server gets the CPU first, as if its listeners were on other machines (32 aiortc
  receivers cost about a core of their own); their CPU is still reported;
* once every listener hears audio and 1 s has passed, the measured window of S seconds
  starts (``time.monotonic()`` is one clock for all local processes).

Reported per N and mode:

* server CPU: daphne process CPU (``psutil`` user + system, all threads) over the
  window / S, in % of one core; per extra listener: (cpu(N) - cpu(N0)) / (N - N0),
  N0 the smallest N (1 by default);
* silent frames: listener frames in the window whose s16 samples all lie within
  ±2 LSB (-84 dBFS). The server sends digital silence where it has no processed
  block (fail closed); aiortc's own Opus encoder (``per_listener``) turns it into
  frames that decode to all zeros, the relay's shared libopus encoder (``once``) into
  ±1 LSB; the denoised program never decodes below 5 LSB peak. All-zero frames are
  counted too. Missing frames: S * 50 per listener minus frames received in the
  window (a listener that never connected misses all). Both in % of S * 50 * N;
* blocks failed closed / blocks in, from the ``session.stats`` frames with a
  ``"media"`` key that the broadcaster's page receives (about every 2 s): the
  difference between the first and the last inside the window, and the last one
  (whole session, setup included); without them, daphne's "session ... ended" line;
* the client processes' CPU, this process's, and the rest of the machine's (other
  programs, hypervisor steal) over the window, to see when the bench's own peers or
  anything else crowd the server: rounds with over 15% of a core of other load are
  flagged as disturbed.

Everything stays on loopback; every loop and wait is bounded; daphne and the client
processes are killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(Path(__file__).resolve())
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402
from av import AudioFrame  # noqa: E402

from bench._common import in_temp_workdir  # noqa: E402
from streams.ice import ice_host_addresses_apply  # noqa: E402
from tests.live_server import LOOPBACK, DaphneProcess, WsClient  # noqa: E402

FPS = 50  # 20 ms frames
MODES = ("once", "per_listener")
MODE_ENV = "MEDIA_RELAY_ENCODE"
SETTLE_S = 1.0  # after every listener hears audio, before the window
WINDOW_LEAD_S = 0.3  # the window starts this long after the "measure" command
TARGET_CPU_PER_LISTENER = 0.5  # % of one core per extra audio listener (mode once)
TARGET_SILENT_PCT = 0.5  # % silent frames with 32 listeners (mode once)
MAX_WS_FRAMES = 100_000  # bound on the frames any drain loop reads
SILENT_PEAK_LSB = 2  # a decoded s16 frame within ±2 LSB (-84 dBFS) counts as silent
STATS_HISTORY = 1000  # media stats frames kept per round (one every ~2 s)
OTHER_LOAD_WARN_PCT = 15.0  # % of a core used by unrelated processes: disturbed figures


def _jsonline(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload) + "\n").encode()


# ==============================================================================
# Client process: up to N/procs recvonly listeners
# ==============================================================================
def frame_silence(frame: AudioFrame) -> tuple[bool, bool]:
    """(silent, all zero) for a decoded frame, from its planes' bytes (no conversion).

    Silent: every s16 sample within ±``SILENT_PEAK_LSB``. The relay's shared libopus
    encoder turns digital silence into packets that decode to ±1 LSB, never to all
    zeros (aiortc's own encoder gives exact zeros), while the denoised program never
    decodes to a frame under 5 LSB peak. Formats other than s16: all zero only.
    """
    fmt = frame.format
    per_plane = frame.samples * (1 if fmt.is_planar else len(frame.layout.channels))
    if fmt.name in ("s16", "s16p"):
        peak = 0
        for plane in frame.planes:
            samples = np.frombuffer(plane, dtype=np.int16, count=per_plane)
            peak = max(peak, int(samples.max()), -int(samples.min()))
        return peak <= SILENT_PEAK_LSB, peak == 0
    zero = not any(
        np.frombuffer(plane, dtype=np.uint8, count=per_plane * fmt.bytes).any()
        for plane in frame.planes
    )
    return zero, zero


class CountingSink:
    """Consumes a received audio track; counts frames (and all-zero ones) in a window.

    ``heard`` is set at the first frame that is not silent (:meth:`classify`).
    """

    def __init__(self, track: MediaStreamTrack, *, max_frames: int) -> None:
        self.track = track
        self.max_frames = max_frames
        self.window: tuple[float, float] | None = None
        self.heard = asyncio.Event()
        self.received = 0
        self.silent = 0
        self.zero = 0
        self.keyframes = 0  # video only (:class:`VideoCountingSink`)
        self.max_gap_s = 0.0
        self.total = 0
        self._last: float | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(MediaStreamError):
            for _ in range(self.max_frames):
                frame = await self.track.recv()
                now = time.monotonic()
                self.total += 1
                silent, zero = self.classify(frame)
                if not silent and not self.heard.is_set():
                    self.heard.set()
                window = self.window
                if window is not None and window[0] <= now < window[1]:
                    self.received += 1
                    self.silent += silent
                    self.zero += zero
                    if self._last is not None:
                        self.max_gap_s = max(self.max_gap_s, now - self._last)
                self._last = now

    def classify(self, frame: Any) -> tuple[bool, bool]:
        """(silent, all zero) of one received frame (:func:`frame_silence`)."""
        return frame_silence(frame)

    async def stop(self) -> None:
        """Stop consuming."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


class VideoCountingSink(CountingSink):
    """Counts a received video track's frames, which :class:`EncodedFrameCounter`
    leaves undecoded (aiortc ``JitterFrame`` s: one VP8 frame each, reassembled from
    its RTP packets); also counts the keyframes among those in the window.

    ``heard`` is set at the first frame (no frame counts as silent).
    """

    def classify(self, frame: Any) -> tuple[bool, bool]:
        """Never silent; counts a VP8 keyframe (RFC 6386 §9.1: bit 0 of the frame tag
        is 0) when the frame falls in the window."""
        data = bytes(getattr(frame, "data", b"")[:1])
        window = self.window
        now = time.monotonic()
        if data and not data[0] & 1 and window is not None and window[0] <= now < window[1]:
            self.keyframes += 1
        return False, False


class EncodedFrameCounter:
    """Stands in for aiortc's video decoder in a listener client process: hands each
    reassembled encoded frame on undecoded.

    A VP8 decoder per listener (~1-3 ms a 640x480 frame) would cost the client
    processes most of a core at 16 listeners x 30 fps on the 2-core bench machine,
    competing with the server they measure; the server's cost does not depend on it.
    aiortc also sends a PLI when its decoder fails; with this counter only the jitter
    buffer's losses do.
    """

    def decode(self, encoded_frame: Any) -> list[Any]:
        """``[encoded_frame]`` (aiortc's ``Decoder`` protocol)."""
        return [encoded_frame]


def video_decoding_skip() -> None:
    """Make this process's aiortc receivers use :class:`EncodedFrameCounter` for video
    (``aiortc.rtcrtpreceiver.get_decoder``, looked up at each codec change)."""
    import aiortc.rtcrtpreceiver as receiver_module

    original = receiver_module.get_decoder
    if getattr(original, "_hearth_counting", False):
        return

    def get_decoder(codec: Any) -> Any:
        if str(codec.mimeType).lower().startswith("video/"):
            return EncodedFrameCounter()
        return original(codec)

    get_decoder._hearth_counting = True  # type: ignore[attr-defined]
    receiver_module.get_decoder = get_decoder


async def _drain(ws: WsClient) -> None:
    """Read and drop a listener page's events (presence, session.stats, ...)."""
    with contextlib.suppress(Exception):
        for _ in range(MAX_WS_FRAMES):
            await ws.ws.recv()


@dataclass
class _ClientListener:
    ws: WsClient
    pc: RTCPeerConnection
    session_id: int
    sink: CountingSink | None = None
    extra: CountingSink | None = None  # a video listener's audio, consumed unreported
    drain: asyncio.Task[None] | None = None


async def _listener_open(
    job: dict[str, Any], cookie: str, name: str, session_id: int
) -> _ClientListener:
    """One listener of ``session_id``: audio only, or (``job["video"]``) audio and
    video as the listen page asks, counting the video."""
    video = bool(job.get("video"))
    ws = await WsClient.open(job["ws_url"], cookie, origin=job["origin"], name=name)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    listener = _ClientListener(ws=ws, pc=pc, session_id=session_id)
    try:
        await ws.expect("hello", timeout=20)
        pc.addTransceiver("audio", direction="recvonly")
        if video:
            pc.addTransceiver("video", direction="recvonly")
        loop = asyncio.get_running_loop()
        got: dict[str, asyncio.Future[MediaStreamTrack]] = {
            kind: loop.create_future() for kind in (("audio", "video") if video else ("audio",))
        }

        def on_track(track: MediaStreamTrack) -> None:
            future = got.get(track.kind)
            if future is not None and not future.done():
                future.set_result(track)

        pc.on("track", on_track)
        await pc.setLocalDescription(await pc.createOffer())
        await ws.send_json(
            {"type": "listen.start", "session_id": session_id, "sdp": pc.localDescription.sdp}
        )
        answer = await ws.expect("listen.answer", timeout=30)
        if video and not answer.get("video"):
            raise RuntimeError("the server sent no video")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        audio = await asyncio.wait_for(got["audio"], 15)
        max_frames = int(job["max_frames"])
        if video:
            listener.sink = VideoCountingSink(
                await asyncio.wait_for(got["video"], 15), max_frames=max_frames
            )
            listener.extra = CountingSink(audio, max_frames=max_frames)
        else:
            listener.sink = CountingSink(audio, max_frames=max_frames)
        listener.drain = asyncio.ensure_future(_drain(ws))
    except BaseException:
        await _listener_close(listener)
        raise
    return listener


async def _listener_close(listener: _ClientListener) -> None:
    for sink in (listener.sink, listener.extra):
        if sink is not None:
            await sink.stop()
    if listener.drain is not None:
        listener.drain.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener.drain
    with contextlib.suppress(Exception):
        await asyncio.wait_for(listener.pc.close(), 5)
    await listener.ws.close()


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**22)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _read_command(reader: asyncio.StreamReader, wait_s: float) -> dict[str, Any]:
    line = await asyncio.wait_for(reader.readline(), wait_s)
    if not line:
        raise EOFError("the bench closed our stdin")
    return json.loads(line)


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def client_serve(reader: asyncio.StreamReader) -> None:
    """One client process's life: job → listeners → ready → measure → result → close.

    The job names the listeners' cookies, and either one ``session_id`` for all or
    ``session_ids`` (one per cookie); with ``video`` true they receive the camera too
    (counted undecoded: :func:`video_decoding_skip`).
    """
    job = await _read_command(reader, 120)
    if "cmd" in job:  # closed before it got a job (the broadcaster failed to go live)
        return
    ice_host_addresses_apply([LOOPBACK])
    if job.get("video"):
        video_decoding_skip()
    cookies = list(job["cookies"])
    session_ids = [int(i) for i in job.get("session_ids") or [job["session_id"]] * len(cookies)]
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(
            _listener_open(job, cookie, f"{job['name']}-l{i}", session_id)
            for i, (cookie, session_id) in enumerate(zip(cookies, session_ids, strict=True))
        ),
        return_exceptions=True,
    )
    listeners = [o for o in outcomes if isinstance(o, _ClientListener)]
    errors = [f"{type(o).__name__}: {o}"[:300] for o in outcomes if isinstance(o, BaseException)]
    try:
        opened = [(lis.session_id, lis.sink) for lis in listeners if lis.sink is not None]
        sinks = [sink for _, sink in opened]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(s.heard.wait() for s in sinks)), float(job["heard_wait_s"])
            )
        _emit(
            {
                "event": "ready",
                "listeners": len(sinks),
                "heard": sum(s.heard.is_set() for s in sinks),
                "setup_s": time.monotonic() - started,
                "errors": errors,
            }
        )
        command = await _read_command(reader, float(job["command_wait_s"]))
        if command.get("cmd") != "measure":
            return
        t0, t1 = float(command["t0"]), float(command["t1"])
        for sink in sinks:
            sink.window = (t0, t1)
        await asyncio.sleep(max(0.0, t1 - time.monotonic()) + 0.05)
        _emit(
            {
                "event": "result",
                "listeners": [
                    {
                        "received": s.received,
                        "silent": s.silent,
                        "zero": s.zero,
                        "keyframes": s.keyframes,
                        "max_gap_ms": 1000 * s.max_gap_s,
                        "ended": s.task.done(),
                        "session_id": session_id,
                    }
                    for session_id, s in opened
                ],
                "errors": errors,
            }
        )
        # Keep the peers up until told (the bench stops the broadcast first), bounded.
        with contextlib.suppress(TimeoutError, EOFError, ValueError):
            await _read_command(reader, 30)
    finally:
        await asyncio.gather(*(_listener_close(lis) for lis in listeners))


CLIENT_NICE = 19
"""Niceness of the listener client processes (CFS weights each of their ~40 aiortc
threads 15 against 1024 at nice 0): the server under test gets the CPU
first, as if its listeners ran on other machines (their cost is still reported)."""


async def client_main() -> int:
    """Entry point of ``--client``: serve one job from stdin within its overall deadline."""
    os.nice(CLIENT_NICE)
    reader = await _stdin_reader()
    try:
        await asyncio.wait_for(client_serve(reader), 600)
    except (TimeoutError, EOFError):
        return 1
    return 0


# ==============================================================================
# The bench process: daphne, the broadcaster, the client processes
# ==============================================================================
@dataclass
class FanoutRound:
    """Figures of one round (N listeners, one mode)."""

    listeners: int
    mode: str
    seconds: float
    cpu_s: float = 0.0
    clients_cpu_s: float = 0.0
    bench_cpu_s: float = 0.0  # this process: the broadcaster peer and the bench itself
    busy_cpu_s: float = float("nan")  # every CPU's busy time (all processes, kernel)
    machine_busy: float = float("nan")  # share of all CPUs busy over the window
    steal_cpu_s: float = 0.0  # time the hypervisor gave our CPUs to someone else
    measured: bool = False
    expected_frames: int = 0
    missing_frames: int = 0
    silent_frames: int = 0
    zero_frames: int = 0
    max_gap_ms: float = 0.0
    connected: int = 0
    setup_s: float = 0.0
    media: dict[str, Any] | None = None  # last session.stats "media" of the broadcaster
    # (blocks failed closed, blocks in, seconds) between the first and the last media
    # stats frame received inside the window
    media_window: tuple[int, int, float] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def cpu_pct(self) -> float:
        """Server CPU in % of one core."""
        return 100 * self.cpu_s / self.seconds

    @property
    def clients_cpu_pct(self) -> float:
        """All client processes' CPU in % of one core."""
        return 100 * self.clients_cpu_s / self.seconds

    @property
    def other_cpu_pct(self) -> float:
        """CPU of everything but daphne, the clients and the bench, in % of one core."""
        rest = self.busy_cpu_s - self.cpu_s - self.clients_cpu_s - self.bench_cpu_s
        return 100 * rest / self.seconds

    @property
    def server_mode(self) -> str:
        """The relay mode the server reports in its media stats ("" if it does not)."""
        relay = (self.media or {}).get("relay")
        return str(relay.get("mode", "")) if isinstance(relay, dict) else ""

    def pct(self, frames: int) -> float:
        """``frames`` in % of the expected frames."""
        return 100 * frames / self.expected_frames if self.expected_frames else float("nan")

    @property
    def failed(self) -> bool:
        """The round has no usable figures."""
        return not self.measured

    def failed_closed_window(self) -> str:
        """``blocks_failed_closed/blocks_in`` within the window (from the server's media
        stats frames), else over the whole session."""
        if self.media_window is not None:
            closed, blocks, span = self.media_window
            return f"{closed}/{blocks} ({span:.0f} s)"
        return self.failed_closed_session()

    def failed_closed_session(self) -> str:
        """``blocks_failed_closed/blocks_in`` over the whole session, setup included
        (server stats, else n/a)."""
        if self.media is not None:
            media = self.media
            text = f"{media.get('blocks_failed_closed', '?')}/{media.get('blocks_in', '?')}"
            if media.get("failed"):
                text += f" (failed: {media['failed']})"
            return text + " session"
        return "n/a"

    def stages(self) -> str:
        """Stage timings from the server's media stats (p50/p95 ms), if it sent them."""
        stages = (self.media or {}).get("stages")
        if not isinstance(stages, dict) or not stages:
            return ""
        parts = []
        for name, s in stages.items():
            with contextlib.suppress(KeyError, TypeError, ValueError):
                parts.append(f"{name} {float(s['p50_ms']):.2f}/{float(s['p95_ms']):.2f}")
        return "stages p50/p95 ms: " + ", ".join(parts)


class StatsReader:
    """Reads the broadcaster page's frames while live; keeps its media stats frames
    (and their ``video`` figures, for a camera broadcast).

    Frames go to ``ws.received`` as :meth:`WsClient.expect` keeps them; frames other
    than ``session.stats`` also go to ``ws.pending``, so a later ``expect`` finds them.
    :meth:`note_new` also picks up what ``expect`` read after the reader stopped.
    """

    def __init__(self, ws: WsClient) -> None:
        self.ws = ws
        self.history: deque[tuple[float, dict[str, Any]]] = deque(maxlen=STATS_HISTORY)
        self.video_history: deque[tuple[float, dict[str, Any]]] = deque(maxlen=STATS_HISTORY)
        self.errors: list[dict[str, Any]] = []
        self._noted = len(ws.received)
        self.task = asyncio.ensure_future(self._run())

    @property
    def media(self) -> dict[str, Any] | None:
        """The last media stats received."""
        return self.history[-1][1] if self.history else None

    def note_new(self) -> None:
        """Record media stats and error frames received since the last call."""
        now = time.monotonic()
        for frame in self.ws.received[self._noted :]:
            if frame.get("type") == "session.stats" and isinstance(frame.get("media"), dict):
                self.history.append((now, frame["media"]))
                if isinstance(frame.get("video"), dict):
                    self.video_history.append((now, frame["video"]))
            elif frame.get("type") == "error":
                self.errors.append(frame)
        self._noted = len(self.ws.received)

    def window(self, t0: float, t1: float) -> tuple[int, int, float] | None:
        """(blocks failed closed, blocks in, seconds) between the first and the last
        media stats received in [t0, t1]; None with fewer than two."""
        inside = [(t, m) for t, m in self.history if t0 <= t <= t1]
        if len(inside) < 2:
            return None
        (ta, a), (tb, b) = inside[0], inside[-1]
        try:
            closed = int(b["blocks_failed_closed"]) - int(a["blocks_failed_closed"])
            blocks = int(b["blocks_in"]) - int(a["blocks_in"])
        except (KeyError, TypeError, ValueError):
            return None
        return closed, blocks, tb - ta

    def video_window(self, t0: float, t1: float) -> dict[str, float] | None:
        """Camera figures between the first and the last video stats received in
        [t0, t1]: the growth of each counter (``frames``, ``frames_redacted``,
        ``frames_blurred_whole``, ``frames_dropped``, ``packets_encoded``) and
        ``seconds`` between them; None with fewer than two."""
        inside = [(t, v) for t, v in self.video_history if t0 <= t <= t1]
        if len(inside) < 2:
            return None
        (ta, a), (tb, b) = inside[0], inside[-1]
        figures: dict[str, float] = {"seconds": tb - ta}
        for key in (
            "frames",
            "frames_redacted",
            "frames_blurred_whole",
            "frames_dropped",
            "packets_encoded",
        ):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                figures[key] = float(b[key]) - float(a[key])
        return figures

    async def _run(self) -> None:
        with contextlib.suppress(Exception):
            for _ in range(MAX_WS_FRAMES):
                frame = json.loads(await self.ws.ws.recv())
                if not isinstance(frame, dict):
                    continue
                self.ws.received.append(frame)
                self.note_new()
                if frame.get("type") != "session.stats":
                    self.ws.pending.append(frame)

    async def stop(self) -> None:
        """Stop reading (cancelling ``recv`` loses no frame in ``websockets``)."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


def make_fanout_accounts(listeners: int, *, prefix: str = "fanout") -> tuple[str, list[str]]:
    """(broadcaster cookie, ``listeners`` listener cookies), each listener a friend;
    user names ``<prefix>-b`` and ``<prefix>-l<i>``."""
    from tests.live_server import session_cookie
    from users.models import Friendship, User

    broadcaster = User.objects.create_user(f"{prefix}-b", password="bench-pass-123")
    cookies = []
    for i in range(listeners):
        user = User.objects.create_user(f"{prefix}-l{i}", password="bench-pass-123")
        low, high = sorted((broadcaster, user), key=lambda u: u.id)
        Friendship.objects.create(user_low=low, user_high=high)
        cookies.append(session_cookie(user))
    return session_cookie(broadcaster), cookies


def _open_log(path: Path) -> IO[bytes]:
    return open(path, "ab")


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ClientProcess:
    """One ``bench/fanout.py --client`` subprocess and its JSON-lines pipe."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, log_path: Path) -> None:
        self.proc = proc
        self.name = name
        self.log_path = log_path

    @classmethod
    async def spawn(cls, name: str, log_path: Path) -> ClientProcess:
        """Start the process (it imports, then waits for its job on stdin)."""
        log = _open_log(log_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                SCRIPT,
                "--client",
                cwd=REPO_ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                limit=2**22,
            )
        finally:
            log.close()
        return cls(proc, name, log_path)

    async def send(self, payload: dict[str, Any]) -> None:
        """Write one command line (ignored if the process is gone)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.proc.stdin.write(_jsonline(payload))
            await self.proc.stdin.drain()

    async def receive(self, event: str, wait_s: float) -> dict[str, Any]:
        """The next JSON line with ``"event": event`` within ``wait_s`` seconds."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + wait_s
        for _ in range(1000):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                raise RuntimeError(
                    f"client {self.name} exited ({self.proc.returncode}) before {event!r}:\n"
                    + _log_tail(self.log_path)
                )
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("event") == event:
                    return message
        raise TimeoutError(f"client {self.name}: no {event!r} within {wait_s:.0f} s")

    async def finish(self, wait_s: float = 10.0) -> None:
        """Tell it to close, wait ``wait_s`` seconds, then SIGKILL it."""
        if self.proc.returncode is None:
            await self.send({"cmd": "close"})
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), wait_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)


def _cpu_s(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def _cpu_snapshot(server_pid: int, client_pids: list[int]) -> tuple[float, ...]:
    """CPU seconds so far: (daphne, clients, this process, all CPUs busy, steal, all CPUs).

    Busy excludes idle, iowait and steal (time the hypervisor ran someone else).
    """
    import psutil

    times = psutil.cpu_times()  # summed over every CPU
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    steal = getattr(times, "steal", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return (
        _cpu_s([server_pid]),
        _cpu_s(client_pids),
        _cpu_s([os.getpid()]),
        total - idle - steal,
        steal,
        total,
    )


@dataclass
class CpuWindow:
    """CPU seconds spent over a measured window, by party (two :func:`_cpu_snapshot` s).

    Attributes:
        seconds: The window, wall seconds.
        server_s: The daphne process (every thread, user + system).
        clients_s: The listener client processes.
        bench_s: This process (broadcaster peers, the bench itself).
        busy_s: Every CPU's busy time (all processes and the kernel; no idle, iowait
            or steal).
        steal_s: Time the hypervisor gave our CPUs to someone else.
        machine_busy: Share of all CPUs busy, 0..1.
    """

    seconds: float
    server_s: float
    clients_s: float
    bench_s: float
    busy_s: float
    steal_s: float
    machine_busy: float

    @classmethod
    def between(
        cls, before: tuple[float, ...], after: tuple[float, ...], seconds: float
    ) -> CpuWindow:
        """From two :func:`_cpu_snapshot` results ``seconds`` apart."""
        d = [b - a for a, b in zip(before, after, strict=True)]
        return cls(seconds, d[0], d[1], d[2], d[3], d[4], d[3] / d[5] if d[5] > 0 else math.nan)

    @property
    def other_pct(self) -> float:
        """CPU of everything but daphne, the clients and the bench, % of one core."""
        return 100 * (self.busy_s - self.server_s - self.clients_s - self.bench_s) / self.seconds

    def warnings(self) -> list[str]:
        """Why the figures may be disturbed: other load or steal over
        ``OTHER_LOAD_WARN_PCT`` of a core."""
        notes = []
        if not math.isnan(self.other_pct) and self.other_pct > OTHER_LOAD_WARN_PCT:
            notes.append(
                f"warning: other processes used {self.other_pct:.0f}% of a core "
                "during the window (figures disturbed)"
            )
        steal_pct = 100 * self.steal_s / self.seconds
        if steal_pct > OTHER_LOAD_WARN_PCT:
            notes.append(
                f"warning: the hypervisor took {steal_pct:.0f}% of a core (steal) during the "
                "window (figures disturbed)"
            )
        return notes


async def clients_ready(
    clients: list[ClientProcess], jobs: list[dict[str, Any]], wait_s: float
) -> tuple[int, list[str]]:
    """Send each client its job and wait for every ``ready``: (listeners connected,
    errors, including listeners that heard nothing)."""
    for client, job in zip(clients, jobs, strict=True):
        await client.send(job)
    ready = await asyncio.gather(
        *(c.receive("ready", wait_s) for c in clients), return_exceptions=True
    )
    connected = 0
    errors: list[str] = []
    for item in ready:
        if isinstance(item, BaseException):
            errors.append(f"{type(item).__name__}: {item}"[:400])
            continue
        connected += int(item["listeners"])
        errors += item.get("errors", [])
        if item["heard"] < item["listeners"]:
            errors.append(f"{item['listeners'] - item['heard']} listener(s) heard nothing")
    return connected, errors


@dataclass
class Window:
    """A measured window (:func:`measure_window`).

    Attributes:
        t0: Start, ``time.monotonic()`` seconds (one clock for all local processes).
        t1: End, same clock.
        cpu: CPU by party over the window.
        listeners: Each listener's figures from the clients' ``result`` lines.
        errors: Clients that sent no result.
        probes: ``probe()`` at the start and at the end, when one was given.
    """

    t0: float
    t1: float
    cpu: CpuWindow
    listeners: list[dict[str, Any]]
    errors: list[str]
    probes: tuple[Any, Any] | None = None


async def measure_window(
    server_pid: int,
    clients: list[ClientProcess],
    seconds: float,
    *,
    probe: Callable[[], Any] | None = None,
) -> Window:
    """Measure ``seconds`` from ``WINDOW_LEAD_S`` from now: the CPU by party, each
    listener's figures; ``probe()`` (more figures to difference) runs right after each
    CPU snapshot."""
    t0 = time.monotonic() + WINDOW_LEAD_S
    t1 = t0 + seconds
    for client in clients:
        await client.send({"cmd": "measure", "t0": t0, "t1": t1})
    client_pids = [c.proc.pid for c in clients]
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))
    before = _cpu_snapshot(server_pid, client_pids)
    probe_before = probe() if probe is not None else None
    await asyncio.sleep(max(0.0, t1 - time.monotonic()))
    after = _cpu_snapshot(server_pid, client_pids)
    probe_after = probe() if probe is not None else None
    reports = await asyncio.gather(
        *(c.receive("result", 30) for c in clients), return_exceptions=True
    )
    window = Window(t0, t1, CpuWindow.between(before, after, seconds), [], [])
    if probe is not None:
        window.probes = (probe_before, probe_after)
    for item in reports:
        if isinstance(item, BaseException):
            window.errors.append(f"{type(item).__name__}: {item}"[:400])
        else:
            window.listeners += item["listeners"]
    return window


async def run_round(
    server: DaphneProcess,
    broadcaster_cookie: str,
    listener_cookies: list[str],
    *,
    listeners: int,
    seconds: float,
    mode: str,
    client_procs: int,
    workdir: Path,
    program: NDArray[np.float32],
) -> FanoutRound:
    """One broadcaster and ``listeners`` listeners: connect, measure ``seconds``, stop."""
    from bench.live import BurstSource

    result = FanoutRound(listeners=listeners, mode=mode, seconds=seconds)
    result.expected_frames = round(seconds * FPS) * listeners
    procs = max(1, min(client_procs, listeners))
    clients: list[ClientProcess] = []
    bws: WsClient | None = None
    pc: RTCPeerConnection | None = None
    source: BurstSource | None = None
    stats: StatsReader | None = None
    session_id: int | None = None
    try:
        # Client processes import while the broadcaster goes live.
        clients = list(
            await asyncio.gather(
                *(
                    ClientProcess.spawn(f"c{k}", workdir / f"client-{mode}-{listeners}-c{k}.log")
                    for k in range(procs)
                )
            )
        )
        bws = await WsClient.open(server.ws_url, broadcaster_cookie, origin=server.origin, name="b")
        await bws.expect("hello")
        source = BurstSource(program)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(source, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        await bws.send_json(
            {"type": "broadcast.start", "sdp": pc.localDescription.sdp, "denoise": True}
        )
        answer = await bws.expect("broadcast.answer", timeout=30)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        session_id = int(answer["session_id"])
        stats = StatsReader(bws)

        started = time.monotonic()
        heard_wait_s = 30.0 + listeners / 2
        jobs = [
            {
                "name": client.name,
                "ws_url": server.ws_url,
                "origin": server.origin,
                "session_id": session_id,
                "cookies": listener_cookies[k:listeners:procs],
                "max_frames": int((seconds + 120 + heard_wait_s) * FPS),
                "heard_wait_s": heard_wait_s,
                "command_wait_s": 60.0,
            }
            for k, client in enumerate(clients)
        ]
        result.connected, errors = await clients_ready(clients, jobs, heard_wait_s + 60)
        result.setup_s = time.monotonic() - started
        result.errors += errors
        if result.connected == 0:
            raise RuntimeError("no listener connected")

        await asyncio.sleep(SETTLE_S)
        window = await measure_window(server.pid, clients, seconds)
        cpu = window.cpu
        result.errors += window.errors
        result.cpu_s, result.clients_cpu_s, result.bench_cpu_s = (
            cpu.server_s,
            cpu.clients_s,
            cpu.bench_s,
        )
        result.busy_cpu_s, result.steal_cpu_s = cpu.busy_s, cpu.steal_s
        result.machine_busy = cpu.machine_busy
        received = 0
        for lis in window.listeners:
            received += min(int(lis["received"]), round(seconds * FPS))
            result.silent_frames += int(lis["silent"])
            result.zero_frames += int(lis.get("zero", 0))
            result.max_gap_ms = max(result.max_gap_ms, float(lis["max_gap_ms"]))
        result.missing_frames = max(0, result.expected_frames - received)
        result.measured = True

        await stats.stop()
        stats.note_new()
        result.media_window = stats.window(window.t0, window.t1)
        result.errors += cpu.warnings()
        await bws.send_json({"type": "broadcast.stop"})
        await bws.expect("broadcast.ended", timeout=30)
    except Exception as exc:  # report the round as failed, keep benchmarking
        result.errors.append(f"{type(exc).__name__}: {exc}"[:400])
    finally:
        if stats is not None:
            await stats.stop()
            stats.note_new()  # frames read by expect() after the reader stopped
            result.media = stats.media
            if result.server_mode and result.server_mode != mode:
                result.errors.append(f"warning: the server reports relay mode {result.server_mode}")
            result.errors += [f"server error frame: {f}"[:300] for f in stats.errors]
        if source is not None:
            source.stop()
        if pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 5)
        if bws is not None:
            await bws.close()
        await asyncio.gather(*(c.finish() for c in clients))
    return result


# -- report --------------------------------------------------------------------
def _fmt(value: float, spec: str = "{:.1f}") -> str:
    return "n/a" if value is None or math.isnan(value) else spec.format(value)


def per_extra_listener(results: list[FanoutRound], mode: str, n: int) -> float:
    """(cpu(n) - cpu(n0)) / (n - n0) in % of a core, n0 the smallest N of ``mode``."""
    rounds = {r.listeners: r for r in results if r.mode == mode and not r.failed}
    if n not in rounds or not rounds:
        return float("nan")
    n0 = min(rounds)
    if n == n0:
        return float("nan")
    return (rounds[n].cpu_pct - rounds[n0].cpu_pct) / (n - n0)


def cpu_slope(results: list[FanoutRound], mode: str) -> float:
    """Least-squares slope of server CPU (% core) over N for ``mode``: the cost of one
    more listener, from every N at once (one disturbed round cannot set it alone)."""
    rounds = [r for r in results if r.mode == mode and not r.failed]
    if len({r.listeners for r in rounds}) < 2:
        return float("nan")
    n = np.array([r.listeners for r in rounds], dtype=np.float64)
    cpu = np.array([r.cpu_pct for r in rounds], dtype=np.float64)
    return float(np.polyfit(n, cpu, 1)[0])


def _silent_missing(r: FanoutRound) -> str:
    return f"{r.pct(r.silent_frames):.2f} + {r.pct(r.missing_frames):.2f}"


def report(results: list[FanoutRound], modes: list[str]) -> str:
    """Markdown table (cells ``once / per_listener``) and the targets."""
    by_key = {(r.listeners, r.mode): r for r in results}
    counts = sorted({r.listeners for r in results})

    def cells(n: int, fn: Any) -> str:
        parts = []
        for mode in modes:
            r = by_key.get((n, mode))
            parts.append("n/a" if r is None or r.failed else fn(r))
        return " / ".join(parts)

    n0 = min(counts) if counts else 1
    lines = [
        f"| N | server CPU, % core ({' / '.join(modes)}) "
        f"| CPU per extra listener, % core (vs N={n0}) "
        f"| silent + missing frames, % ({' / '.join(modes)}) "
        "| blocks failed closed / in, window | clients CPU, % core | other load, % core |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in counts:
        extra = " / ".join(_fmt(per_extra_listener(results, m, n), "{:.2f}") for m in modes)
        lines.append(
            f"| {n} | {cells(n, lambda r: _fmt(r.cpu_pct))} | {extra if n != n0 else '—'} "
            f"| {cells(n, _silent_missing)} "
            f"| {cells(n, FanoutRound.failed_closed_window)} "
            f"| {cells(n, lambda r: _fmt(r.clients_cpu_pct, '{:.0f}'))} "
            f"| {cells(n, lambda r: _fmt(r.other_cpu_pct, '{:.0f}'))} |"
        )
    lines += [
        "",
        f"Cells: {' / '.join(modes)} ({MODE_ENV}). Silent: decoded frames within "
        f"±{SILENT_PEAK_LSB} LSB (the relay's Opus silence decodes to ±1 LSB, not zeros); "
        f"missing: {FPS}/s per listener not received in the window (±1 frame per "
        "listener at the window's edges). Failed closed: between the first and last "
        "media stats frames inside the window (seconds covered in brackets). Other load: "
        "every CPU's busy time minus daphne, the client processes and the bench process "
        f"(other programs; ±10% is tick-accounting noise); above {OTHER_LOAD_WARN_PCT:.0f}% "
        "the figures are disturbed. "
        "On loopback the kernel's delivery of each packet to the listener's socket is "
        "charged to the sending server.",
    ]

    once = [r for r in results if r.mode == "once" and not r.failed]
    verdicts = []
    if once:
        slope = cpu_slope(results, "once")
        if math.isnan(slope):
            verdicts.append("CPU per extra listener: not measured (needs two N)")
        else:
            ok = slope <= TARGET_CPU_PER_LISTENER
            baseline = cpu_slope(results, "per_listener")
            verdicts.append(
                f"CPU per extra listener (once, least-squares slope over N) {slope:.2f}% "
                f"(per_listener {baseline:.2f}%) → {'met' if ok else 'NOT met'}"
            )
        r32 = by_key.get((32, "once"))
        if r32 is not None and not r32.failed:
            ok = r32.pct(r32.silent_frames) < TARGET_SILENT_PCT
            verdicts.append(
                f"silent frames at N=32 (once) {r32.pct(r32.silent_frames):.2f}% "
                f"→ {'met' if ok else 'NOT met'}"
            )
        else:
            verdicts.append("silent frames at N=32: not measured")
    lines.append(
        f"Targets: <= {TARGET_CPU_PER_LISTENER}% of a core per extra audio listener, and "
        f"32 listeners with < {TARGET_SILENT_PCT}% silent frames"
        + (f" — {'; '.join(verdicts)}." if verdicts else ".")
    )
    for r in results:
        for error in dict.fromkeys(r.errors):
            lines.append(f"- N={r.listeners} {r.mode}: {error}")
    return "\n".join(lines)


def _print_round(r: FanoutRound) -> None:
    if r.failed:
        print(f"  failed: {'; '.join(r.errors)}", flush=True)
        return
    print(
        f"  server {r.cpu_pct:.1f}% core, clients {r.clients_cpu_pct:.0f}%, "
        f"bench {100 * r.bench_cpu_s / r.seconds:.0f}%, other {r.other_cpu_pct:.0f}%, "
        f"steal {100 * r.steal_cpu_s / r.seconds:.0f}%; "
        f"machine busy {100 * r.machine_busy:.0f}%; "
        f"{r.connected}/{r.listeners} listeners (setup {r.setup_s:.1f} s); "
        f"silent {r.pct(r.silent_frames):.2f}% (all-zero {r.pct(r.zero_frames):.2f}%) "
        f"missing {r.pct(r.missing_frames):.2f}% (max gap {r.max_gap_ms:.0f} ms); "
        f"failed closed {r.failed_closed_window()} in the window, "
        f"{r.failed_closed_session()}",
        flush=True,
    )
    if r.stages():
        print(f"  {r.stages()}", flush=True)
    relay = (r.media or {}).get("relay")
    if isinstance(relay, dict):
        print(f"  relay (server): {json.dumps(relay)}", flush=True)
    lag = (r.media or {}).get("loop_lag")
    if isinstance(lag, dict):
        print(
            f"  server event-loop lag p50/p95 ms: {lag['p50_ms']}/{lag['p95_ms']}; "
            f"source gaps filled {(r.media or {}).get('gap_ms', '?')} ms",
            flush=True,
        )
    for error in dict.fromkeys(r.errors):
        print(f"  ! {error}", flush=True)


async def bench(
    counts: list[int], seconds: float, client_procs: int, modes: list[str], workdir: Path
) -> list[FanoutRound]:
    """Every mode on a fresh daphne, every N on it; returns the results."""
    from bench.live import setup_django, write_program
    from streams.audio import load_audio
    from tests.live_server import subprocess_env

    paths = setup_django(workdir)
    broadcaster_cookie, listener_cookies = await asyncio.to_thread(
        make_fanout_accounts, max(counts)
    )
    program_path = workdir / "noisy_jfk_bursts.wav"
    write_program(program_path)
    program = load_audio(program_path)
    ice_host_addresses_apply([LOOPBACK])

    results: list[FanoutRound] = []
    for mode in modes:
        env = subprocess_env(
            media_root=Path(paths["media"]), db_url=paths["db_url"], extra={MODE_ENV: mode}
        )
        server = DaphneProcess(env=env, log_path=workdir / f"daphne-{mode}.log", name=mode)
        try:
            await asyncio.to_thread(server.start, timeout=90)
            for n in counts:
                print(f"{MODE_ENV}={mode} N={n}: {seconds:g} s ...", flush=True)
                try:
                    result = await asyncio.wait_for(
                        run_round(
                            server,
                            broadcaster_cookie,
                            listener_cookies,
                            listeners=n,
                            seconds=seconds,
                            mode=mode,
                            client_procs=client_procs,
                            workdir=workdir,
                            program=program,
                        ),
                        timeout=seconds + 150 + 2 * n,
                    )
                except TimeoutError:
                    result = FanoutRound(listeners=n, mode=mode, seconds=seconds)
                    result.errors.append("round timed out")
                _print_round(result)
                results.append(result)
                if not server.running:
                    print(server.log_tail(), flush=True)
                    print(f"daphne ({mode}) exited during the benchmark", flush=True)
                    break
        finally:
            code = await asyncio.to_thread(server.stop, 10.0)
            if code not in (0, None):
                print(f"daphne ({mode}) exited with {code}", flush=True)
    return results


def _int_list(text: str) -> list[int]:
    return sorted({int(p) for p in text.split(",") if p.strip()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", default="1,8,16,32", help="comma-separated N values")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round")
    parser.add_argument("--client-procs", type=int, default=4, help="listener client processes")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated {MODE_ENV} values, in order"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return asyncio.run(client_main())
    counts = _int_list(args.listeners)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not counts or min(counts) < 1 or max(counts) > 64:
        parser.error("--listeners takes 1..64")
    if not 1 <= args.seconds <= 60:
        parser.error("--seconds takes 1..60")
    if not 1 <= args.client_procs <= 16:
        parser.error("--client-procs takes 1..16")
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes {', '.join(MODES)}")

    started = time.monotonic()
    results = in_temp_workdir(
        "hearth-bench-fanout-",
        lambda workdir: asyncio.run(bench(counts, args.seconds, args.client_procs, modes, workdir)),
        keep=args.keep,
    )
    print()
    print(
        f"Fan-out benchmark: one denoised broadcast, {args.seconds:g} s per round, "
        f"listeners {counts} over up to {args.client_procs} client processes, "
        f"{os.cpu_count()} CPUs, total {time.monotonic() - started:.0f} s"
    )
    print()
    print(report(results, modes))
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
