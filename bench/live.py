"""Live benchmark: N broadcaster → listener pairs through one real daphne process.

Usage::

    .venv/bin/python bench/live.py [--pairs 1,2,4,8] [--seconds 10]

Starts one daphne on 127.0.0.1 (a fresh SQLite database in a temporary folder,
migrated first; the in-memory channel layer; ``ICE_HOST_ADDRESSES=127.0.0.1``), and
creates users, friendships and session cookies with the Django ORM in this process.
For each N and each mode (``denoise`` on, then the ``denoise: false`` baseline) it
connects N aiortc broadcasters and N aiortc listeners (one friend per broadcaster)
through the WebSocket signaling, waits until every listener hears audio, measures
for S seconds, then stops every broadcast.

Broadcasters play the 0 dB noisy JFK mix (``../shared/data``, peak 0.35, looped,
written to a temporary WAV with ``streams.audio.write_wav``) with a 120 ms voiced
"glide" burst (peak 0.6; f0 140→200 Hz, 12 harmonics: speech-like, so DeepFilterNet
keeps it, where it removes a pure 1 kHz tone) added at every whole second of the
track. Reported per N and mode:

* CPU per stream: daphne process CPU (``psutil`` user + system) over the window
  / (S * N), in % of one core.
* Underruns: listener frames missing against S * 50 (gaps) plus frames that are all
  zero (the server sends digital silence when it has no processed block; the noisy
  mix itself never decodes to an all-zero frame), in % of S * 50 * N.
* Latency: end to end, from the broadcaster track handing the frame that starts a
  burst to aiortc (wall clock) to the burst's onset in the listener's decoded audio
  (normalised matched filter; frame arrival wall clock + offset in the frame); median
  and p95 over all bursts of all listeners. Includes both jitter buffers (aiortc's
  receive side holds about 4 packets) and the server's 20 ms pacing; the denoise
  ratio shows what the processor adds.
* Silenced: blocks the server's media graph replaced by silence (fail closed),
  from the engine's own counters (``blocks_failed_closed``/``blocks_in``).
* Stage breakdown: the server's media engine reports per-stage timing in the
  ``session.stats`` frames the broadcaster's page receives (``media.stages``):
  receive (frame → block), queue (block → processing), process (the denoise stage
  in the stream's worker), encode (the one shared Opus encode), relay (packet →
  taken by the listener's sender, pacing included); medians of each stage's p50
  over the round's broadcasters. "rest" = end-to-end median − their sum: the
  network, both aiortc jitter buffers, Opus decode/encode in the client peers and
  packetisation.

Everything stays on loopback; every wait is bounded; daphne is killed at the end.
The bench's own peers share the CPU with the server (2 cores here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402
from av import AudioFrame  # noqa: E402

from bench._common import in_temp_workdir, shared_data_dir  # noqa: E402
from streams.audio import (  # noqa: E402
    FrameToMono,
    load_audio,
    make_noisy_mix,
    samples_to_frame,
    write_wav,
)
from tests.live_server import DaphneProcess, WsClient, subprocess_env  # noqa: E402

SR = 48_000
FRAME = 960
FPS = SR // FRAME
BURST_S = 0.12
BURST_HARMONICS = 12
BURST_PEAK = 0.6
MIX_PEAK = 0.35
NCC_THRESHOLD = 0.55
MAX_LATENCY_S = 0.9
LOOPBACK = "127.0.0.1"
STAGES = ("receive", "queue", "process", "encode", "relay")


# -- material ------------------------------------------------------------------
def glide_burst() -> NDArray[np.float64]:
    """A 120 ms voiced burst (f0 140→200 Hz, ``BURST_HARMONICS``), peak 1, 2 ms fades."""
    n = int(BURST_S * SR)
    t = np.arange(n) / SR
    f0 = 140.0 + 60.0 * t / t[-1]
    phase = 2 * np.pi * np.cumsum(f0) / SR
    wave = sum(np.sin((h + 1) * phase) / (h + 1) for h in range(BURST_HARMONICS))
    wave = np.asarray(wave, dtype=np.float64)
    wave /= np.max(np.abs(wave))
    fade = 96
    envelope = np.ones(n)
    envelope[:fade] = np.arange(fade) / fade
    envelope[-fade:] = envelope[:fade][::-1]
    return wave * envelope


def write_program(path: Path) -> None:
    """Write the broadcast material: noisy JFK mix (0 dB) + a burst every whole second."""
    data = shared_data_dir()
    mix = make_noisy_mix(
        load_audio(data / "jfk.flac"),
        load_audio(data / "noise_freesound_573577.wav"),
        0.0,
        peak=MIX_PEAK,
    ).astype(np.float64)
    mix = mix[: len(mix) // SR * SR]  # whole seconds, so bursts stay 1 s apart when looped
    burst = BURST_PEAK * glide_burst()
    for start in range(0, len(mix), SR):
        mix[start : start + len(burst)] += burst[: len(mix) - start]
    write_wav(path, mix)


# -- media tracks --------------------------------------------------------------
class BurstSource(MediaStreamTrack):
    """Audio track looping ``program`` at real time; logs when each burst frame leaves.

    ``burst_times`` holds ``time.monotonic()`` when ``recv`` handed over a frame that
    starts at a whole second of track time (where the program has a burst).
    """

    kind = "audio"

    def __init__(self, program: NDArray[np.float32]) -> None:
        super().__init__()
        self.program = program
        self.burst_times: list[float] = []
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> AudioFrame:
        """Next 20 ms s16 mono frame, paced at real time."""
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
        offset = self._pts % len(self.program)
        block = self.program[offset : offset + FRAME]
        if self._pts % SR == 0:
            self.burst_times.append(time.monotonic())
        return samples_to_frame(block, pts=self._pts, sample_rate=SR)


class TimedSink:
    """Collects a received audio track with each frame's arrival time (monotonic)."""

    MAX_FRAMES = 100_000

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.times: list[float] = []
        self.frames: list[NDArray[np.float32]] = []
        self.heard = asyncio.Event()
        self._convert = FrameToMono()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(MediaStreamError):
            for _ in range(self.MAX_FRAMES):
                frame = await self.track.recv()
                arrived = time.monotonic()
                samples = self._convert.convert(frame)
                self.times.append(arrived)
                self.frames.append(samples)
                if not self.heard.is_set() and np.any(samples):
                    self.heard.set()

    async def stop(self) -> None:
        """Stop collecting."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


# -- analysis ------------------------------------------------------------------
def _ncc(signal: NDArray[np.float64], template: NDArray[np.float64]) -> NDArray[np.float64]:
    """Normalised cross-correlation of ``template`` at every start index (FFT based)."""
    n, m = len(signal), len(template)
    if n < m:
        return np.zeros(0)
    size = 1 << math.ceil(math.log2(n + m))
    corr = np.fft.irfft(np.fft.rfft(signal, size) * np.conj(np.fft.rfft(template, size)), size)
    corr = corr[: n - m + 1]
    energy = np.concatenate([[0.0], np.cumsum(signal**2)])
    window = np.sqrt(np.maximum(energy[m:] - energy[:-m], 0.0))
    return corr / (window * np.linalg.norm(template) + 1e-9)


def burst_onsets(sink: TimedSink, template: NDArray[np.float64]) -> list[float]:
    """Wall-clock (monotonic) times of burst onsets in the sink's audio."""
    if not sink.frames:
        return []
    audio = np.concatenate(sink.frames).astype(np.float64)
    starts = np.cumsum([0] + [len(f) for f in sink.frames[:-1]])
    ncc = _ncc(audio, template)
    onsets: list[float] = []
    index = 0
    min_gap = SR // 2
    candidates = np.flatnonzero(ncc > NCC_THRESHOLD)
    for cand in candidates:
        if cand < index:
            continue
        peak = cand + int(np.argmax(ncc[cand : cand + min_gap // 2]))
        frame = int(np.searchsorted(starts, peak, side="right") - 1)
        onsets.append(sink.times[frame] + (peak - starts[frame]) / SR)
        index = peak + min_gap
    return onsets


def latencies(sent: list[float], heard: list[float], window: tuple[float, float]) -> list[float]:
    """Latency of each heard onset against the latest burst sent before it (in ``window``)."""
    sent_sorted = sorted(sent)
    result = []
    for t in heard:
        i = int(np.searchsorted(sent_sorted, t, side="right") - 1)
        if i < 0:
            continue
        s = sent_sorted[i]
        if window[0] <= s <= window[1] and 0 <= t - s < MAX_LATENCY_S:
            result.append(t - s)
    return result


@dataclass
class RoundResult:
    """Figures of one round (N pairs, one mode)."""

    pairs: int
    denoise: bool
    seconds: float
    cpu_s: float = 0.0
    expected_frames: int = 0
    missing_frames: int = 0
    zero_frames: int = 0
    latencies_s: list[float] = field(default_factory=list)
    bursts_sent: int = 0
    blocks_in: int = 0
    blocks_silenced: int = 0
    stages_p50_ms: dict[str, list[float]] = field(default_factory=dict)
    error: str = ""

    def stage_ms(self, name: str) -> float:
        """Median over broadcasters of the stage's p50, in ms (NaN if not reported)."""
        values = self.stages_p50_ms.get(name)
        return float(np.median(values)) if values else float("nan")

    @property
    def cpu_per_stream(self) -> float:
        """Fraction of one core per stream."""
        return self.cpu_s / (self.seconds * self.pairs) if self.pairs else 0.0

    @property
    def underrun_ratio(self) -> float:
        """(missing + all-zero frames) / expected frames."""
        bad = self.missing_frames + self.zero_frames
        return bad / self.expected_frames if self.expected_frames else float("nan")

    def latency_ms(self, q: float) -> float:
        """Latency quantile ``q`` (0..1) in ms; NaN without measurements."""
        if not self.latencies_s:
            return float("nan")
        return float(np.quantile(self.latencies_s, q) * 1000)


# -- the server ----------------------------------------------------------------
def setup_django(workdir: Path) -> dict[str, str]:
    """Point this process at a fresh SQLite DB in ``workdir``, migrate it, set up Django.

    Returns the ``DATABASE_URL`` and ``MEDIA_ROOT`` used.
    """
    db_url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    media = workdir / "media"
    media.mkdir()
    os.environ.pop("REDIS_URL", None)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=db_url,
        MEDIA_ROOT=str(media),
        SECRET_KEY="bench-secret-key-not-for-production",
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
        timeout=180,
    )
    import django

    django.setup()
    return {"db_url": db_url, "media": str(media)}


def make_accounts(pairs: int) -> list[tuple[str, str]]:
    """``pairs`` (broadcaster cookie, listener cookie) couples of friends."""
    from tests.live_server import session_cookie
    from users.models import Friendship, User

    cookies = []
    for i in range(pairs):
        b = User.objects.create_user(f"bench-b{i}", password="bench-pass-123")
        listener = User.objects.create_user(f"bench-l{i}", password="bench-pass-123")
        low, high = sorted((b, listener), key=lambda u: u.id)
        Friendship.objects.create(user_low=low, user_high=high)
        cookies.append((session_cookie(b), session_cookie(listener)))
    return cookies


async def latest_media_stats(ws: WsClient) -> dict[str, Any]:
    """A fresh ``session.stats`` frame's ``media`` figures (older buffered ones dropped)."""
    for frame in list(ws.pending):
        if frame.get("type") == "session.stats":
            ws.pending.remove(frame)
    frame = await ws.expect("session.stats", timeout=10.0, match=lambda f: "media" in f)
    return frame["media"]


# -- one round -----------------------------------------------------------------
async def run_round(
    server: DaphneProcess,
    cookies: list[tuple[str, str]],
    *,
    pairs: int,
    seconds: float,
    denoise: bool,
    program: NDArray[np.float32],
) -> RoundResult:
    """Connect ``pairs`` broadcaster/listener couples, measure ``seconds``, stop."""
    import psutil

    result = RoundResult(pairs=pairs, denoise=denoise, seconds=seconds)
    sockets: list[WsClient] = []
    peers: list[RTCPeerConnection] = []
    sources: list[BurstSource] = []
    sinks: list[TimedSink] = []
    session_ids: list[int] = []
    broadcaster_ws: list[WsClient] = []

    async def offer(pc: RTCPeerConnection) -> str:
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp

    try:
        for i in range(pairs):
            b_cookie, l_cookie = cookies[i]
            bws = await WsClient.open(server.ws_url, b_cookie, origin=server.origin, name=f"b{i}")
            sockets.append(bws)
            broadcaster_ws.append(bws)
            await bws.expect("hello")
            lws = await WsClient.open(server.ws_url, l_cookie, origin=server.origin, name=f"l{i}")
            sockets.append(lws)
            await lws.expect("hello")

            source = BurstSource(program)
            sources.append(source)
            pc_b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            peers.append(pc_b)
            pc_b.addTransceiver(source, direction="sendonly")
            await bws.send_json(
                {"type": "broadcast.start", "sdp": await offer(pc_b), "denoise": denoise}
            )
            answer = await bws.expect("broadcast.answer", timeout=30)
            await pc_b.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            session_ids.append(answer["session_id"])

            pc_l = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            peers.append(pc_l)
            pc_l.addTransceiver("audio", direction="recvonly")
            got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            pc_l.on("track", lambda track, got=got: got.done() or got.set_result(track))
            await lws.send_json(
                {
                    "type": "listen.start",
                    "session_id": answer["session_id"],
                    "sdp": await offer(pc_l),
                }
            )
            listen = await lws.expect("listen.answer", timeout=30)
            await pc_l.setRemoteDescription(RTCSessionDescription(listen["sdp"], "answer"))
            sinks.append(TimedSink(await asyncio.wait_for(got, 15)))

        await asyncio.wait_for(asyncio.gather(*(s.heard.wait() for s in sinks)), 30)
        await asyncio.sleep(1.0)  # let every path settle before measuring

        proc = psutil.Process(server.pid)
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        t1 = time.monotonic()
        cpu1 = proc.cpu_times()
        result.cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        await asyncio.sleep(MAX_LATENCY_S)  # the last bursts' way to the listeners
        for sink in sinks:
            await sink.stop()

        template = glide_burst()
        expected = round(seconds * FPS)
        window = (t0, t1 - MAX_LATENCY_S)
        for source, sink in zip(sources, sinks, strict=True):
            in_window = [f for t, f in zip(sink.times, sink.frames, strict=True) if t0 <= t < t1]
            result.expected_frames += expected
            result.missing_frames += max(0, expected - len(in_window))
            result.zero_frames += sum(1 for f in in_window if not np.any(f))
            result.bursts_sent += sum(1 for s in source.burst_times if window[0] <= s <= window[1])
            result.latencies_s += latencies(
                source.burst_times, burst_onsets(sink, template), window
            )

        for bws in broadcaster_ws:
            media = await latest_media_stats(bws)
            result.blocks_in += media["blocks_in"]
            result.blocks_silenced += media["blocks_failed_closed"]
            for name, figures in media["stages"].items():
                result.stages_p50_ms.setdefault(name, []).append(figures["p50_ms"])

        for bws in broadcaster_ws:
            await bws.send_json({"type": "broadcast.stop"})
            await bws.expect("broadcast.ended", timeout=30)
    except Exception as exc:  # report the round as failed, keep benchmarking
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        for sink in sinks:
            await sink.stop()
        for source in sources:
            source.stop()
        for pc in peers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 5)
        for ws in sockets:
            await ws.close()
    return result


# -- report --------------------------------------------------------------------
def _ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b):
        return "n/a"
    if b == 0:
        return "=" if a == 0 else "∞"
    return f"{a / b:.2f}×"


def report(results: list[RoundResult]) -> str:
    """Markdown table: denoise / baseline / ratio for each N."""
    by_key = {(r.pairs, r.denoise): r for r in results}
    lines = [
        "| N | CPU/stream (% core) | underruns (% frames) | latency median (ms) "
        "| latency p95 (ms) | silenced blocks | bursts heard |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sorted({r.pairs for r in results}):
        d, b = by_key.get((n, True)), by_key.get((n, False))
        if d is None or b is None:
            continue

        def cell(fd: float, fb: float, fmt: str = "{:.1f}") -> str:
            return f"{fmt.format(fd)} / {fmt.format(fb)} ({_ratio(fd, fb)})"

        def silenced(r: RoundResult) -> str:
            return f"{100 * r.blocks_silenced / r.blocks_in:.1f}%" if r.blocks_in else "n/a"

        def heard(r: RoundResult) -> str:
            return f"{len(r.latencies_s)}/{r.bursts_sent}"

        lines.append(
            f"| {n} | {cell(100 * d.cpu_per_stream, 100 * b.cpu_per_stream)} "
            f"| {cell(100 * d.underrun_ratio, 100 * b.underrun_ratio, '{:.2f}')} "
            f"| {cell(d.latency_ms(0.5), b.latency_ms(0.5), '{:.0f}')} "
            f"| {cell(d.latency_ms(0.95), b.latency_ms(0.95), '{:.0f}')} "
            f"| {silenced(d)} / {silenced(b)} | {heard(d)} / {heard(b)} |"
        )
    lines.append("")
    lines.append("Cells: denoise / baseline (ratio denoise ÷ baseline).")
    lines.append("")
    lines.append(
        "| N | mode | receive | queue | process | encode | relay | server total "
        "| rest (network, jitter buffers, client codecs) | end to end |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (r.pairs, not r.denoise)):
        parts = [r.stage_ms(n) for n in STAGES]
        total = sum(p for p in parts if not math.isnan(p))
        e2e = r.latency_ms(0.5)
        mode = "denoise" if r.denoise else "baseline"
        cells = " | ".join(f"{p:.2f}" for p in parts)
        lines.append(
            f"| {r.pairs} | {mode} | {cells} | {total:.1f} | {e2e - total:.0f} | {e2e:.0f} |"
        )
    lines.append("")
    lines.append("Stage cells: ms, median over broadcasters of each stage's p50.")
    errors = [r for r in results if r.error]
    for r in errors:
        mode = "denoise" if r.denoise else "baseline"
        lines.append(f"- N={r.pairs} {mode} failed: {r.error}")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------
async def bench(pairs_list: list[int], seconds: float, workdir: Path) -> list[RoundResult]:
    """Run every round against one daphne; returns the results."""
    paths = setup_django(workdir)
    cookies = await asyncio.to_thread(make_accounts, max(pairs_list))
    program_path = workdir / "noisy_jfk_bursts.wav"
    write_program(program_path)
    program = load_audio(program_path)
    from streams.ice import ice_host_addresses_apply  # needs Django set up

    ice_host_addresses_apply([LOOPBACK])

    env = subprocess_env(media_root=Path(paths["media"]), db_url=paths["db_url"])
    server = DaphneProcess(env=env, log_path=workdir / "daphne.log", name="daphne")
    results: list[RoundResult] = []
    try:
        await asyncio.to_thread(server.start, timeout=90)
        for n in pairs_list:
            for denoise in (True, False):
                mode = "denoise" if denoise else "baseline"
                print(f"N={n} {mode}: {seconds:g} s ...", flush=True)
                result = await asyncio.wait_for(
                    run_round(
                        server, cookies, pairs=n, seconds=seconds, denoise=denoise, program=program
                    ),
                    timeout=seconds + 90 + 10 * n,
                )
                if result.error:
                    print(f"  failed: {result.error}", flush=True)
                else:
                    print(
                        f"  cpu/stream {100 * result.cpu_per_stream:.1f}% core, "
                        f"underruns {100 * result.underrun_ratio:.2f}% "
                        f"(missing {result.missing_frames}, zero {result.zero_frames}), "
                        f"latency median {result.latency_ms(0.5):.0f} ms "
                        f"p95 {result.latency_ms(0.95):.0f} ms "
                        f"({len(result.latencies_s)}/{result.bursts_sent} bursts), "
                        f"silenced {result.blocks_silenced}/{result.blocks_in}, "
                        + ", ".join(f"{n} {result.stage_ms(n):.2f} ms" for n in STAGES),
                        flush=True,
                    )
                results.append(result)
                if not server.running:
                    print(server.log_tail(), flush=True)
                    raise RuntimeError("daphne exited during the benchmark")
    finally:
        code = await asyncio.to_thread(server.stop, 10.0)
        if code not in (0, None):
            print(f"daphne exited with {code}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="1,2,4,8", help="comma-separated N values")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    pairs_list = sorted({int(p) for p in args.pairs.split(",") if p.strip()})
    if not pairs_list or min(pairs_list) < 1 or max(pairs_list) > 32:
        parser.error("--pairs takes 1..32")
    if not 1 <= args.seconds <= 120:
        parser.error("--seconds takes 1..120")

    started = time.monotonic()
    results = in_temp_workdir(
        "hearth-bench-live-",
        lambda workdir: asyncio.run(bench(pairs_list, args.seconds, workdir)),
        keep=args.keep,
    )
    print()
    print(
        f"Live benchmark: {args.seconds:g} s per round, pairs {pairs_list}, "
        f"{os.cpu_count()} CPUs, total {time.monotonic() - started:.0f} s"
    )
    print()
    print(report(results))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
