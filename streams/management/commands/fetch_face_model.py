"""``manage.py fetch_face_model``: download YuNet's face model, verified, into the model dir."""

from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from streams.media.detectors import YUNET_FILE, YUNET_URL
from streams.media.model_download import model_file_download
from streams.media.whisper_model import ModelIntegrityError, verify_file


class Command(BaseCommand):
    """Put ``face_detection_yunet_2023mar.onnx`` into ``HEARTH_MODEL_DIR`` (or ``--dest``).

    The file is streamed to a partial file in that directory, checked against the size
    and SHA-256 of :data:`~streams.media.detectors.YUNET_FILE` and renamed into place
    only if both match; on a mismatch it is deleted and the command fails. A verified
    file already there is kept (nothing is downloaded); a present file that differs is
    refused unless ``--force`` (it is then replaced once the new download verifies).
    """

    help = (
        "Download YuNet's face model (face_detection_yunet_2023mar.onnx) into "
        "HEARTH_MODEL_DIR or --dest, checked by size and SHA-256."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--dest", type=Path, help="model directory (created); default: HEARTH_MODEL_DIR"
        )
        parser.add_argument(
            "--url", default=YUNET_URL, help="where to download from (default: upstream)"
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="replace a present file whose size or SHA-256 differs",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        configured = settings.HEARTH["MODEL_DIR"]
        directory: Path | None = options["dest"] or (Path(configured) if configured else None)
        if directory is None:
            raise CommandError("no model directory: set HEARTH_MODEL_DIR or give --dest DIR")
        target = directory / YUNET_FILE.name
        if target.exists():
            try:
                verify_file(target, YUNET_FILE)
            except ModelIntegrityError as exc:
                if not options["force"]:
                    raise CommandError(
                        f"{exc}. It was not replaced: find out where it came from, "
                        "then run again with --force to replace it"
                    ) from exc
            else:
                self.stdout.write(f"{target}: already there, SHA-256 verified; not downloaded")
                return
        directory.mkdir(parents=True, exist_ok=True)
        url: str = options["url"]
        try:
            model_file_download(url=url, target=target, expected=YUNET_FILE)
        except ModelIntegrityError as exc:
            raise CommandError(f"the file from {url} is not YuNet's: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot download {url}: {exc}") from exc
        self.stdout.write(f"{target}: {YUNET_FILE.size} bytes, SHA-256 verified")
        if not configured or Path(configured).resolve() != directory.resolve():
            self.stdout.write(f"set HEARTH_MODEL_DIR={directory} to use it")
