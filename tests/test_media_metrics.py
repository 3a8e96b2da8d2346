"""The media engine's hooks for process-wide metrics: the stage observer and the relay's
listener-drop count (no Django, no metrics library involved)."""

from __future__ import annotations

import numpy as np
import pytest

from streams.media.items import AudioChunk
from streams.media.metrics import MediaMetrics, StageTimer, stage_observer_set
from streams.media.relay import OpusEncoder, Relay
from streams.media.workers import Workers

pytestmark = pytest.mark.backend_free


@pytest.fixture
def observed():
    seen: list[tuple[str, float]] = []
    previous = stage_observer_set(lambda name, seconds: seen.append((name, seconds)))
    yield seen
    stage_observer_set(previous)


def test_named_timers_report_every_duration_to_the_observer(observed):
    metrics = MediaMetrics()
    metrics.timer("process").add(0.004)
    metrics.timer("encode").add(-1.0)  # clamped, as the timer itself keeps it
    StageTimer().add(0.5)  # unnamed (e.g. the loop-lag probe): not a stage
    assert observed == [("process", 0.004), ("encode", 0.0)]
    assert metrics.timer("process").summary()["count"] == 1


def test_an_observer_that_raises_does_not_fail_the_stream():
    def broken(name: str, seconds: float) -> None:
        raise RuntimeError("exporter down")

    previous = stage_observer_set(broken)
    try:
        timer = StageTimer(name="process")
        timer.add(0.01)
        assert timer.summary()["count"] == 1
    finally:
        stage_observer_set(previous)


@pytest.fixture
def workers():
    pool = Workers(encode_threads=1, processing_slots=1)
    yield pool
    pool.shutdown()


def _chunk(i: int) -> AudioChunk:
    return AudioChunk(samples=np.zeros(960, np.float32), pts=i * 960, arrived=0.0)


async def test_listener_drops_are_kept_when_the_listener_leaves(workers) -> None:
    relay = Relay(
        encoder=OpusEncoder(), executor=workers.encode, metrics=MediaMetrics(), max_queue=2
    )
    slow, other = relay.subscribe(), relay.subscribe()
    for i in range(5):  # nobody pulls: each track keeps 2, drops 3
        await relay.publish(_chunk(i))
    assert slow.dropped == other.dropped == 3
    assert relay.dropped_total == 6
    slow.stop()
    assert relay.dropped_total == 6  # a counter: the gone track's drops stay
    slow.stop()  # stopping twice counts nothing twice
    assert relay.dropped_total == 6
    relay.close()
    assert relay.dropped_total == 6
