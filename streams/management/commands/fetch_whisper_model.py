"""``manage.py fetch_whisper_model DIR``: download official Whisper files, verified."""

from __future__ import annotations

import shutil
import tempfile
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from streams.media.model_download import model_file_install
from streams.media.whisper_model import (
    WHISPER_BASE_FILES,
    WHISPER_BASE_REPO,
    WHISPER_BASE_REVISION,
    ModelFile,
    ModelIntegrityError,
    write_manifest,
)


def download(repo: str, revision: str, name: str, target_dir: Path) -> Path:
    """Fetch one file of a Hugging Face model repository into ``target_dir`` (the
    command's staging folder; the file is installed from there once verified)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, name, revision=revision, local_dir=target_dir))


def _expected(options: dict[str, Any]) -> tuple[ModelFile, ...]:
    if options["expect"]:
        files = []
        for entry in options["expect"]:
            try:
                name, size, sha256 = entry.split(":")
                files.append(ModelFile(name, int(size), sha256.lower()))
            except ValueError as exc:
                raise CommandError(f"--expect wants NAME:SIZE:SHA256, got {entry!r}") from exc
        return tuple(files)
    if options["repo"] == WHISPER_BASE_REPO and options["revision"] == WHISPER_BASE_REVISION:
        return WHISPER_BASE_FILES
    raise CommandError(
        "give the published size and SHA-256 of every file with --expect NAME:SIZE:SHA256 "
        "(only Whisper base at the pinned revision is known to Hearth)"
    )


class Command(BaseCommand):
    """Download a CTranslate2 Whisper model where the machine has internet.

    Each file is checked against its published size and SHA-256 (built in for
    Systran/faster-whisper-base at the pinned revision, else given with ``--expect``);
    on success DIR gets a ``manifest.json`` and can be set as ``PII_MODEL_DIR``. Files
    are fetched into a staging folder inside DIR (removed afterwards) and renamed into
    DIR only once verified. On any mismatch the command fails and writes no manifest
    (so DIR is never loaded).
    """

    help = "Download official Whisper (CTranslate2) files into DIR, verified, for PII_MODEL_DIR."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("directory", type=Path, help="target directory (created)")
        parser.add_argument("--repo", default=WHISPER_BASE_REPO, help="Hugging Face repo id")
        parser.add_argument("--revision", default=WHISPER_BASE_REVISION, help="git revision")
        parser.add_argument(
            "--expect",
            action="append",
            metavar="NAME:SIZE:SHA256",
            help="a file and its published size and SHA-256 (repeat for every file)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        directory: Path = options["directory"]
        expected = _expected(options)
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=directory))
        try:
            for item in expected:
                try:
                    path = download(options["repo"], options["revision"], item.name, staging)
                except Exception as exc:
                    raise CommandError(f"cannot download {item.name}: {exc}") from exc
                target = directory / item.name
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    model_file_install(staged=path, target=target, expected=item)
                except ModelIntegrityError as exc:
                    raise CommandError(str(exc)) from exc
                self.stdout.write(f"{item.name}: {item.size} bytes, SHA-256 verified")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        write_manifest(
            directory, expected, {"repo": options["repo"], "revision": options["revision"]}
        )
        self.stdout.write(f"set PII_MODEL_DIR={directory}")
