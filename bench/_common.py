"""Helpers shared by the benchmarks (and the tests' fixtures); standard library only."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$HEARTH_SHARED_DIR/data``, else ``<repo>/../shared/data``."""
    override = os.environ.get("HEARTH_SHARED_DIR")
    return (Path(override) if override else REPO_ROOT.parent / "shared") / "data"


def shared_models_dir() -> Path:
    """``$HEARTH_SHARED_DIR/models``, else ``<repo>/../shared/models`` (YuNet's ONNX)."""
    return shared_data_dir().parent / "models"


def in_temp_workdir(prefix: str, run: Callable[[Path], T], *, keep: bool) -> T:
    """Call ``run(workdir)`` with a fresh temporary folder; remove it afterwards
    unless ``keep`` (then its path is printed)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return run(workdir)
    finally:
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
