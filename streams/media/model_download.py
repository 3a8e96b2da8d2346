"""Install a model file only once its size and SHA-256 match: fetched beside, renamed.

Used by ``manage.py fetch_face_model`` (a plain HTTP(S) download, here) and
``manage.py fetch_whisper_model`` (files fetched by ``huggingface_hub`` into a staging
folder, then installed here). A file reaches its final name only by an atomic rename
within one directory after :func:`~streams.media.whisper_model.verify_file` passed, so
a model directory never holds a partial or differing file under a name that
:mod:`streams.media.detectors` or :mod:`streams.media.whisper_model` would load.

Imports nothing from Django.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from streams.media.whisper_model import ModelFile, ModelIntegrityError, verify_file

DOWNLOAD_TIMEOUT_S = 60.0
"""Seconds one connect or read of a download may wait before it fails."""

_BLOCK = 1 << 16


def model_file_install(*, staged: Path, target: Path, expected: ModelFile) -> None:
    """Verify ``staged`` against ``expected``, then rename it to ``target``.

    ``staged`` is removed in every case (renamed on success, deleted on failure);
    ``target`` is replaced only on success. Both must be on one file system (the
    rename is atomic there), e.g. ``staged`` in ``target``'s directory.

    Raises:
        ModelIntegrityError: ``staged`` is missing, or its size or SHA-256 differs.
        OSError: the rename failed (``target`` is left as it was).
    """
    try:
        verify_file(staged, expected)
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)


def model_file_download(
    *, url: str, target: Path, expected: ModelFile, timeout_s: float = DOWNLOAD_TIMEOUT_S
) -> None:
    """Download ``url`` to ``target``, installed only if it matches ``expected``.

    The body is streamed to ``.<name>.partial-<pid>`` in ``target``'s directory (which
    must exist), at most ``expected.size`` bytes of it, then installed by
    :func:`model_file_install`. Redirects are followed; proxies come from the usual
    ``*_proxy`` environment variables (:mod:`urllib.request`).

    Args:
        url: ``https://``, ``http://`` or ``file://`` address of the file.
        target: Final path, e.g. ``<model dir>/face_detection_yunet_2023mar.onnx``.
        expected: Published size (bytes) and SHA-256 of the file.
        timeout_s: Limit on each connect and read, seconds.

    Raises:
        ModelIntegrityError: the body is longer or shorter than ``expected.size``, or
            its SHA-256 differs (nothing is installed, the partial file is removed).
        OSError: the download failed (``urllib.error.URLError`` and ``HTTPError`` are
            subclasses; a timeout too); nothing is installed.
        ValueError: ``url`` is not a URL ``urllib`` can open.
    """
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        with (
            urllib.request.urlopen(url, timeout=timeout_s) as response,
            partial.open("wb") as out,
        ):
            received = 0
            while block := response.read(_BLOCK):
                received += len(block)
                if received > expected.size:
                    raise ModelIntegrityError(
                        f"{url} sent more than the {expected.size} bytes of {expected.name}; "
                        "not installed"
                    )
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        model_file_install(staged=partial, target=target, expected=expected)
    finally:
        partial.unlink(missing_ok=True)
