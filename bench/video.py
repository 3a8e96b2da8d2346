"""Benchmark video redaction: face recall on city.jpg, ms per frame per detector.

Usage::

    .venv/bin/python bench/video.py [--repeats 15] [--threads 1] [--json OUT.json]
    .venv/bin/python bench/video.py --live [--seconds 10] [--json OUT.json]
    .venv/bin/python bench/video.py --concurrent [--broadcasts 1,2] [--listeners 1,8] ...

``--live`` runs the live-camera path instead (``bench/video_live_path.py``: 640x480 at
15 fps through the live stages, before/after the frame-dropping change, in one run).
``--concurrent`` runs ``bench/video_fanout.py`` (its options follow): concurrent
640x480 30 fps camera broadcasts through a real daphne with aiortc listeners, server
CPU per broadcast and per extra listener, redaction against pass-through.

Measured, in one run, on this machine (one thread each: ``cv2.setNumThreads`` and
onnxruntime's intra-op threads, so the figures are per core):

* **Recall on city.jpg**: faces found by YuNet and by CenterFace among the 20
  hand-checked faces of ``bench/_video_material.CITY_FACES`` (a detection counts when
  its centre lies in the face box or the face's centre in it), and detections that are
  no annotated face, at full size (800x564) and at Hearth's 640-px analysis width.
* **ms per frame** on a 640x480 and a 1280x720 frame cut and scaled from city.jpg,
  after one warm-up: CPU ms (``time.process_time``, mean of ``--repeats`` calls; on a
  shared, loaded machine this is what the work costs one core) and wall ms (median /
  p90, which include waiting for the CPU when other processes run): the pass-through baseline
  (a frame copy, what the graph costs without redaction), each detector alone (YuNet,
  CenterFace, the Haar plate cascade, including the downscale to 640 px), and the full
  chain as ``process_media`` runs it (faces + plates + track + blur + recheck), and a
  lighter chain a live stream could afford (faces every frame, plates every 3rd frame:
  at 30 fps their result is at most 67 ms old, inside the 250 ms budget; no recheck).
* **On-screen text**: RapidOCR (PP-OCRv6) ms per frame on a frame with five lines of
  text, and which lines of ``screen_image`` it boxes (3 personal lines + a plate; the
  everyday line must stay unboxed).
* **Plates**: false plate boxes on city.jpg (no car in it). Recall on real street images
  is not measured: no image with a licence plate is available offline here.

No Django needed. Shared data: ``$HEARTH_SHARED_DIR`` or ``../shared``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._common import shared_models_dir  # noqa: E402
from bench._video_material import (  # noqa: E402
    CITY_FACES,
    city_image,
    face_hit,
    screen_boxes,
    screen_image,
)
from streams.media.detectors import (  # noqa: E402
    YUNET_FILE,
    CenterFaceDetector,
    HaarPlateDetector,
    YuNetDetector,
)
from streams.media.items import Box, VideoFrame  # noqa: E402
from streams.media.text import TextDetector, text_detector_build  # noqa: E402
from streams.media.video import (  # noqa: E402
    BlurStage,
    DetectStage,
    TrackStage,
    analysis_image,
    redaction_stages,
)


def recall(boxes: list[Box]) -> tuple[int, int]:
    """(annotated faces found, detections that match no annotated face)."""
    found = [(b.x0, b.y0, b.x1, b.y1) for b in boxes]
    hits = sum(any(face_hit(b, face) for b in found) for face in CITY_FACES)
    false = sum(not any(face_hit(b, face) for face in CITY_FACES) for b in found)
    return hits, false


def screen_text_recall(text: TextDetector) -> dict[str, int]:
    """On :func:`screen_image`: personal lines (and the plate) whose glyphs a returned
    box covers (within 6 px), and everyday lines that got a box (false positives)."""
    boxes = text.detect(screen_image())
    personal = everyday = 0
    for _, is_personal, (x0, y0, x1, y1) in screen_boxes():
        covered = any(
            b.x0 <= x0 + 6 and b.y0 <= y0 + 6 and b.x1 >= x1 - 6 and b.y1 >= y1 - 6 for b in boxes
        )
        if is_personal:
            personal += covered
        else:
            everyday += covered
    return {"personal_found": personal, "everyday_boxed": everyday}


def frame_of(width: int, height: int) -> np.ndarray:
    """city.jpg cropped to the aspect of ``width x height`` and scaled to it (BGR)."""
    image = city_image()
    h, w = image.shape[:2]
    crop_h = min(h, round(w * height / width))
    top = (h - crop_h) // 2
    return cv2.resize(image[top : top + crop_h], (width, height), interpolation=cv2.INTER_AREA)


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """CPU ms per call (mean) and wall ms (median, p90) of ``fn()`` over ``repeats``
    calls after a warm-up."""
    fn()
    times = []
    cpu_started = time.process_time()
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    cpu = (time.process_time() - cpu_started) * 1000 / repeats
    p50, p90 = np.percentile(times, [50, 90])
    return {
        "cpu_ms": round(cpu, 2),
        "wall_p50_ms": round(float(p50), 2),
        "wall_p90_ms": round(float(p90), 2),
    }


def main() -> None:
    """Run the measurements and print them (and write JSON when asked)."""
    if "--concurrent" in sys.argv[1:]:
        from bench.video_fanout import main as concurrent_main

        sys.exit(concurrent_main([a for a in sys.argv[1:] if a != "--concurrent"]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--live", action="store_true", help="the live-camera path")
    parser.add_argument("--seconds", type=float, default=10.0, help="--live: per config")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    if args.live:
        from bench.video_live_path import live_path

        figures = live_path(args.seconds)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return

    yunet = YuNetDetector(shared_models_dir() / YUNET_FILE.name)
    centerface = CenterFaceDetector(threads=args.threads)
    plates = HaarPlateDetector()
    results: dict[str, object] = {
        "machine": platform.machine(),
        "threads": args.threads,
        "opencv": cv2.__version__,
    }

    image = city_image()
    small, factor = analysis_image(image)
    found: dict[str, dict[str, int]] = {}
    for detector in (yunet, centerface):
        for label, picture, scale in (("full", image, 1.0), ("640", small, factor)):
            hits, false = recall([b.scaled(scale) for b in detector.detect(picture)])
            found[f"{detector.name}@{label}"] = {"found": hits, "false": false}
    results["city_faces"] = {"annotated": len(CITY_FACES), **found}
    results["city_false_plates"] = len(plates.detect(small))
    print(f"city.jpg: {len(CITY_FACES)} annotated faces (800x564)")
    for key, value in found.items():
        name, size = key.split("@")
        where = "full size" if size == "full" else "640-px analysis"
        print(
            f"  {name:<10} {where:<16} found {value['found']:>2}/{len(CITY_FACES)}, "
            f"{value['false']} detections that are no face"
        )
    print(f"  haar plates on city.jpg: {results['city_false_plates']} boxes (no car in it)")
    print("  plate recall on real street images: not measured (none available offline)")

    text = text_detector_build(text=True, plates=True)
    results["screen_text"] = screen_text_recall(text)
    print(
        "screen_image (640x480, 3 personal lines, 1 everyday line, 1 plate): "
        f"{results['screen_text']['personal_found']}/4 personal found, "
        f"{results['screen_text']['everyday_boxed']} everyday lines boxed"
    )

    timing: dict[str, dict[str, dict[str, float]]] = {}
    for width, height in ((640, 480), (1280, 720)):
        picture = frame_of(width, height)
        row: dict[str, dict[str, float]] = {}
        row["passthrough (copy)"] = timed(lambda p=picture: p.copy(), args.repeats)
        for detector in (yunet, centerface, plates):
            row[detector.name] = timed(
                lambda p=picture, d=detector: d.detect(analysis_image(p)[0]), args.repeats
            )
        # OCR on a frame with five text lines (the card of screen_image, scaled); it
        # runs twice a second, so its share of a core is 2 x its CPU ms / 1000.
        screen = cv2.resize(screen_image(), (width, height), interpolation=cv2.INTER_AREA)
        row["text ocr (5 lines)"] = timed(
            lambda p=screen: text.detect(analysis_image(p)[0]), max(3, args.repeats // 3)
        )
        chains = {
            f"chain {face.name} + plates + blur + recheck": redaction_stages(
                face=face, plate=plates, recheck=True
            )
            for face in (yunet, centerface)
        }
        chains["chain yunet + track + blur (faces only)"] = redaction_stages(face=yunet, plate=None)
        chains["chain yunet + plates every 3rd + blur"] = [
            DetectStage(yunet),
            DetectStage(plates, every=3),
            TrackStage(),
            BlurStage(required=("face", "plate")),
        ]
        for name, stages in chains.items():
            pts = iter(range(1 << 30))

            def chain(
                p: np.ndarray = picture, stages: list = stages, pts: Iterator[int] = pts
            ) -> None:
                frame = VideoFrame(
                    image=p.copy(), pts=next(pts), time_base=Fraction(1, 30), arrived=0.0
                )
                items = [frame]
                for stage in stages:
                    items = [out for item in items for out in stage.process(item)]

            row[name] = timed(chain, args.repeats)
        timing[f"{width}x{height}"] = row
        print(f"{width}x{height} frame ({args.threads} thread): CPU ms, wall ms median / p90")
        for name, value in row.items():
            print(
                f"  {name:<42} {value['cpu_ms']:>7.1f}   "
                f"{value['wall_p50_ms']:>7.1f} / {value['wall_p90_ms']:.1f}"
            )
    results["ms_per_frame"] = timing
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
