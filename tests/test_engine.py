"""The media engine alone (no Django): graph, stages, workers, sinks, timeline, relay."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from streams.audio import load_audio, write_wav
from streams.media.graph import (
    FileSource,
    Graph,
    GraphRunner,
    QueuePolicy,
    Reblocker,
    Sink,
    TrackSource,
    _PtsMapper,
)
from streams.media.items import BLOCK_SAMPLES, AudioChunk, Item
from streams.media.metrics import MediaMetrics
from streams.media.relay import OpusEncoder, Relay, RelaySink
from streams.media.sinks import CallbackSink, CollectSink, RecorderSink
from streams.media.stage import ProcessorStage
from streams.media.timeline import Decision, DecisionTimeline, DelayLine, Verdict, bleep
from streams.media.workers import DeadlineExceeded, StreamWorker, Workers
from streams.processors.base import PassThrough, process_offline
from streams.recording import WavRecorder

pytestmark = pytest.mark.backend_free

REPO = Path(__file__).resolve().parents[1]


# -- material and fakes ------------------------------------------------------------
class ToneTrack(MediaStreamTrack):
    """``count`` frames of a 440 Hz tone, s16 stereo 48 kHz 960 samples (like Opus).

    pts start at a large RTP-like value; ``pace_s`` paces frames like a live peer.
    """

    kind = "audio"

    def __init__(self, count: int, *, pace_s: float = 0.0, pts0: int = 123_456) -> None:
        super().__init__()
        self.count = count
        self.sent = 0
        self.pace_s = pace_s
        self.pts0 = pts0

    async def recv(self) -> AudioFrame:
        if self.sent >= self.count:
            self.stop()
            raise MediaStreamError
        if self.pace_s:
            await asyncio.sleep(self.pace_s)
        t = (np.arange(BLOCK_SAMPLES) + self.sent * BLOCK_SAMPLES) / 48_000
        mono = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
        frame = AudioFrame.from_ndarray(
            np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = 48_000
        frame.pts = self.pts0 + self.sent * BLOCK_SAMPLES
        frame.time_base = Fraction(1, 48_000)
        self.sent += 1
        return frame


class Delaying(PassThrough):
    """Output = input delayed by ``latency`` samples (a stand-in for DeepFilterNet3)."""

    name = "delaying"

    def __init__(self, latency: int = 1440) -> None:
        super().__init__()
        self._latency = latency
        self._buffer = np.zeros(latency, dtype=np.float32)

    @property
    def latency_samples(self) -> int:
        return self._latency

    def process(self, block: np.ndarray) -> np.ndarray:
        joined = np.concatenate([self._buffer, np.asarray(block, np.float32)])
        self._buffer = joined[len(block) :]
        return joined[: len(block)].copy()


class Exploding(PassThrough):
    """Raises on its third block."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def process(self, block: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("model crashed")
        return super().process(block)


class StallsOnce(PassThrough):
    """Blocks its third call until released (a hung native call)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.calls = 0
        self.release = release

    def process(self, block: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == 3:
            self.release.wait(30)
        return super().process(block)


class HangsForever(PassThrough):
    """Every call blocks until the test ends (released in teardown)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def process(self, block: np.ndarray) -> np.ndarray:
        self.release.wait(60)
        return super().process(block)


class Slow(PassThrough):
    """60 ms per 20 ms block: three times slower than real time."""

    def process(self, block: np.ndarray) -> np.ndarray:
        time.sleep(0.06)
        return super().process(block)


@pytest.fixture
def workers():
    pool = Workers(load_threads=1, io_threads=1, encode_threads=1)
    yield pool
    pool.shutdown()


@pytest.fixture
def release():
    event = threading.Event()
    yield event
    event.set()  # let hung worker threads end


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


async def _run_track(
    processor, source, workers, tmp_path, *, deadline_s=2.0, max_lag_s=None, name="s"
):
    recorder = RecorderSink(WavRecorder(tmp_path / f"{name}.wav"), workers.io)
    collect = CollectSink()
    runner = GraphRunner(
        Graph(stages=[ProcessorStage(processor)], sinks=[recorder, collect]),
        TrackSource(source),
        workers=workers,
        name=name,
        deadline_s=deadline_s,
        max_lag_s=max_lag_s,
    )
    metrics = await asyncio.wait_for(runner.run(), timeout=30)
    return runner, metrics, collect, load_audio(tmp_path / f"{name}.wav")


def _assert_recorded_as_heard(recorded: np.ndarray, collect: CollectSink) -> None:
    """The recorder got exactly what listeners got: silence where they got silence."""
    heard = collect.samples
    assert len(recorded) == len(heard)
    np.testing.assert_allclose(recorded, np.clip(heard, -1, 32767 / 32768), atol=1 / 32768)


# -- boundaries ---------------------------------------------------------------------
def test_engine_imports_nothing_from_django() -> None:
    code = (
        "import sys; import streams.media.graph, streams.media.relay, streams.media.sinks, "
        "streams.media.timeline, streams.media.workers, streams.media.video, "
        "streams.media.detectors, streams.media.video_io; "
        "bad = [m for m in sys.modules if m == 'django' or m.startswith(('django.', 'channels'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- re-blocking and timestamps -------------------------------------------------------
def test_reblocker_cuts_blocks_fills_gaps_and_pads_the_tail() -> None:
    reblocker = Reblocker(960)
    ones = np.ones(600, np.float32)
    assert reblocker.push(AudioChunk(ones, pts=1000, arrived=0.0)) == []
    blocks = reblocker.push(AudioChunk(ones, pts=1600, arrived=0.0))
    assert [b.pts for b in blocks] == [1000] and len(blocks[0].samples) == 960
    # 300 samples lost: the gap is filled with silence, timing kept.
    blocks = reblocker.push(AudioChunk(ones * 2, pts=2500, arrived=0.0))
    assert [b.pts for b in blocks] == [1960]
    block = blocks[0].samples
    assert np.all(block[:240] == 1) and np.all(block[240:540] == 0) and np.all(block[540:] == 2)
    assert reblocker.gap_samples == 300
    # Overlapping samples are dropped.
    assert reblocker.push(AudioChunk(ones * 3, pts=3000, arrived=0.0)) == []
    assert reblocker.next_pts == 3600
    tail = reblocker.finish()
    assert tail is not None and tail.pts == 2920 and len(tail.samples) == 960
    assert np.all(tail.samples[680:] == 0)
    assert reblocker.finish() is None


def test_pts_mapper_starts_at_zero_unwraps_rtp_and_reanchors() -> None:
    mapper = _PtsMapper()
    tb = Fraction(1, 48_000)
    near_wrap = (1 << 32) - 960
    assert mapper.map(near_wrap, tb, 960) == 0
    assert mapper.map(0, tb, 960) == 960  # 32-bit RTP timestamp wrapped
    assert mapper.map(960 + 480, tb, 960) == 960 + 960 + 480  # a 10 ms gap is kept
    # A jump of an hour is a discontinuity: continue where the stream was.
    assert mapper.map(48_000 * 3600, tb, 960) == 960 * 2 + 480 + 960
    assert mapper.map(None, None, 960) == 960 * 4 + 480


class HangingTrack(MediaStreamTrack):
    """Delivers ``count`` tone frames, then never another (a media path gone silent)."""

    kind = "audio"

    def __init__(self, count: int) -> None:
        super().__init__()
        self.tone = ToneTrack(count)

    async def recv(self) -> AudioFrame:
        if self.tone.sent < self.tone.count:
            return await self.tone.recv()
        await asyncio.Event().wait()  # forever (until cancelled)
        raise AssertionError("unreachable")


async def _chunks(source: TrackSource, n: int) -> list[AudioChunk]:
    return [c for c in [await asyncio.wait_for(source.read(), 5) for _ in range(n)] if c]


async def test_track_source_replaced_mid_stream_keeps_one_timeline_with_the_gap() -> None:
    # A reconnecting broadcaster: the first track goes silent, a new one replaces it
    # (with its own random RTP timestamps); its audio follows the wall-clock gap.
    source = TrackSource(HangingTrack(3))
    first = await _chunks(source, 3)
    assert [c.pts for c in first] == [0, 960, 1920]
    pending = asyncio.ensure_future(source.read())  # waits on the silent track
    await asyncio.sleep(0.3)
    source.replace(ToneTrack(2, pts0=987_654_321))
    chunk = await asyncio.wait_for(pending, 5)
    assert chunk is not None and source.replacements == 1
    gap = chunk.pts - 3 * 960
    assert gap >= round(0.25 * 48_000), gap  # the time without frames, at least
    assert gap <= round(TrackSource.MAX_REPLACE_GAP_S * 48_000)
    following = await asyncio.wait_for(source.read(), 5)
    assert following is not None and following.pts == chunk.pts + 960  # contiguous again


async def test_track_source_holds_an_ended_track_for_a_replacement_or_ends() -> None:
    ends: list[int] = []
    source = TrackSource(ToneTrack(2), hold_s=5.0, on_track_end=lambda: ends.append(1))
    assert len(await _chunks(source, 2)) == 2
    pending = asyncio.ensure_future(source.read())  # the track ends: held, not ended
    await asyncio.sleep(0.2)
    assert not pending.done() and ends == [1]
    source.replace(ToneTrack(1, pts0=5))
    chunk = await asyncio.wait_for(pending, 5)
    assert chunk is not None and chunk.pts >= 2 * 960
    # Ended again and nothing replaces it within hold_s: the stream ends.
    source.hold_s = 0.2
    assert await asyncio.wait_for(source.read(), 5) is None
    assert ends == [1, 1]
    # Without a hold (the default) an ended track ends the stream at once.
    plain = TrackSource(ToneTrack(1))
    assert (await plain.read()) is not None and await plain.read() is None


# -- the graph over a file: the batch path ---------------------------------------------
async def test_file_graph_is_sample_exact_with_the_offline_runner(tmp_path, workers) -> None:
    rng = np.random.default_rng(7)
    signal = (0.2 * rng.standard_normal(48_000 + 123)).astype(np.float32)
    path = tmp_path / "in.wav"
    write_wav(path, signal)
    samples = load_audio(path)
    expected, latency = process_offline(Delaying(1440), samples)
    collect = CollectSink()
    runner = GraphRunner(
        Graph(stages=[ProcessorStage(Delaying(1440))], sinks=[collect]),
        FileSource(path),
        workers=workers,
        name="file",
        max_lag_s=None,
    )
    await runner.run()
    assert latency == 1440 and runner.graph.latency_ticks() == 1440
    np.testing.assert_array_equal(collect.samples, expected)
    assert collect.chunks[0].pts == 0  # delay compensated by content timestamps


# -- failing closed -------------------------------------------------------------------------
async def test_passthrough_reaches_every_sink(tmp_path, workers) -> None:
    _, metrics, collect, recorded = await _run_track(
        PassThrough(), ToneTrack(25), workers, tmp_path
    )
    assert metrics.blocks_in == 25 and metrics.blocks_processed == 25
    assert len(collect.samples) == 25 * BLOCK_SAMPLES and collect.chunks[0].pts == 0
    assert _rms(collect.samples) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    _assert_recorded_as_heard(recorded, collect)
    assert {"receive", "queue", "process", "passthrough"} <= set(metrics.snapshot()["stages"])


async def test_processor_error_fails_closed_to_silence(tmp_path, workers) -> None:
    runner, metrics, collect, recorded = await _run_track(
        Exploding(), ToneTrack(10), workers, tmp_path
    )
    assert "model crashed" in metrics.failed and runner.stage_failed
    blocks = [c.samples for c in collect.chunks]
    assert len(blocks) == 10
    assert _rms(np.concatenate(blocks[:2])) > 0.3  # before the failure: processed audio
    assert all(not np.any(b) for b in blocks[2:])  # from the failure on: silence, never raw
    assert metrics.blocks_failed_closed == 8
    _assert_recorded_as_heard(recorded, collect)


async def test_stalled_processor_is_abandoned_and_the_recording_stays_complete(
    tmp_path, workers, release
) -> None:
    # Regression: after a stall, later blocks reached listeners as silence but were
    # never written to the recording, so the WAV was shorter than the broadcast.
    processor = StallsOnce(release)
    _, metrics, collect, recorded = await _run_track(
        processor, ToneTrack(12), workers, tmp_path, deadline_s=0.2
    )
    assert metrics.failed.endswith("stalled")
    assert len(collect.chunks) == 12 and len(recorded) == 12 * BLOCK_SAMPLES
    assert np.any(collect.chunks[1].samples)
    assert all(not np.any(c.samples) for c in collect.chunks[2:])
    _assert_recorded_as_heard(recorded, collect)
    release.set()  # the hung call returns late: its result is dropped, nothing else ran
    await asyncio.sleep(0.1)
    assert processor.calls == 3


async def test_hung_processors_do_not_starve_other_streams(tmp_path, workers, release) -> None:
    # Regression: one shared pool ran every stream; two hung processors on two
    # threads stalled every stream of the process.
    hung = [
        _run_track(
            HangsForever(release),
            ToneTrack(50, pace_s=0.02),
            workers,
            tmp_path,
            deadline_s=0.3,
            max_lag_s=5.0,
            name=f"hung{i}",
        )
        for i in range(3)
    ]
    healthy = _run_track(
        PassThrough(),
        ToneTrack(50, pace_s=0.02),
        workers,
        tmp_path,
        deadline_s=0.3,
        max_lag_s=5.0,
        name="healthy",
    )
    *hung_results, healthy_result = await asyncio.gather(*hung, healthy)
    _, metrics, collect, _ = healthy_result
    assert metrics.failed == "" and metrics.blocks_processed == 50
    assert metrics.blocks_failed_closed == 0
    assert len(collect.chunks) == 50 and all(np.any(c.samples) for c in collect.chunks)
    for _, hung_metrics, hung_collect, hung_recorded in hung_results:
        assert hung_metrics.failed.endswith("stalled")
        assert len(hung_collect.chunks) == 50  # every block left, as silence
        assert not np.any(hung_collect.samples) and not np.any(hung_recorded)


async def test_processor_falling_behind_is_skipped_instead_of_leaking(tmp_path, workers) -> None:
    _, metrics, collect, recorded = await _run_track(
        Slow(), ToneTrack(50, pace_s=0.02), workers, tmp_path, max_lag_s=0.1
    )
    assert metrics.lag_events > 0
    assert metrics.blocks_failed_closed == metrics.lag_events
    silent = [c for c in collect.chunks if not np.any(c.samples)]
    assert len(silent) == metrics.lag_events and len(collect.chunks) == 50
    assert metrics.failed == ""  # slow is not broken: it resumes when caught up
    _assert_recorded_as_heard(recorded, collect)


def test_stream_worker_abandons_a_hung_call(release) -> None:
    async def main() -> None:
        worker = StreamWorker("t")
        assert await worker.run(lambda: 41 + 1, deadline_s=5) == 42
        with pytest.raises(DeadlineExceeded):
            await worker.run(lambda: release.wait(30), deadline_s=0.05)
        assert worker.abandoned
        with pytest.raises(RuntimeError, match="abandoned"):
            worker.submit(lambda: None)

    asyncio.run(main())


# -- sinks ------------------------------------------------------------------------------------
class GatedSink(Sink):
    """A sink whose writes block until ``gate`` opens (a stuck disk)."""

    name = "gated"
    policy = QueuePolicy.LOSSLESS
    max_items = 10_000

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate
        self.items: list[Item] = []

    async def write(self, item: Item) -> None:
        await self.gate.wait()
        self.items.append(item)


class BrokenSink(Sink):
    name = "broken"

    async def write(self, item: Item) -> None:
        raise OSError("disk gone")


async def _until(condition, timeout: float = 20.0) -> None:
    """Wait (bounded) until ``condition()`` holds; a loaded machine only makes it slower."""

    for _ in range(round(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not reached within {timeout} s")


def _tone_runner(sinks: list[Sink], blocks: int, workers: Workers) -> GraphRunner:
    return GraphRunner(
        Graph(stages=[ProcessorStage(PassThrough())], sinks=sinks),
        TrackSource(ToneTrack(blocks)),
        workers=workers,
        name="sinks",
        max_lag_s=None,
    )


async def test_a_stuck_sink_delays_nobody_and_loses_nothing(workers) -> None:
    gate = asyncio.Event()
    stuck, fast, broken = GatedSink(gate), CollectSink(), BrokenSink()
    runner = _tone_runner([stuck, broken, fast], 40, workers)
    run = asyncio.ensure_future(runner.run())
    await _until(lambda: len(fast.chunks) == 40)
    assert len(fast.chunks) == 40 and stuck.items == []  # fast sink done, stuck one waits
    gate.set()
    await asyncio.wait_for(run, 10)
    assert len(stuck.items) == 40  # lossless: nothing dropped while it was stuck


async def test_drop_oldest_queue_is_bounded_and_counts_drops(workers) -> None:
    gate = asyncio.Event()
    sink = GatedSink(gate)
    sink.policy, sink.max_items = QueuePolicy.DROP_OLDEST, 5
    runner = _tone_runner([sink], 30, workers)
    run = asyncio.ensure_future(runner.run())
    await _until(lambda: runner.metrics.blocks_in == 30)  # all in before the gate opens
    gate.set()
    metrics = await asyncio.wait_for(run, 10)
    assert metrics.sink_drops["gated"] >= 20
    assert len(sink.items) <= 6
    assert sink.items[-1].pts == 29 * BLOCK_SAMPLES  # the newest survived


# -- decision timeline and delay line --------------------------------------------------------
def test_timeline_redactions_win_and_unposted_ranges_are_unknown() -> None:
    timeline = DecisionTimeline()
    assert timeline.verdict(start=0, end=100) is Verdict.UNKNOWN
    timeline.clear(start=0, end=1000)
    timeline.clear(start=1000, end=1500)  # merged with the first
    timeline.redact(Decision(start=400, end=600, label="PHONE_NUMBER", source="fake"))
    segments = timeline.resolve(start=0, end=2000)
    assert [(s.start, s.end, s.verdict) for s in segments] == [
        (0, 400, Verdict.CLEAR),
        (400, 600, Verdict.REDACT),
        (600, 1500, Verdict.CLEAR),
        (1500, 2000, Verdict.UNKNOWN),
    ]
    assert segments[1].decision is not None and segments[1].decision.label == "PHONE_NUMBER"
    assert timeline.verdict(start=0, end=400) is Verdict.CLEAR
    assert timeline.verdict(start=300, end=700) is Verdict.REDACT
    assert timeline.verdict(start=1400, end=1600) is Verdict.UNKNOWN
    timeline.prune(before=1000)
    assert timeline.verdict(start=400, end=600) is Verdict.UNKNOWN  # forgotten
    assert timeline.verdict(start=1000, end=1500) is Verdict.CLEAR


class FakeAnalyser:
    """An analysis branch: clears what it sees, redacts [1.0 s, 1.3 s), stops at 2 s
    (it fell behind), as speech redaction will post its decisions."""

    def __init__(self, timeline: DecisionTimeline) -> None:
        self.timeline = timeline

    def __call__(self, item: Item) -> None:
        if not isinstance(item, AudioChunk) or item.pts >= 2 * 48_000:
            return
        self.timeline.clear(start=item.pts, end=item.end_pts)
        if item.pts <= 48_000 < item.end_pts:
            self.timeline.redact(
                Decision(start=48_000, end=62_400, label="PHONE_NUMBER", confidence=0.9)
            )


async def test_delay_line_passes_only_what_the_analysis_cleared(workers) -> None:
    timeline = DecisionTimeline()
    delay = DelayLine(timeline=timeline, delay_ticks=10 * BLOCK_SAMPLES, redactor=bleep())
    out = CollectSink()
    runner = GraphRunner(
        Graph(
            stages=[ProcessorStage(PassThrough()), delay],
            sinks=[out],
            taps={0: [CallbackSink(FakeAnalyser(timeline), name="analysis")]},
        ),
        TrackSource(ToneTrack(150, pace_s=0.004)),  # 3 s of audio
        workers=workers,
        name="delay",
        max_lag_s=None,
    )
    await asyncio.wait_for(runner.run(), 30)
    audio = out.samples
    tone = np.concatenate([c.samples for c in out.chunks if not c.failed_closed][:1])
    assert len(audio) == 150 * BLOCK_SAMPLES  # nothing lost: the delay line flushed
    assert np.any(tone)
    redacted = audio[48_000:62_400]
    reference = bleep()(np.zeros(62_400 - 48_000, np.float32), 48_000)
    np.testing.assert_allclose(redacted, reference, atol=1e-6)  # bleeped, sample-exact
    assert _rms(audio[:48_000]) > 0.3 and _rms(audio[62_400 : 2 * 48_000]) > 0.3
    assert not np.any(audio[2 * 48_000 :])  # never analysed: unknown, muted (not bleeped)
    kinds = {(e.data["verdict"], e.data["label"]) for e in out.events if e.kind == "redact"}
    assert kinds == {("redact", "PHONE_NUMBER"), ("unknown", "")}
    first = min(e.pts for e in out.events if e.data["verdict"] == "redact")
    last = max(e.end_pts for e in out.events if e.data["verdict"] == "redact")
    assert (first, last) == (48_000, 62_400)


async def test_a_delay_line_settles_before_its_tail_is_judged_and_taps_get_everything(
    workers,
) -> None:
    # A delaying stage (1440 samples held, flushed at the end) tapped by an analysis
    # that clears what it sees; the delay line waits for it at the end of the stream.
    timeline = DecisionTimeline()
    seen: list[AudioChunk] = []
    tap_lengths_at_settle: list[int] = []

    def analysis(item: Item) -> None:
        if isinstance(item, AudioChunk):
            seen.append(item)

    async def settle() -> None:
        tap_lengths_at_settle.append(sum(len(c.samples) for c in seen))
        await asyncio.sleep(0.05)  # the analysis deciding, off the worker thread
        for chunk in seen:
            timeline.clear(start=chunk.pts, end=chunk.end_pts)

    delay = DelayLine(timeline=timeline, delay_ticks=50 * BLOCK_SAMPLES, settle=settle)
    out = CollectSink()
    runner = GraphRunner(
        Graph(
            stages=[ProcessorStage(Delaying(1440)), delay],
            sinks=[out],
            taps={0: [CallbackSink(analysis, name="analysis", max_items=1000)]},
        ),
        TrackSource(ToneTrack(40)),  # 0.8 s, all of it still in the 1 s delay line
        workers=workers,
        name="settle",
        max_lag_s=None,
    )
    await asyncio.wait_for(runner.run(), 30)
    # Every sample, the stage's flushed 1440 included, reached the tap before settle.
    assert tap_lengths_at_settle == [40 * BLOCK_SAMPLES]
    audio = out.samples
    assert len(audio) == 40 * BLOCK_SAMPLES
    assert _rms(audio[1440:]) > 0.3  # decided during settle: passed, not muted
    # Only the stage's pre-roll and flush padding, trimmed off the output, went
    # undecided.
    undecided = [(e.pts, e.end_pts) for e in out.events if e.kind == "redact"]
    assert all(end <= 0 or start >= 40 * BLOCK_SAMPLES for start, end in undecided), undecided


# -- encode once, forward to all --------------------------------------------------------------
class CountingEncoder(OpusEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    def encode(self, chunk: AudioChunk, *, keyframe: bool = False) -> list[av.Packet]:
        self.calls.append(keyframe)
        return super().encode(chunk, keyframe=keyframe)


def _chunk(i: int) -> AudioChunk:
    t = (np.arange(BLOCK_SAMPLES) + i * BLOCK_SAMPLES) / 48_000
    samples = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    return AudioChunk(samples=samples, pts=i * BLOCK_SAMPLES, arrived=time.monotonic())


async def test_relay_encodes_once_and_every_listener_gets_the_same_packets(workers) -> None:
    encoder = CountingEncoder()
    relay = Relay(encoder=encoder, executor=workers.encode, metrics=MediaMetrics(), max_queue=50)
    tracks = [relay.subscribe() for _ in range(3)]
    for i in range(10):
        await relay.publish(_chunk(i))
    assert len(encoder.calls) == 10  # one encode per chunk, not one per listener
    received = [[await t.recv() for _ in range(10)] for t in tracks]
    for packets in received:
        assert all(isinstance(p, av.Packet) for p in packets)
        assert [p.pts for p in packets] == [i * BLOCK_SAMPLES for i in range(10)]
        assert all(p.time_base == Fraction(1, 48_000) for p in packets)
    for a, b in zip(received[0], received[1], strict=True):
        assert a is b  # the very same packet object: encoded once
    # The packets decode to the audio that went in.
    decoder = av.CodecContext.create("libopus", "r")
    decoded = [f for p in received[0] for f in decoder.decode(p)]
    assert sum(f.samples for f in decoded) == 10 * BLOCK_SAMPLES
    for track in tracks:
        track.stop()
    with pytest.raises(MediaStreamError):
        await tracks[0].recv()
    assert relay.tracks == set()


async def test_a_stalled_listener_drops_its_oldest_packets_alone(workers) -> None:
    relay = Relay(
        encoder=OpusEncoder(), executor=workers.encode, metrics=MediaMetrics(), max_queue=5
    )
    slow, fast = relay.subscribe(), relay.subscribe()
    got = []
    for i in range(20):
        await relay.publish(_chunk(i))
        got.append(await fast.recv())
    assert [p.pts for p in got] == [i * BLOCK_SAMPLES for i in range(20)] and fast.dropped == 0
    assert slow.dropped == 15
    assert (await slow.recv()).pts == 15 * BLOCK_SAMPLES  # the newest five were kept
    relay.close()


async def test_new_listeners_and_pli_ask_the_shared_encoder_for_a_keyframe(workers) -> None:
    encoder = CountingEncoder()
    relay = Relay(encoder=encoder, executor=workers.encode, metrics=MediaMetrics())
    relay.subscribe()
    await relay.publish(_chunk(0))
    await relay.publish(_chunk(1))

    class FakeSender:
        def _send_keyframe(self) -> None:
            raise AssertionError("the sender's own encoder must not be asked")

    sender = FakeSender()
    relay.attach_sender(sender)
    sender._send_keyframe()  # what aiortc calls on an RTCP PLI or FIR
    await relay.publish(_chunk(2))
    assert encoder.calls == [True, False, True]
    relay.close()


async def test_per_listener_baseline_hands_raw_frames_to_each_sender(workers) -> None:
    encoder = CountingEncoder()
    relay = Relay(
        encoder=encoder, executor=workers.encode, metrics=MediaMetrics(), per_listener=True
    )
    track = relay.subscribe()
    await relay.publish(_chunk(0))
    frame = await track.recv()
    assert isinstance(frame, AudioFrame) and frame.samples == BLOCK_SAMPLES
    assert encoder.calls == []
    relay.close()


async def test_relay_sink_feeds_listeners_from_a_running_graph(workers) -> None:
    relay = Relay(
        encoder=OpusEncoder(), executor=workers.encode, metrics=MediaMetrics(), max_queue=100
    )
    track = relay.subscribe()
    runner = GraphRunner(
        Graph(stages=[ProcessorStage(PassThrough())], sinks=[RelaySink(relay)]),
        TrackSource(ToneTrack(20)),
        workers=workers,
        name="relay",
        max_lag_s=None,
        metrics=relay.metrics,
    )
    await asyncio.wait_for(runner.run(), 10)
    packets = [await asyncio.wait_for(track.recv(), 5) for _ in range(20)]
    assert [p.pts for p in packets] == [i * BLOCK_SAMPLES for i in range(20)]
    stages = runner.metrics.snapshot()["stages"]
    assert stages["encode"]["count"] == 20 and stages["relay"]["count"] == 20
    relay.close()


async def test_relay_track_hands_queued_packets_over_at_once(workers) -> None:
    # Regression: tracks held packets to a pacing schedule anchored on the first packet
    # their sender pulled, often one queued before the peer connected; every later
    # packet then waited (24 ms at 1 listener, growing under load) for good.
    relay = Relay(encoder=OpusEncoder(), executor=workers.encode, metrics=MediaMetrics())
    track = relay.subscribe()
    for i in range(10):
        await relay.publish(_chunk(i))
    received = []
    for _ in range(10):
        received.append(asyncio.ensure_future(track.recv()))
        await asyncio.sleep(0)  # one loop turn: a queued packet needs no more
        assert received[-1].done()
    assert [r.result().pts for r in received] == [i * BLOCK_SAMPLES for i in range(10)]
    relay.close()
