"""Audio/video sync of a live camera broadcast as a listener's browser would present it.

Usage::

    .venv/bin/python bench/av_sync.py [--seconds 20] [--modes redact,passthrough]
        [--json OUT.json]

A browser lip-syncs the audio and video tracks of one stream by mapping each track's
RTP timestamps to the sender's NTP clock through that track's RTCP Sender Reports
(RFC 3550 §6.4.1) and playing what has equal NTP time together. This bench measures
the offset that mapping gives for Hearth's live camera path.

One daphne on 127.0.0.1 (``bench/video_fanout.py``'s setup: fresh SQLite database in a
temporary folder, in-memory channel layer, ``HEARTH_MODEL_DIR`` = ``../shared/models``).
For each mode one broadcaster (aiortc peer in this process) goes live, denoising and
bleeping off, with ``mode``'s blur switches (``redact``: faces and plates, the go-live
page's defaults; ``passthrough``: both off), sending

* a 640x480 camera at 30 fps, dark (Y = 16) except a full-white flash (Y = 235) of
  ``FLASH_FRAMES`` frames every ``PERIOD_S`` of content, and
* 48 kHz mono audio, silent except a 1 kHz beep of ``BEEP_S`` at the same content
  instants,

both paced from one shared start time, with pts from that clock (1/90000 and 1/48000),
so flash and beep share their capture time. One listener (aiortc peer in this
process, the listen page's offer: audio and video) receives both. Its aiortc receivers
are instrumented: every RTCP Sender Report (NTP time, RTP time, SSRC) is recorded as it
arrives (``RTCRtpReceiver._handle_rtcp_packet``), and the decoders are wrapped to see
each decoded frame with its RTP timestamp (aiortc's ``TimestampMapper`` makes decoder
pts relative to the first RTP timestamp received; its origin is added back).

Flash onsets: the first decoded frame whose mean luma exceeds ``FLASH_LUMA`` after a
dark one (onsets whose preceding received frame is more than one frame interval earlier
are dropped as uncertain: the flash's first frame may have been skipped). Beep onsets:
the first sample above ``BEEP_LEVEL`` after at least ``PERIOD_S`` / 2 of silence, at
sample precision inside its decoded frame. Each onset's RTP time is converted to NTP
with the latest Sender Report of its track received before the frame was decoded
(``t = ntp_sr + (rtp - rtp_sr) / clock_rate``). Offset per event = t(video flash) -
t(audio beep), each flash paired with the beep nearest to it (within ``PERIOD_S`` / 2):
positive means the video is presented late relative to the sound.

Everything stays on loopback; every wait is bounded; daphne is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from aiortc import RTCConfiguration, RTCPeerConnection  # noqa: E402
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402

from bench._common import in_temp_workdir, shared_models_dir  # noqa: E402
from bench.fanout import _listener_close, _listener_open, make_fanout_accounts  # noqa: E402
from bench.video_fanout import MODES, broadcast_offer  # noqa: E402
from streams.ice import ice_host_addresses_apply  # noqa: E402
from tests.live_server import LOOPBACK, DaphneProcess, WsClient  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 480, 30
SAMPLE_RATE = 48_000  # Opus's RTP clock (RFC 7587 §4.1)
VIDEO_CLOCK = 90_000  # VP8's RTP clock (RFC 7741 §6.1)
AUDIO_FRAME = 960  # 20 ms at 48 kHz, aiortc's Opus frame
PERIOD_S = 2  # a flash and a beep every PERIOD_S of content
FLASH_FRAMES = 3  # 100 ms at 30 fps, as long as the beep
BEEP_S = 0.1
BEEP_HZ = 1000.0
BEEP_AMPLITUDE = 0.5  # of full scale
DARK_Y, FLASH_Y = 16, 235  # BT.601 limited-range black and white
FLASH_LUMA = 128.0  # mean Y that tells a flash frame from a dark one
BEEP_LEVEL = 0.05  # |sample| / full scale above which a sample is beep
SETTLE_S = 3.0  # after the listener's first frames, before events count
# ITU-R BT.1359-1 detectability window as offsets t(video) - t(audio), s: audio lagging
# by 125 ms (video early, -0.125) to audio leading by 45 ms (video late, +0.045)
BT1359 = (-0.125, 0.045)


class SharedClock:
    """One capture clock for both tracks: the monotonic time of the first frame asked
    for by either."""

    def __init__(self) -> None:
        self.start: float | None = None

    def origin(self) -> float:
        """The shared start (set on first call), ``time.monotonic()`` seconds."""
        if self.start is None:
            self.start = time.monotonic()
        return self.start


class FlashCamera(MediaStreamTrack):
    """640x480 yuv420p at ``FPS``, dark with a white flash of ``FLASH_FRAMES`` frames
    at every ``PERIOD_S`` of content; pts in 1/90000 from the shared clock."""

    kind = "video"

    def __init__(self, clock: SharedClock) -> None:
        super().__init__()
        self.clock = clock
        self.index = 0
        ysize = WIDTH * HEIGHT
        self.planes = {
            level: np.concatenate(
                [np.full(ysize, level, np.uint8), np.full(ysize // 2, 128, np.uint8)]
            ).reshape(HEIGHT * 3 // 2, WIDTH)
            for level in (DARK_Y, FLASH_Y)
        }

    async def recv(self) -> av.VideoFrame:
        """The next frame, at its capture time."""
        if self.readyState != "live":
            raise MediaStreamError
        start = self.clock.origin()
        index = self.index
        self.index += 1
        await asyncio.sleep(max(0.0, start + index / FPS - time.monotonic()))
        flash = index % (PERIOD_S * FPS) < FLASH_FRAMES
        frame = av.VideoFrame.from_ndarray(
            self.planes[FLASH_Y if flash else DARK_Y], format="yuv420p"
        )
        frame.pts = index * (VIDEO_CLOCK // FPS)
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        return frame


class BeepMicrophone(MediaStreamTrack):
    """48 kHz mono s16 in 20 ms frames, silent with a 1 kHz beep of ``BEEP_S`` at
    every ``PERIOD_S`` of content; pts in 1/48000 from the shared clock."""

    kind = "audio"

    def __init__(self, clock: SharedClock) -> None:
        super().__init__()
        self.clock = clock
        self.index = 0

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms, at its capture time."""
        if self.readyState != "live":
            raise MediaStreamError
        start = self.clock.origin()
        index = self.index
        self.index += 1
        first = index * AUDIO_FRAME
        await asyncio.sleep(max(0.0, start + first / SAMPLE_RATE - time.monotonic()))
        n = np.arange(first, first + AUDIO_FRAME)
        in_period = n % (PERIOD_S * SAMPLE_RATE)
        beep = in_period < round(BEEP_S * SAMPLE_RATE)
        wave = BEEP_AMPLITUDE * np.sin(2 * np.pi * BEEP_HZ * in_period / SAMPLE_RATE)
        samples = np.where(beep, np.round(wave * 32767), 0).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = first
        frame.time_base = Fraction(1, SAMPLE_RATE)
        return frame


@dataclass
class Probe:
    """What the listener's receivers saw: Sender Reports and decoded frames.

    ``srs[kind]``: (arrival monotonic s, NTP seconds, RTP timestamp); ``frames[kind]``:
    (decode monotonic s, RTP timestamp relative to the first one, level, audio
    onset sample or -1) where level is the mean luma (video) or the peak |sample| /
    full scale (audio)."""

    srs: dict[str, list[tuple[float, float, int]]] = field(
        default_factory=lambda: {"audio": [], "video": []}
    )
    frames: dict[str, list[tuple[float, int, float, int]]] = field(
        default_factory=lambda: {"audio": [], "video": []}
    )
    receivers: dict[int, str] = field(default_factory=dict)  # id(receiver) -> kind
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: bool = False


PROBE = Probe()


def _frame_level(frame: Any) -> tuple[float, int]:
    """(mean luma, -1) of a video frame; (peak |sample| / full scale, index of the first
    sample above ``BEEP_LEVEL`` or -1) of an s16 audio frame (channel 0)."""
    if isinstance(frame, av.VideoFrame):
        return float(frame.to_ndarray(format="gray").mean()), -1
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    mono = (data.reshape(-1)[::channels] if data.shape[0] == 1 else data[0]).astype(np.float64)
    level = np.abs(mono) / 32768.0
    above = np.flatnonzero(level > BEEP_LEVEL)
    return float(level.max(initial=0.0)), int(above[0]) if above.size else -1


def probe_install() -> None:
    """Instrument this process's aiortc receivers: record the Sender Reports of the
    receivers in ``PROBE.receivers`` and wrap every decoder so each decoded frame is
    recorded (while ``PROBE.active``) with its relative RTP timestamp."""
    import aiortc.rtcrtpreceiver as receiver_module
    from aiortc.rtp import RtcpSrPacket

    cls = receiver_module.RTCRtpReceiver
    if getattr(cls, "_hearth_av_probe", False):
        return
    handle = cls._handle_rtcp_packet

    async def handle_rtcp(self: Any, packet: Any) -> None:
        kind = PROBE.receivers.get(id(self))
        if kind is not None and isinstance(packet, RtcpSrPacket):
            ntp = packet.sender_info.ntp_timestamp
            with PROBE.lock:
                PROBE.srs[kind].append(
                    (
                        time.monotonic(),
                        (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32,
                        packet.sender_info.rtp_timestamp,
                    )
                )
        await handle(self, packet)

    cls._handle_rtcp_packet = handle_rtcp
    cls._hearth_av_probe = True
    original = receiver_module.get_decoder

    class Recording:
        def __init__(self, inner: Any, kind: str) -> None:
            self.inner, self.kind = inner, kind

        def decode(self, encoded_frame: Any) -> list[Any]:
            frames = self.inner.decode(encoded_frame)
            if PROBE.active:
                now = time.monotonic()
                for frame in frames:
                    level, onset = _frame_level(frame)
                    with PROBE.lock:
                        PROBE.frames[self.kind].append(
                            (now, int(encoded_frame.timestamp), level, onset)
                        )
            return frames

    def get_decoder(codec: Any) -> Any:
        kind = "video" if str(codec.mimeType).lower().startswith("video/") else "audio"
        return Recording(original(codec), kind)

    receiver_module.get_decoder = get_decoder


def _origin(receiver: Any) -> int:
    """The first RTP timestamp a receiver's ``TimestampMapper`` saw (its decoder pts
    are relative to it, modulo 2**32)."""
    mapper = receiver._RTCRtpReceiver__timestamp_mapper
    return int(mapper._origin or 0)


def _to_ntp(
    srs: list[tuple[float, float, int]], decoded_at: float, rtp: int, clock_rate: int
) -> float:
    """NTP seconds of RTP timestamp ``rtp`` through the latest SR received before
    ``decoded_at``; nan when none was."""
    before = [s for s in srs if s[0] <= decoded_at]
    if not before:
        return math.nan
    _, ntp, sr_rtp = before[-1]
    diff = (rtp - sr_rtp) % 2**32
    if diff >= 2**31:
        diff -= 2**32
    return ntp + diff / clock_rate


def onsets(origin: dict[str, int], after: float) -> dict[str, list[float]]:
    """NTP seconds of every flash onset and beep onset decoded after ``after``."""
    out: dict[str, list[float]] = {"audio": [], "video": []}
    step = VIDEO_CLOCK // FPS
    with PROBE.lock:
        frames = {k: list(v) for k, v in PROBE.frames.items()}
        srs = {k: list(v) for k, v in PROBE.srs.items()}
    previous: tuple[float, int, float, int] | None = None
    for f in frames["video"]:
        onset = previous is not None and f[2] > FLASH_LUMA >= previous[2] and f[0] >= after
        # an onset counts only when no frame was skipped just before it
        if onset and previous is not None and f[1] - previous[1] <= step:
            rtp = (f[1] + origin["video"]) % 2**32
            out["video"].append(_to_ntp(srs["video"], f[0], rtp, VIDEO_CLOCK))
        previous = f
    quiet_since: int | None = None
    for f in frames["audio"]:
        decoded_at, rel, _, onset = f
        if onset < 0:
            if quiet_since is None:
                quiet_since = rel
            continue
        quiet = quiet_since is not None and rel - quiet_since >= PERIOD_S * SAMPLE_RATE // 2
        if quiet and decoded_at >= after:
            rtp = (rel + onset + origin["audio"]) % 2**32
            out["audio"].append(_to_ntp(srs["audio"], decoded_at, rtp, SAMPLE_RATE))
        quiet_since = None
    return {k: [t for t in v if not math.isnan(t)] for k, v in out.items()}


def pair_offsets(video: list[float], audio: list[float]) -> list[float]:
    """t(flash) - t(nearest beep) in seconds, for flashes with a beep within
    ``PERIOD_S`` / 2."""
    offsets = []
    for t in video:
        if audio:
            nearest = min(audio, key=lambda a: abs(a - t))
            if abs(nearest - t) < PERIOD_S / 2:
                offsets.append(t - nearest)
    return offsets


@dataclass
class ModeResult:
    """Figures of one mode."""

    mode: str
    offsets_ms: list[float] = field(default_factory=list)
    flashes: int = 0
    beeps: int = 0
    srs: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def stat(self, q: float) -> float:
        """A percentile of the offsets (ms), nan when none."""
        return float(np.percentile(self.offsets_ms, q)) if self.offsets_ms else math.nan

    def p95_abs(self) -> float:
        """95th percentile of |offset| (ms)."""
        if not self.offsets_ms:
            return math.nan
        return float(np.percentile(np.abs(self.offsets_ms), 95))


async def run_mode(
    server: DaphneProcess, cookie: str, listener_cookie: str, mode: str, seconds: float
) -> ModeResult:
    """Go live in ``mode``, listen for ``seconds`` after settling, stop; the offsets."""
    result = ModeResult(mode=mode)
    blur_faces, blur_plates = MODES[mode]
    clock = SharedClock()
    camera, microphone = FlashCamera(clock), BeepMicrophone(clock)
    ws = await WsClient.open(server.ws_url, cookie, origin=server.origin, name=f"b-{mode}")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    listener = None
    drain: asyncio.Future[None] | None = None
    with PROBE.lock:
        for kind in ("audio", "video"):
            PROBE.srs[kind].clear()
            PROBE.frames[kind].clear()
        PROBE.receivers.clear()
    try:
        await ws.expect("hello")
        pc.addTrack(microphone)
        pc.addTrack(camera)
        answer = await broadcast_offer(ws, pc, blur_faces=blur_faces, blur_plates=blur_plates)
        drain = asyncio.ensure_future(_drain_quietly(ws))
        job = {
            "ws_url": server.ws_url,
            "origin": server.origin,
            "video": True,
            "max_frames": int((seconds + 120) * 50),
        }
        PROBE.active = True
        listener = await asyncio.wait_for(
            _listener_open(job, listener_cookie, f"l-{mode}", int(answer["session_id"])), 60
        )
        for transceiver in listener.pc.getTransceivers():
            PROBE.receivers[id(transceiver.receiver)] = transceiver.kind
        assert listener.sink is not None
        await asyncio.wait_for(listener.sink.heard.wait(), 30)
        after = time.monotonic() + SETTLE_S
        await asyncio.sleep(SETTLE_S + seconds)
        origin = {t.kind: _origin(t.receiver) for t in listener.pc.getTransceivers()}
        found = onsets(origin, after)
        result.flashes, result.beeps = len(found["video"]), len(found["audio"])
        result.offsets_ms = [1000 * o for o in pair_offsets(found["video"], found["audio"])]
        result.srs = {k: len(v) for k, v in PROBE.srs.items()}
    except Exception as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}"[:400])
    finally:
        PROBE.active = False
        if drain is not None:
            drain.cancel()
        if listener is not None:
            await _listener_close(listener)
        with contextlib.suppress(Exception):
            await ws.send_json({"type": "broadcast.stop"})
            await ws.expect("broadcast.ended", timeout=30)
        camera.stop()
        microphone.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pc.close(), 5)
        await ws.close()
    return result


async def _drain_quietly(ws: WsClient) -> None:
    """Keep the broadcaster page's socket read (session.stats, presence)."""
    with contextlib.suppress(Exception):
        for _ in range(100_000):
            await ws.ws.recv()


async def bench(modes: list[str], seconds: float, workdir: Path) -> list[ModeResult]:
    """Every mode on one daphne; returns their results."""
    from bench.live import setup_django
    from tests.live_server import subprocess_env

    paths = setup_django(workdir)
    accounts = [
        await asyncio.to_thread(make_fanout_accounts, 1, prefix=f"avsync{i}")
        for i in range(len(modes))
    ]
    probe_install()
    ice_host_addresses_apply([LOOPBACK])
    env = subprocess_env(
        media_root=Path(paths["media"]),
        db_url=paths["db_url"],
        extra={"HEARTH_MODEL_DIR": str(shared_models_dir())},
    )
    server = DaphneProcess(env=env, log_path=workdir / "daphne.log", name="avsync")
    results = []
    try:
        await asyncio.to_thread(server.start, timeout=90)
        for mode, (cookie, listeners) in zip(modes, accounts, strict=True):
            print(f"{mode}: {seconds:g} s ...", flush=True)
            try:
                result = await asyncio.wait_for(
                    run_mode(server, cookie, listeners[0], mode, seconds), seconds + 180
                )
            except TimeoutError:
                result = ModeResult(mode=mode, errors=["timed out"])
            _print(result)
            results.append(result)
            if not server.running:
                print(server.log_tail(), flush=True)
                break
    finally:
        await asyncio.to_thread(server.stop, 10.0)
    return results


def _print(r: ModeResult) -> None:
    events = ", ".join(f"{o:+.1f}" for o in r.offsets_ms)
    print(
        f"  {r.flashes} flashes, {r.beeps} beeps, SRs {r.srs}; offsets (ms, + = video "
        f"late): {events or 'none'}",
        flush=True,
    )
    for error in r.errors:
        print(f"  ! {error}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the modes, print the figures (and write ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per mode")
    parser.add_argument("--modes", default="redact,passthrough", help="comma-separated")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes {', '.join(MODES)}")
    if not 4 <= args.seconds <= 120:
        parser.error("--seconds takes 4..120")
    results = in_temp_workdir(
        "hearth-bench-av-sync-",
        lambda workdir: asyncio.run(bench(modes, args.seconds, workdir)),
        keep=args.keep,
    )
    load = os.getloadavg()
    print()
    print(
        f"A/V sync at a listener (RTCP SR mapping), {WIDTH}x{HEIGHT}@{FPS}, flash + beep "
        f"every {PERIOD_S} s, {args.seconds:g} s per mode, {os.cpu_count()} CPUs, load "
        f"average {load[0]:.1f}"
    )
    low, high = BT1359
    for r in results:
        med, p95 = r.stat(50), r.p95_abs()
        inside = (
            "n/a"
            if not r.offsets_ms
            else str(all(1000 * low <= o <= 1000 * high for o in r.offsets_ms))
        )
        print(
            f"{r.mode}: {len(r.offsets_ms)} events, median {med:+.1f} ms, p95 |offset| "
            f"{p95:.1f} ms, min {r.stat(0):+.1f}, max {r.stat(100):+.1f}; all within "
            f"BT.1359 (-125 ms audio lagging .. +45 ms audio leading): {inside}"
        )
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2, default=str))
    return 1 if any(r.errors or not r.offsets_ms for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
