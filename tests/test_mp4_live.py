"""The crash-tolerant live MP4 recorder (streams/media/mp4_live.py): a fragment file
that survives SIGKILL, its repair, and the finalised seekable MP4."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streams.media.items import AudioChunk, VideoFrame
from streams.media.mp4_live import (
    LiveMp4Recorder,
    LiveMp4Sink,
    Mp4FinishError,
    mp4_fragments_finish,
)

REPO = Path(__file__).resolve().parents[1]
RATE = 15
SIZE = (160, 120)

# Runs in a child process: records synthetic frames + a tone, 15 fps, until killed.
WRITER = """
import sys, time
from fractions import Fraction
import numpy as np
from streams.media.items import VideoFrame
from streams.media.mp4_live import LiveMp4Recorder

path, rate = sys.argv[1], int(sys.argv[2])
rec = LiveMp4Recorder(path, width=160, height=120, rate=Fraction(rate), audio=True)
told = False
for i in range(100_000):
    image = np.full((120, 160, 3), (i * 7) % 256, np.uint8)
    rec.push_frame(VideoFrame(image=image, pts=i, time_base=Fraction(1, rate), arrived=0.0))
    t = np.arange(3200) + i * 3200
    rec.push_audio((0.2 * np.sin(2 * np.pi * 440 * t / 48000)).astype(np.float32), i * 3200)
    if rec.frames >= 3 * rate and not told:
        print("ready", flush=True)
        told = True
    time.sleep(1 / rate / 4)
"""


def frame(i: int, rate: int = RATE) -> VideoFrame:
    image = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    image[:, : (i * 5) % SIZE[0]] = 200
    return VideoFrame(image=image, pts=i, time_base=Fraction(1, rate), arrived=0.0)


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def test_sigkill_mid_write_leaves_a_decodable_file_that_repairs(tmp_path: Path):
    fragments = tmp_path / "live.frag.mp4"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(fragments), str(RATE)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until 3 s of video were encoded
        assert line.strip() == "ready", child.stderr.read() if child.stderr else ""
        time.sleep(0.3)  # mid-write: the encoder is working on the next fragment
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    # The torn file still decodes up to its last whole fragment (1 s keyframe interval).
    survived = decoded_frames(fragments)
    assert survived >= 2 * RATE
    fixed = mp4_fragments_finish(fragments, tmp_path / "fixed.mp4")
    assert fixed.video_frames >= 2 * RATE and fixed.audio_packets > 0
    assert (fixed.width, fixed.height, fixed.rate) == (160, 120, Fraction(RATE))
    with av.open(str(fixed.path)) as container:
        stream = container.streams.video[0]
        assert container.duration is not None and container.duration > 0
        container.seek(int(1.0 / stream.time_base), stream=stream)  # seekable
        first = next(container.decode(stream))
        assert first.time == pytest.approx(1.0, abs=1.01)
    assert decoded_frames(fixed.path) == fixed.video_frames
    # faststart: the index (moov) comes before the media data (mdat).
    head = fixed.path.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and head.find(b"moov") < max(head.find(b"mdat"), 4096)


def test_finalise_gives_the_right_frames_size_and_rate(tmp_path: Path):
    recorder = LiveMp4Recorder(
        tmp_path / "r.frag.mp4", width=SIZE[0], height=SIZE[1], rate=Fraction(RATE), audio=True
    )
    for i in range(45):
        assert recorder.push_frame(frame(i))
        samples = np.zeros(3200, np.float32)
        assert recorder.push_audio(samples, i * 3200)
        while recorder._queue.qsize() > 40:  # the test's own pace, not the recorder's
            time.sleep(0.01)
    facts = recorder.finalise(tmp_path / "final.mp4")
    assert not (tmp_path / "r.frag.mp4").exists()
    assert (facts.video_frames, facts.width, facts.height) == (45, 160, 120)
    assert facts.rate == Fraction(RATE) and facts.duration_s == pytest.approx(3.0)
    with av.open(str(facts.path)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.name, video.average_rate) == ("h264", Fraction(RATE))
        assert container.streams.audio[0].codec_context.name == "aac"
    assert decoded_frames(facts.path) == 45
    assert recorder.frames_dropped == recorder.audio_dropped == 0


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path):
    recorder = LiveMp4Recorder(
        tmp_path / "d.mp4",
        width=SIZE[0],
        height=SIZE[1],
        rate=Fraction(RATE),
        audio=False,
        max_items=2,
    )
    gate = threading.Event()
    write = recorder.writer.write_frame
    recorder.writer.write_frame = lambda f: (gate.wait(30), write(f))  # a stuck encoder
    pushed = [recorder.push_frame(frame(i)) for i in range(10)]  # returns at once
    assert pushed.count(False) >= 7 and recorder.frames_dropped == pushed.count(False)
    assert not recorder.push_audio(np.zeros(960, np.float32), 0)  # no audio track
    gate.set()
    facts = recorder.finalise(tmp_path / "d-final.mp4")
    assert facts.video_frames == pushed.count(True)


def test_the_sink_only_enqueues(tmp_path: Path):
    recorder = LiveMp4Recorder(
        tmp_path / "s.mp4", width=SIZE[0], height=SIZE[1], rate=Fraction(RATE), audio=True
    )
    sink = LiveMp4Sink(recorder)

    async def feed() -> None:
        for i in range(15):
            await sink.write(frame(i))
            await sink.write(
                AudioChunk(samples=np.zeros(3200, np.float32), pts=i * 3200, arrived=0.0)
            )

    asyncio.run(feed())
    facts = recorder.finalise(tmp_path / "s-final.mp4")
    assert facts.video_frames == 15 and facts.audio_packets > 0


def test_finishing_a_file_with_no_fragment_is_a_clear_error(tmp_path: Path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"\x00\x00\x00\x08free")
    with pytest.raises(Mp4FinishError):
        mp4_fragments_finish(empty, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_frames_of_another_size_are_scaled_to_the_file(tmp_path: Path):
    # A WebRTC sender lowers its resolution under congestion; the track keeps its size.
    recorder = LiveMp4Recorder(
        tmp_path / "z.mp4", width=SIZE[0], height=SIZE[1], rate=Fraction(RATE), audio=False
    )
    for i in range(6):
        f = frame(i)
        if i % 2:
            f = VideoFrame(
                image=np.zeros((60, 80, 3), np.uint8), pts=i, time_base=f.time_base, arrived=0.0
            )
        recorder.push_frame(f)
    facts = recorder.finalise(tmp_path / "z-final.mp4")
    assert (facts.video_frames, facts.width, facts.height) == (6, 160, 120)
    assert recorder.frames_resized == 3 and recorder.frames_dropped == 0
