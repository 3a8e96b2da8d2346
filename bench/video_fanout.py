"""Concurrent live camera broadcasts: server CPU per broadcast and per extra video listener.

Usage::

    .venv/bin/python bench/video_fanout.py [--broadcasts 1,2] [--listeners 1,8]
        [--seconds 10] [--modes passthrough,redact] [--client-procs 2] [--json OUT.json]
    .venv/bin/python bench/video.py --concurrent [the same options]

One daphne on 127.0.0.1 (fresh SQLite database in a temporary folder, the in-memory
channel layer, media in the daphne process, ``HEARTH_MODEL_DIR`` = ``../shared/models``
so faces are found by YuNet as configured in production), with the machinery of
``bench/fanout.py``: its listener client processes (``bench/fanout.py --client``, nice
19), its accounts, its stats reader and its CPU window. For every B broadcasts, mode
and L listeners per broadcast, one round:

* B broadcasters, aiortc peers in this process, go live at once, each sending a
  640x480 camera at 30 fps (a pan across ``city.jpg`` from
  :mod:`bench._video_material`, 120 px/s, bouncing at its edges; aiortc's own VP8
  encoder) and aiortc's silent audio track, denoising off. Mode ``passthrough``
  (the baseline) goes live with ``blur_faces`` and ``blur_plates`` off: the camera
  still runs Hearth's whole live video path (aiortc decode, the video graph's
  ``VideoTrackSource`` and ``GraphRunner`` with no stage, the shared VP8 encoder and
  relay, the live MP4 recording), without detection or blur. Mode ``redact`` turns
  both on: faces every frame, plates every 3rd, tracking, blur and the recheck pass
  (``live_redaction_stages``), as the go-live page's defaults.
* B x L listeners join (listen page offer: audio and video), spread over the client
  processes. A client counts each listener's VP8 frames as aiortc's jitter buffer
  reassembles them, undecoded (``fanout.video_decoding_skip``: 16 VP8 decoders would
  take most of a core from the server under test), and the keyframes among them.
* Once every listener has a first frame and ``SETTLE_S`` has passed (the keyframes
  asked for by the joining listeners are out), a window of S seconds is measured.

Server CPU is the daphne process's (``psutil``, user + system, all threads) over the
window: the peers run in other processes (broadcasters in this one, listeners in the
clients), so none of their cost is in it; theirs is reported beside it, with the rest of
the machine's load. It is split further by thread: daphne's threads at nice
+``VIDEO_NICE`` are the camera graphs' stream workers, which run the redaction stages
(:func:`stage_threads_cpu`, from ``/proc``), and the process's kernel (system) time is
read too. Reported per round: server CPU in % of one core (and its stage threads'),
and per broadcast (/ B); per extra listener, (cpu(L max) - cpu(L min)) /
((L max - L min) x B), from the two rounds of the same B and mode in this run, for all
of daphne and for daphne outside the stage threads; listener frame rate (frames received in
the window / S: mean and lowest listener); the server's frames out per second per
broadcast and those blurred whole (from the broadcaster page's ``session.stats``
``video`` figures); keyframes per listener per second. Each listener also receives the
broadcast's audio (Opus, encoded once), as a listen page does: its share of the
per-listener cost is in the figure (``bench/fanout.py`` measures audio alone).

On loopback the kernel's delivery of every packet into a listener's socket is billed
to the sending server. With redaction on, the stages take whatever CPU is free (the
source keeps only the newest frame): on a machine short of cores, server CPU then
shows what was available, not what redaction would need, and extra listeners take
their CPU from redaction (fewer frames out) rather than adding to the total. So the
target is judged on all of daphne in the pass-through rounds and on daphne outside
the stage threads in the redaction rounds. Everything stays on loopback;
every loop and wait is bounded; daphne and the client processes are killed at the end.
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
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from numpy.typing import NDArray

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack  # noqa: E402

from bench._common import in_temp_workdir, shared_models_dir  # noqa: E402
from bench._video_material import pan_frames  # noqa: E402
from bench.fanout import (  # noqa: E402
    ClientProcess,
    CpuWindow,
    StatsReader,
    clients_ready,
    make_fanout_accounts,
    measure_window,
)
from streams.ice import ice_host_addresses_apply  # noqa: E402
from streams.media.workers import VIDEO_NICE  # noqa: E402
from tests.live_server import LOOPBACK, DaphneProcess, WsClient  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 480, 30  # "480p30"
PAN_STEP = 4  # px per frame: 120 px/s at 30 fps, as tests/test_video_live.py's 8 at 15
PAN_TOP = 60  # the band of city.jpg with the faces
MODES: dict[str, tuple[bool, bool]] = {
    "passthrough": (False, False),  # (blur_faces, blur_plates): the baseline
    "redact": (True, True),
}
SETTLE_S = 2.0  # after every listener has a frame, before the window
TARGET_CPU_PER_LISTENER = 1.0  # % of one core per extra video listener (issue 6)


class PanCamera(MediaStreamTrack):
    """A 640x480 camera at ``FPS``: the pan's frames in a loop, paced at real time,
    as yuv420p ``av.VideoFrame`` s with pts in 1/90000, until stopped."""

    kind = "video"

    def __init__(self, frames: list[NDArray[np.uint8]]) -> None:
        super().__init__()
        self.frames = frames  # yuv420p planes, shape (h * 3 / 2, w)
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        """The next frame, at its time."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        index = self.sent
        self.sent += 1
        await asyncio.sleep(max(0.0, self._start + index / FPS - now))
        frame = av.VideoFrame.from_ndarray(self.frames[index % len(self.frames)], format="yuv420p")
        frame.pts = index * (90_000 // FPS)
        frame.time_base = Fraction(1, 90_000)
        return frame


def camera_frames() -> list[NDArray[np.uint8]]:
    """One bounce of the pan across ``city.jpg`` (80 frames), as yuv420p arrays."""
    span = 800 - WIDTH  # city.jpg is 800 px wide
    crops = pan_frames(
        frames=2 * span // PAN_STEP, width=WIDTH, height=HEIGHT, step=PAN_STEP, top=PAN_TOP
    )
    return [
        av.VideoFrame.from_ndarray(c, format="bgr24").reformat(format="yuv420p").to_ndarray()
        for c in crops
    ]


def stage_threads_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far (user + system) of each thread of ``pid`` that runs at least
    :data:`VIDEO_NICE` nicer than the process: the camera graphs' stream workers, which
    run the redaction stages (``Workers.stream_worker``), and any thread they started
    (a thread inherits its creator's nice). From ``/proc/<pid>/task/*/stat`` (Linux):
    fields 14-15 (utime, stime, clock ticks) and 19 (nice), ``proc(5)``.

    Returns {} where ``/proc`` cannot be read.
    """
    tick = os.sysconf("SC_CLK_TCK")

    def fields(path: str) -> list[str]:
        with open(path) as f:
            return f.read().rsplit(")", 1)[1].split()  # from field 3 (state) on

    try:
        base = int(fields(f"/proc/{pid}/stat")[16])
        tids = os.listdir(f"/proc/{pid}/task")
    except (OSError, IndexError, ValueError):
        return {}
    cpu = {}
    for tid in tids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = fields(f"/proc/{pid}/task/{tid}/stat")
            if int(f[16]) >= base + VIDEO_NICE:
                cpu[int(tid)] = (int(f[11]) + int(f[12])) / tick
    return cpu


def stage_cpu_s(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the stage threads spent between two :func:`stage_threads_cpu`
    readings (a thread started in between counts from 0; one that ended in between
    is lost: none ends while its broadcast is live)."""
    return sum(cpu - before.get(tid, 0.0) for tid, cpu in after.items())


def _server_probe(pid: int) -> tuple[dict[int, float], float]:
    """(:func:`stage_threads_cpu`, the process's system CPU seconds so far)."""
    import psutil

    try:
        system = psutil.Process(pid).cpu_times().system
    except psutil.Error:
        system = math.nan
    return stage_threads_cpu(pid), system


@dataclass
class _Broadcast:
    ws: WsClient
    pc: RTCPeerConnection
    camera: PanCamera
    session_id: int
    stats: StatsReader


async def broadcast_offer(
    ws: WsClient, pc: RTCPeerConnection, *, blur_faces: bool, blur_plates: bool
) -> dict[str, Any]:
    """Send ``pc``'s offer as ``broadcast.start`` (denoise off, the blur switches) and
    apply the server's answer; returns the ``broadcast.answer`` message.

    Raises:
        Whatever ``WsClient.expect`` raises when no answer comes within 60 s.
    """
    await pc.setLocalDescription(await pc.createOffer())
    await ws.send_json(
        {
            "type": "broadcast.start",
            "sdp": pc.localDescription.sdp,
            "denoise": False,
            "blur_faces": blur_faces,
            "blur_plates": blur_plates,
        }
    )
    answer = await ws.expect("broadcast.answer", timeout=60)
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    return answer


async def _go_live(
    server: DaphneProcess, cookie: str, mode: str, frames: list[NDArray[np.uint8]], name: str
) -> _Broadcast:
    """One broadcaster live with the camera (and silent audio), ``mode``'s switches."""
    blur_faces, blur_plates = MODES[mode]
    ws = await WsClient.open(server.ws_url, cookie, origin=server.origin, name=name)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    camera = PanCamera(frames)
    try:
        await ws.expect("hello")
        pc.addTrack(AudioStreamTrack())
        pc.addTrack(camera)
        answer = await broadcast_offer(ws, pc, blur_faces=blur_faces, blur_plates=blur_plates)
    except BaseException:
        camera.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pc.close(), 5)
        await ws.close()
        raise
    return _Broadcast(ws, pc, camera, int(answer["session_id"]), StatsReader(ws))


async def _end(broadcast: _Broadcast, errors: list[str]) -> None:
    """Stop the broadcast (bounded) and close its peer and page."""
    await broadcast.stats.stop()
    with contextlib.suppress(Exception):
        await broadcast.ws.send_json({"type": "broadcast.stop"})
        await broadcast.ws.expect("broadcast.ended", timeout=30)
    broadcast.stats.note_new()
    errors += [f"server error frame: {f}"[:300] for f in broadcast.stats.errors]
    broadcast.camera.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(broadcast.pc.close(), 5)
    await broadcast.ws.close()


@dataclass
class VideoRound:
    """Figures of one round: B broadcasts, L listeners each, one mode."""

    broadcasts: int
    listeners: int  # per broadcast
    mode: str
    seconds: float
    cpu: CpuWindow | None = None
    stages_s: float = math.nan  # daphne's redaction-stage threads (nice +VIDEO_NICE)
    system_s: float = math.nan  # daphne's CPU in the kernel (sendto on loopback, ...)
    connected: int = 0
    setup_s: float = 0.0
    listener_fps: list[float] = field(default_factory=list)
    keyframes_per_s: float = math.nan  # per listener, mean
    max_gap_ms: float = 0.0
    # per broadcast, between the first and the last video stats inside the window
    server_video: list[dict[str, float] | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """No usable figures."""
        return self.cpu is None

    def pct(self, cpu_s: float) -> float:
        """CPU seconds over the window in % of one core."""
        return 100 * cpu_s / self.seconds

    @property
    def server_pct(self) -> float:
        """daphne's CPU, % of one core (nan when failed)."""
        return math.nan if self.cpu is None else self.pct(self.cpu.server_s)

    @property
    def stages_pct(self) -> float:
        """daphne's redaction-stage threads' CPU, % of one core."""
        return self.pct(self.stages_s)

    @property
    def system_pct(self) -> float:
        """daphne's CPU in the kernel (system time), % of one core."""
        return self.pct(self.system_s)

    @property
    def outside_stages_pct(self) -> float:
        """daphne's CPU outside the redaction stages (receive, decode, conversion,
        encode, recording, relay, every listener's sending), % of one core."""
        return self.server_pct - self.stages_pct

    @property
    def per_broadcast_pct(self) -> float:
        """daphne's CPU per broadcast, % of one core."""
        return self.server_pct / self.broadcasts

    @property
    def fps_mean(self) -> float:
        """Mean frames per second received per listener (missing listeners count 0)."""
        expected = self.broadcasts * self.listeners
        return sum(self.listener_fps) / expected if expected else math.nan

    @property
    def fps_min(self) -> float:
        """The lowest listener's frames per second (0 if one is missing)."""
        if len(self.listener_fps) < self.broadcasts * self.listeners:
            return 0.0
        return min(self.listener_fps, default=math.nan)

    def server_fps(self, key: str) -> float:
        """A video counter's growth per second per broadcast inside the window
        (``frames_redacted``: frames out; ``frames_blurred_whole``; ``frames``: in)."""
        rates = [
            w[key] / w["seconds"]
            for w in self.server_video
            if w is not None and key in w and w["seconds"] > 0
        ]
        return sum(rates) / len(rates) if rates else math.nan

    def summary(self) -> dict[str, Any]:
        """The round's figures for ``--json``."""
        data = asdict(self)
        data.update(
            server_cpu_pct=self.server_pct,
            stages_cpu_pct=self.stages_pct,
            system_cpu_pct=self.system_pct,
            outside_stages_cpu_pct=self.outside_stages_pct,
            per_broadcast_cpu_pct=self.per_broadcast_pct,
            listener_fps_mean=self.fps_mean,
            listener_fps_min=self.fps_min,
            server_frames_in_per_s=self.server_fps("frames"),
            server_frames_out_per_s=self.server_fps("frames_redacted"),
            server_blurred_whole_per_s=self.server_fps("frames_blurred_whole"),
        )
        if self.cpu is not None:
            data.update(
                clients_cpu_pct=self.pct(self.cpu.clients_s),
                bench_cpu_pct=self.pct(self.cpu.bench_s),
                other_cpu_pct=self.cpu.other_pct,
            )
        return data


async def run_round(
    server: DaphneProcess,
    accounts: list[tuple[str, list[str]]],
    *,
    listeners: int,
    mode: str,
    seconds: float,
    client_procs: int,
    workdir: Path,
    frames: list[NDArray[np.uint8]],
) -> VideoRound:
    """``len(accounts)`` camera broadcasts with ``listeners`` listeners each: go live,
    connect, measure ``seconds``, stop."""
    count = len(accounts)
    result = VideoRound(broadcasts=count, listeners=listeners, mode=mode, seconds=seconds)
    procs = max(1, min(client_procs, count * listeners))
    clients: list[ClientProcess] = []
    live: list[_Broadcast] = []
    try:
        tag = f"{mode}-b{count}-l{listeners}"
        spawned = asyncio.gather(
            *(
                ClientProcess.spawn(f"c{k}", workdir / f"client-{tag}-c{k}.log")
                for k in range(procs)
            )
        )
        outcomes = await asyncio.gather(
            *(
                _go_live(server, cookie, mode, frames, f"b{i}")
                for i, (cookie, _) in enumerate(accounts)
            ),
            return_exceptions=True,
        )
        clients = list(await spawned)
        live = [o for o in outcomes if isinstance(o, _Broadcast)]
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise RuntimeError(f"go-live failed: {type(failed[0]).__name__}: {failed[0]}")

        pairs = [
            (cookie, b.session_id)
            for b, (_, cookies) in zip(live, accounts, strict=True)
            for cookie in cookies[:listeners]
        ]
        first_frame_wait_s = 30.0 + len(pairs)
        jobs = [
            {
                "name": client.name,
                "ws_url": server.ws_url,
                "origin": server.origin,
                "video": True,
                "cookies": [c for c, _ in pairs[k::procs]],
                "session_ids": [s for _, s in pairs[k::procs]],
                "max_frames": int((seconds + 120 + first_frame_wait_s) * FPS),
                "heard_wait_s": first_frame_wait_s,
                "command_wait_s": 60.0,
            }
            for k, client in enumerate(clients)
        ]
        started = time.monotonic()
        result.connected, errors = await clients_ready(clients, jobs, first_frame_wait_s + 60)
        result.setup_s = time.monotonic() - started
        result.errors += [e.replace("heard nothing", "got no video frame") for e in errors]
        if result.connected == 0:
            raise RuntimeError("no listener connected")

        await asyncio.sleep(SETTLE_S)
        window = await measure_window(
            server.pid, clients, seconds, probe=lambda: _server_probe(server.pid)
        )
        cpu = window.cpu
        result.errors += window.errors + cpu.warnings()
        if window.probes is not None:
            (stages0, system0), (stages1, system1) = window.probes
            result.system_s = system1 - system0
            if stages0:
                result.stages_s = stage_cpu_s(stages0, stages1)
        heard = window.listeners
        keyframes = 0
        for lis in heard:
            result.listener_fps.append(min(int(lis["received"]), round(seconds * FPS)) / seconds)
            keyframes += int(lis.get("keyframes", 0))
            result.max_gap_ms = max(result.max_gap_ms, float(lis["max_gap_ms"]))
        if heard:
            result.keyframes_per_s = keyframes / len(heard) / seconds
        for broadcast in live:
            await broadcast.stats.stop()
            broadcast.stats.note_new()
            result.server_video.append(broadcast.stats.video_window(window.t0, window.t1))
        result.cpu = cpu
    except Exception as exc:  # report the round as failed, keep benchmarking
        result.errors.append(f"{type(exc).__name__}: {exc}"[:400])
    finally:
        await asyncio.gather(*(_end(b, result.errors) for b in live))
        await asyncio.gather(*(c.finish() for c in clients))
    return result


# -- report --------------------------------------------------------------------
def _fmt(value: float, spec: str = "{:.1f}") -> str:
    return "n/a" if value is None or math.isnan(value) else spec.format(value)


def per_extra_listener(
    results: list[VideoRound], mode: str, broadcasts: int, *, figure: str = "server"
) -> float:
    """(cpu(L max) - cpu(L min)) / ((L max - L min) x B), % of a core, from the rounds of
    ``mode`` with B = ``broadcasts``; nan without two listener counts.

    ``figure``: ``"server"`` (all of daphne), ``"outside_stages"`` (daphne outside the
    redaction-stage threads) or ``"system"`` (daphne's kernel time): the
    :class:`VideoRound` property ``<figure>_pct``.
    """
    rounds = {
        r.listeners: r
        for r in results
        if r.mode == mode and r.broadcasts == broadcasts and not r.failed
    }
    if len(rounds) < 2:
        return math.nan
    low, high = min(rounds), max(rounds)

    def cpu(r: VideoRound) -> float:
        return float(getattr(r, f"{figure}_pct"))

    return (cpu(rounds[high]) - cpu(rounds[low])) / ((high - low) * broadcasts)


def report(results: list[VideoRound]) -> str:
    """Markdown table, the derived figures and the target.

    The verdict on the target takes daphne's whole CPU in the pass-through rounds, and
    its CPU outside the redaction-stage threads in the redaction rounds: the stages
    use whatever CPU is free (see the module's docstring), so the whole process's
    figure there measures the machine, not the listener.
    """
    lines = [
        "| B | mode | L each | server CPU, % core (redaction stages) | per broadcast "
        "| per extra listener: all / outside stages "
        "| listener fps mean / min | server frames out/s per broadcast (blurred whole) "
        "| keyframes/s per listener | broadcasters / clients / other, % core |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.failed:
            lines.append(f"| {r.broadcasts} | {r.mode} | {r.listeners} | failed |||||||")
            continue
        assert r.cpu is not None
        top = max(x.listeners for x in results if x.mode == r.mode and x.broadcasts == r.broadcasts)
        extra = "—"
        if r.listeners == top:
            extra = " / ".join(
                _fmt(per_extra_listener(results, r.mode, r.broadcasts, figure=f), "{:.2f}")
                for f in ("server", "outside_stages")
            )
        lines.append(
            f"| {r.broadcasts} | {r.mode} | {r.listeners} "
            f"| {_fmt(r.server_pct)} ({_fmt(r.stages_pct)}) "
            f"| {_fmt(r.per_broadcast_pct)} | {extra} "
            f"| {_fmt(r.fps_mean)} / {_fmt(r.fps_min)} "
            f"| {_fmt(r.server_fps('frames_redacted'))} "
            f"({_fmt(r.server_fps('frames_blurred_whole'))}) "
            f"| {_fmt(r.keyframes_per_s, '{:.2f}')} "
            f"| {r.pct(r.cpu.bench_s):.0f} / {r.pct(r.cpu.clients_s):.0f} "
            f"/ {_fmt(r.cpu.other_pct, '{:.0f}')} |"
        )
    lines += [
        "",
        "Server CPU: the daphne process (all threads) over the window; in brackets its "
        f"threads at nice +{VIDEO_NICE} (the camera graphs' stream workers: detection, "
        "tracking, blur, recheck). Per extra listener: (cpu(L max) - cpu(L min)) / "
        "((L max - L min) x B) of all of daphne, and of daphne outside those threads; each "
        f"listener receives the camera and the audio. Listener fps: VP8 frames received in "
        f"the window ({FPS} sent per second). Broadcasters: this process (B aiortc peers "
        "encoding the cameras); clients: the listener processes (nice 19, frames counted "
        "undecoded); other: the rest of the machine (±10% is tick-accounting noise).",
    ]
    verdicts = []
    for mode in MODES:
        outside = mode != "passthrough"
        for b in sorted({r.broadcasts for r in results if r.mode == mode}):
            figure = "outside_stages" if outside else "server"
            extra = per_extra_listener(results, mode, b, figure=figure)
            if not math.isnan(extra):
                ok = extra <= TARGET_CPU_PER_LISTENER
                what = " outside the stages" if outside else ""
                kernel = per_extra_listener(results, mode, b, figure="system")
                verdicts.append(
                    f"{mode}, B={b}: {extra:.2f}%{what} (of which kernel time "
                    f"{_fmt(kernel, '{:.2f}')}%) → {'met' if ok else 'NOT met'}"
                )
    for b in sorted({r.broadcasts for r in results}):
        base = {r.listeners: r for r in results if r.broadcasts == b and r.mode == "passthrough"}
        red = {r.listeners: r for r in results if r.broadcasts == b and r.mode == "redact"}
        for n in sorted(set(base) & set(red)):
            if base[n].failed or red[n].failed:
                continue
            lines.append(
                f"Redaction over the pass-through baseline, B={b}, L={n}: "
                f"{red[n].per_broadcast_pct - base[n].per_broadcast_pct:+.1f}% of a core "
                f"per broadcast, frames out {_fmt(red[n].server_fps('frames_redacted'))} "
                f"vs {_fmt(base[n].server_fps('frames_redacted'))} per second."
            )
    lines.append(
        f"Target: an extra video listener <= {TARGET_CPU_PER_LISTENER:g}% of a core"
        + (f" — {'; '.join(verdicts)}." if verdicts else " — not measured (needs two L).")
    )
    for r in results:
        for error in dict.fromkeys(r.errors):
            lines.append(f"- B={r.broadcasts} {r.mode} L={r.listeners}: {error}")
    return "\n".join(lines)


def _print_round(r: VideoRound) -> None:
    if r.failed:
        print(f"  failed: {'; '.join(dict.fromkeys(r.errors))}", flush=True)
        return
    assert r.cpu is not None
    print(
        f"  server {r.server_pct:.1f}% core ({r.per_broadcast_pct:.1f}% per broadcast, "
        f"redaction stages {r.stages_pct:.1f}%); "
        f"broadcasters {r.pct(r.cpu.bench_s):.0f}%, clients {r.pct(r.cpu.clients_s):.0f}%, "
        f"other {r.cpu.other_pct:.0f}%, machine busy {100 * r.cpu.machine_busy:.0f}%; "
        f"{r.connected}/{r.broadcasts * r.listeners} listeners (setup {r.setup_s:.1f} s); "
        f"listener fps {r.fps_mean:.1f} mean / {r.fps_min:.1f} min "
        f"(max gap {r.max_gap_ms:.0f} ms, keyframes {r.keyframes_per_s:.2f}/s); "
        f"server per broadcast: in {_fmt(r.server_fps('frames'))}/s, "
        f"out {_fmt(r.server_fps('frames_redacted'))}/s, "
        f"blurred whole {_fmt(r.server_fps('frames_blurred_whole'))}/s",
        flush=True,
    )
    for error in dict.fromkeys(r.errors):
        print(f"  ! {error}", flush=True)


async def bench(
    broadcasts: list[int],
    listeners: list[int],
    modes: list[str],
    seconds: float,
    client_procs: int,
    workdir: Path,
) -> list[VideoRound]:
    """Every B, mode and L on one daphne; returns the rounds."""
    from bench.live import setup_django
    from tests.live_server import subprocess_env

    paths = setup_django(workdir)
    accounts = [
        await asyncio.to_thread(make_fanout_accounts, max(listeners), prefix=f"video{b}")
        for b in range(max(broadcasts))
    ]
    frames = camera_frames()
    ice_host_addresses_apply([LOOPBACK])
    env = subprocess_env(
        media_root=Path(paths["media"]),
        db_url=paths["db_url"],
        extra={"HEARTH_MODEL_DIR": str(shared_models_dir())},
    )
    server = DaphneProcess(env=env, log_path=workdir / "daphne.log", name="video")
    results: list[VideoRound] = []
    try:
        await asyncio.to_thread(server.start, timeout=90)
        for b in broadcasts:
            for mode in modes:
                for n in listeners:
                    print(f"B={b} {mode} L={n}: {seconds:g} s ...", flush=True)
                    try:
                        result = await asyncio.wait_for(
                            run_round(
                                server,
                                accounts[:b],
                                listeners=n,
                                mode=mode,
                                seconds=seconds,
                                client_procs=client_procs,
                                workdir=workdir,
                                frames=frames,
                            ),
                            timeout=seconds + 180 + 2 * b * n,
                        )
                    except TimeoutError:
                        result = VideoRound(broadcasts=b, listeners=n, mode=mode, seconds=seconds)
                        result.errors.append("round timed out")
                    _print_round(result)
                    results.append(result)
                    if not server.running:
                        print(server.log_tail(), flush=True)
                        print("daphne exited during the benchmark", flush=True)
                        return results
    finally:
        code = await asyncio.to_thread(server.stop, 10.0)
        if code not in (0, None):
            print(f"daphne exited with {code}", flush=True)
    return results


def _int_list(text: str) -> list[int]:
    return sorted({int(p) for p in text.split(",") if p.strip()})


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run every round, print the table (and write ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broadcasts", default="1,2", help="comma-separated B values")
    parser.add_argument("--listeners", default="1,8", help="comma-separated L per broadcast")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round")
    parser.add_argument("--client-procs", type=int, default=2, help="listener client processes")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, in order")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    broadcasts = _int_list(args.broadcasts)
    listeners = _int_list(args.listeners)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not broadcasts or min(broadcasts) < 1 or max(broadcasts) > 4:
        parser.error("--broadcasts takes 1..4")
    if not listeners or min(listeners) < 1 or max(listeners) > 16:
        parser.error("--listeners takes 1..16")
    if not 1 <= args.seconds <= 60:
        parser.error("--seconds takes 1..60")
    if not 1 <= args.client_procs <= 8:
        parser.error("--client-procs takes 1..8")
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes {', '.join(MODES)}")

    started = time.monotonic()
    results = in_temp_workdir(
        "hearth-bench-video-fanout-",
        lambda workdir: asyncio.run(
            bench(broadcasts, listeners, modes, args.seconds, args.client_procs, workdir)
        ),
        keep=args.keep,
    )
    load = os.getloadavg()
    print()
    print(
        f"Concurrent camera broadcasts: {WIDTH}x{HEIGHT} at {FPS} fps, B {broadcasts}, "
        f"L {listeners} per broadcast, {args.seconds:g} s per round, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f}, total {time.monotonic() - started:.0f} s"
    )
    print()
    print(report(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "width": WIDTH,
                    "height": HEIGHT,
                    "fps": FPS,
                    "cpus": os.cpu_count(),
                    "rounds": [r.summary() for r in results],
                    "per_extra_listener_pct": {
                        figure: {
                            f"{mode}, B={b}": per_extra_listener(results, mode, b, figure=figure)
                            for mode in modes
                            for b in broadcasts
                        }
                        for figure in ("server", "outside_stages", "system")
                    },
                },
                indent=2,
                default=str,
            )
        )
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
