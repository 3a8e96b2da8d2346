"""Django-side glue of PII bleeping: settings -> verified model -> shared engine objects.

The engine (``streams.media.asr``, ``.pii``, ``.pii_analysis``) knows nothing of
Django; this module reads ``settings.HEARTH["PII_*"]`` and builds, once per process,
the :class:`~streams.media.asr.Transcriber` (Whisper weights are ~145 MB: one copy
shared by every stream, calls serialised) and the
:class:`~streams.media.pii.PiiDetector`.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from django.conf import settings

from streams.media.asr import Transcriber
from streams.media.pii import PiiDetector
from streams.media.pii_analysis import AnalysisOptions, PiiAnalyser
from streams.media.timeline import DecisionTimeline
from streams.media.whisper_model import resolve_model_dir


def model_cache_dir() -> Path:
    """``PII_MODEL_CACHE_DIR``, else ``<sys.prefix>/var/hearth-models`` (in the venv)."""
    configured = settings.HEARTH["PII_MODEL_CACHE_DIR"]
    return Path(configured) if configured else Path(sys.prefix) / "var" / "hearth-models"


def model_dir() -> Path:
    """The verified Whisper directory to load (configured, or base from the wheels).

    Raises:
        streams.media.whisper_model.ModelIntegrityError: a file is missing or differs.
    """
    configured = settings.HEARTH["PII_MODEL_DIR"]
    return resolve_model_dir(Path(configured) if configured else None, model_cache_dir())


@functools.cache
def transcriber() -> Transcriber:
    """The process's shared transcriber (built on first use; model verified first)."""
    return Transcriber(
        model_dir(),
        device=settings.HEARTH["PII_DEVICE"],
        cpu_threads=settings.HEARTH["PII_CPU_THREADS"],
    )


@functools.cache
def detector() -> PiiDetector:
    """The process's shared PII detector (spaCy model loaded on first use)."""
    return PiiDetector()


def build_analyser(
    timeline: DecisionTimeline, *, live: bool, keep_transcript: bool = True
) -> PiiAnalyser:
    """A new :class:`PiiAnalyser` for one stream, posting to ``timeline``.

    Args:
        timeline: Where its decisions go.
        live: Live windows (1.5 s hops, decisions within ~3 s) or file windows.
        keep_transcript: Keep the words (files); live streams do not.
    """
    pad = settings.HEARTH["PII_PAD_S"]
    options = AnalysisOptions(pad_s=pad) if live else AnalysisOptions.for_files(pad)
    return PiiAnalyser(
        transcriber(), detector(), timeline, options=options, keep_transcript=keep_transcript
    )
