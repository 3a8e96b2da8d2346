"""On-screen personal text: OCR, the matcher, the background stage and fail-closed frames.

Material: :func:`bench._video_material.screen_image` (a crop of ``city.jpg`` with a
card of text lines, three of them personal, and a licence plate), read by the real
RapidOCR PP-OCRv6 models that the pinned ``rapidocr`` wheel ships.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from bench._video_material import screen_boxes, screen_image
from streams.media.detectors import ModelIntegrityError
from streams.media.items import Box, VideoFrame
from streams.media.text import (
    OCR_FILES,
    TEXT_STALE_S,
    PersonalTextMatcher,
    TextDetector,
    TextReader,
    plate_like,
    text_detector_build,
)
from streams.media.video import BackgroundDetectStage, BlurStage, TrackStage, redaction_stages
from streams.media.workers import Workers
from tests.test_video import _run

pytestmark = pytest.mark.backend_free

RATE = 10


@pytest.fixture(scope="module")
def detector() -> TextDetector:
    return text_detector_build(text=True, plates=True)


@pytest.fixture(scope="module")
def reader(detector: TextDetector) -> TextReader:
    return detector.reader


@pytest.fixture(scope="module")
def matcher(detector: TextDetector) -> PersonalTextMatcher:
    return detector.matcher


@pytest.fixture
def workers():
    pool = Workers(load_threads=1, io_threads=1, encode_threads=1)
    yield pool
    pool.shutdown()


def _covers(regions: list[Box], box: tuple[int, int, int, int], slack: int = 0) -> bool:
    """Whether one region covers ``box`` (shrunk by ``slack`` px on each side)."""
    x0, y0, x1, y1 = box[0] + slack, box[1] + slack, box[2] - slack, box[3] - slack
    return any(r.x0 <= x0 and r.y0 <= y0 and r.x1 >= x1 and r.y1 >= y1 for r in regions)


def _read(reader: TextReader, image: np.ndarray) -> str:
    return " | ".join(line.text for line in reader.read(image))


# -- matcher ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "entities"),
    [
        ("jane.doe@example.com", ["EMAIL_ADDRESS"]),
        ("Call me on 07700 900123", ["PHONE_NUMBER"]),
        ("Card 4111 1111 1111 1111", ["CREDIT_CARD"]),
        ("Acct 12-34-5678 9", ["CREDIT_CARD", "DIGIT_RUN", "PHONE_NUMBER"]),  # any is enough
        ("+1 (555) 010-4477", ["PHONE_NUMBER"]),
    ],
)
def test_the_matcher_finds_written_personal_information(matcher, text, entities) -> None:
    found = matcher.entities(text)
    assert found, text
    assert set(found) & set(entities), (text, found)


@pytest.mark.parametrize(
    "text",
    ["Welcome to the show", "Sua Cidade Limpa", "Live since 2026", "Room 12, floor 3", "50% off"],
)
def test_the_matcher_leaves_everyday_text_alone(matcher, text) -> None:
    assert matcher.entities(text) == []


def test_plate_shape_needs_letters_digits_and_a_plate_box() -> None:
    wide = Box(0, 0, 180, 40, "text")
    assert plate_like("AB12 CDE", wide)
    assert plate_like("7ABC123", wide)
    assert plate_like("B-MW 1234", wide)
    assert not plate_like("AB12 CDE", Box(0, 0, 40, 40, "text"))  # square
    assert not plate_like("WELCOME", wide)  # no digits
    assert not plate_like("2026", wide)  # no letter
    assert not plate_like("Welcome to the show", wide)


# -- OCR on real pixels -----------------------------------------------------------------
def test_the_detector_boxes_personal_lines_and_the_plate_only(detector, reader) -> None:
    image = screen_image()
    assert "Welcome to the show" in _read(reader, image)  # the OCR does read the card
    boxes = detector.detect(image)
    text_regions = [b for b in boxes if b.kind == "text"]
    plate_regions = [b for b in boxes if b.kind == "plate"]
    for line, personal, where in screen_boxes()[:-1]:
        assert _covers(text_regions, where, slack=6) == personal, line
    assert _covers(plate_regions, screen_boxes()[-1][2], slack=6)
    # Plates are reported only when asked for; personal text only when asked for.
    plates_only = TextDetector(reader=reader, matcher=detector.matcher, text=False, plates=True)
    assert {b.kind for b in plates_only.detect(image)} == {"plate"}
    text_only = TextDetector(reader=reader, matcher=detector.matcher, text=True, plates=False)
    assert {b.kind for b in text_only.detect(image)} == {"text"}


async def test_a_file_graph_blurs_personal_text_so_ocr_can_no_longer_read_it(
    detector, reader, workers
) -> None:
    images = [screen_image(dx=4 * i) for i in range(8)]  # a slow pan, 10 fps
    stages = redaction_stages(face=None, plate=None, text=detector)
    sink, runner = await _run(stages, images, workers)
    assert [f.failed_closed for f in sink.frames] == [False] * 8
    assert stages[0].runs == 2  # when the result would be over 0.5 s old: frames 0, 6
    assert runner.metrics.regions_blurred["text"] >= 3 * 8
    assert runner.metrics.regions_blurred["plate"] >= 8
    for index, frame in enumerate(sink.frames):
        read = _read(reader, frame.image)
        assert "Welcome to the show" in read, index  # everyday text stays readable
        for line, personal, _ in screen_boxes():
            if personal:
                assert line not in read, (index, line)
        lines = reader.read(frame.image)
        leftover = [ln.text for ln in lines if detector.matcher.entities(ln.text)]
        assert leftover == [], (index, leftover)


# -- the background stage ---------------------------------------------------------------
class _Gate:
    """A text detector that returns a fixed box once released, or raises."""

    kind = "text"
    name = "gate"

    def __init__(self, *, raises: bool = False) -> None:
        self.release = threading.Event()
        self.calls = 0
        self.raises = raises

    def detect(self, image: np.ndarray) -> list[Box]:
        self.calls += 1
        self.release.wait(30)
        if self.raises:
            raise RuntimeError("ocr crashed")
        return [Box(10, 10, 200, 40, "text", 0.9)]


def _frame(pts: int, rate: int = RATE) -> VideoFrame:
    return VideoFrame(
        image=screen_image(width=320, height=240),
        pts=pts,
        time_base=Fraction(1, rate),
        arrived=0.0,
        duration=1,
    )


def _chain(stage: BackgroundDetectStage) -> list:
    return [
        stage,
        TrackStage(hold_by_label={"text": 1.5}),
        BlurStage(required=("text",), stale_by_label={"text": TEXT_STALE_S}),
    ]


def _through(stages: list, frame: VideoFrame) -> VideoFrame:
    items = [frame]
    for stage in stages:
        try:
            items = [out for item in items for out in stage.process(item)]
        except RuntimeError:
            items = stage.fail_closed(items[0])
    (out,) = items
    assert isinstance(out, VideoFrame)
    return out


def test_frames_never_wait_for_the_background_ocr_and_fail_closed_until_it_answers() -> None:
    gate = _Gate()
    stage = BackgroundDetectStage(gate, interval_s=0.5)
    stages = _chain(stage)
    try:
        # No result yet: every frame leaves blurred whole, without waiting.
        early = [_through(stages, _frame(pts)) for pts in range(3)]
        assert [f.failed_closed for f in early] == [True, True, True]
        assert stage.runs == 1 and gate.calls <= 1
        gate.release.set()
        stage._future.result(timeout=30)  # the run finishes in the background
        # The next frame collects it (result of frame 0, 0.3 s old): region blurred.
        out = _through(stages, _frame(3))
        assert not out.failed_closed
        assert out.blurred == {"text": 1}
        assert out.detections["text"].pts == 0
        # Runs start every 0.5 s of content, not every frame.
        for pts in range(4, 11):
            _through(stages, _frame(pts))
        assert stage.runs == 3  # pts 0, 5 and 10
    finally:
        gate.release.set()
        stage.close()


@contextlib.contextmanager
def _after_one_run(gate: _Gate) -> Iterator[tuple[BackgroundDetectStage, list]]:
    """A background stage whose first run (on frame 0) has finished."""
    gate.release.set()
    stage = BackgroundDetectStage(gate, interval_s=0.5)
    stages = _chain(stage)
    try:
        _through(stages, _frame(0))
        assert stage._future is not None
        stage._future.exception(timeout=30)
        yield stage, stages
    finally:
        gate.release.set()
        stage.close()


def test_a_hung_background_ocr_makes_frames_fail_closed_once_its_result_is_stale() -> None:
    gate = _Gate()
    with _after_one_run(gate) as (_, stages):
        gate.release.clear()  # the next run hangs
        budget_frames = round(TEXT_STALE_S * RATE)
        outs = [_through(stages, _frame(pts)) for pts in range(1, budget_frames + 4)]
        fresh = [not f.failed_closed for f in outs]
        # Frames keep the last result while it is within the budget, then fail closed.
        assert fresh[: budget_frames - 1] == [True] * (budget_frames - 1)
        assert fresh[-3:] == [False, False, False]
        for out in outs[-3:]:
            assert out.blurred == {} and out.failed_closed


def test_a_background_ocr_that_raises_fails_the_frame_that_collects_it_closed() -> None:
    with _after_one_run(_Gate(raises=True)) as (stage, stages):
        out = _through(stages, _frame(1))
        assert out.failed_closed
        assert stage.runs == 1
        _through(stages, _frame(6))  # due again: a new run starts
        assert stage.runs == 2


# -- model files ------------------------------------------------------------------------
def test_ocr_model_files_are_verified_and_refused_when_they_differ(tmp_path: Path) -> None:
    import rapidocr

    models = Path(rapidocr.__file__).parent / "models"
    for expected in OCR_FILES:
        shutil.copy(models / expected.name, tmp_path / expected.name)
    TextReader(model_dir=tmp_path)  # verified copies load
    target = tmp_path / OCR_FILES[1].name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    target.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError):
        TextReader(model_dir=tmp_path)
