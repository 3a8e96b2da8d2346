"""Helpers shared by the benchmarks (and the tests' fixtures); standard library only."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$HEARTH_SHARED_DIR/data``, else ``<repo>/../shared/data``."""
    override = os.environ.get("HEARTH_SHARED_DIR")
    return (Path(override) if override else REPO_ROOT.parent / "shared") / "data"
