"""A spoken-PII test corpus made at run time with espeak-ng, with ground-truth spans.

Shared by ``tests/test_pii_speech.py`` and ``bench/pii.py``. Each sentence is spoken
piece by piece by Debian's ``espeak-ng`` (several voices and speeds), every piece
resampled to 48 kHz mono, its leading/trailing silence trimmed, and the pieces joined
with short gaps, so the exact sample range of every PII piece is known. Some
sentences are mixed with real recorded noise (``noise_freesound_573577.wav``), and the
JFK excerpt (no PII) ends the corpus.

Voices are espeak-ng's English ones that Whisper base transcribes: with the Caribbean
voice (``en-029``) it garbled both sentences tried (a name and a street), which would
measure the synthetic voice rather than the recognisers.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bench._common import shared_data_dir
from streams.audio import SAMPLE_RATE, load_audio, make_noisy_mix

GAP_S = 0.12
"""Silence between pieces of a sentence, seconds."""

SENTENCE_GAP_S = 0.9
"""Silence between sentences (and before JFK), seconds."""

Piece = tuple[str, str, tuple[str, ...]]
"""``(text to speak, entity label or "", secrets)``: words that must not stay audible."""


@dataclass(frozen=True)
class Sentence:
    """One spoken sentence: voice, words per minute, pieces, and noise SNR (None: clean)."""

    voice: str
    wpm: int
    pieces: tuple[Piece, ...]
    snr_db: float | None = None


@dataclass(frozen=True)
class Span:
    """A ground-truth PII span: label, ``[start, end)`` in 48 kHz samples, secrets."""

    label: str
    start: int
    end: int
    secrets: tuple[str, ...]


def _s(text: str) -> Piece:
    return (text, "", ())


SENTENCES: tuple[Sentence, ...] = (
    Sentence(
        "en-us",
        150,
        (
            _s("Hi, my name is"),
            ("Sarah Johnson", "PERSON", ("Sarah", "Johnson")),
            _s("and I love gardening."),
        ),
    ),
    Sentence(
        "en-gb",
        160,
        (
            _s("You can reach me on"),
            ("0 7 7 0 0 9 0 0 1 2 3", "PHONE_NUMBER", ("07700900123",)),
            _s("any evening."),
        ),
    ),
    Sentence(
        "en-us+f3",
        145,
        (
            _s("My card number is"),
            (
                "four five three nine, one four eight eight, "
                "zero three four three, six four six seven",
                "CREDIT_CARD",
                ("4539148803436467",),
            ),
            _s("thank you."),
        ),
    ),
    Sentence(
        "en-gb-scotland",
        150,
        (
            _s("Send it to"),
            ("john dot smith at example dot com", "EMAIL_ADDRESS", ("smith", "example")),
            _s("please."),
        ),
    ),
    Sentence(
        "en-gb-x-gbclan",
        150,
        (
            _s("I live at"),
            ("42 Baker Street", "STREET_ADDRESS", ("Baker",)),
            _s("near the station."),
        ),
    ),
    Sentence(
        "en-us",
        170,
        (
            _s("Call me at"),
            (
                "five five five, eight six seven, five three oh nine",
                "PHONE_NUMBER",
                ("5558675309",),
            ),
            _s("after lunch."),
        ),
    ),
    Sentence(
        "en-gb",
        150,
        (
            _s("This is"),
            ("David Miller", "PERSON", ("David", "Miller")),
            _s("speaking from"),
            ("Manchester", "LOCATION", ("Manchester",)),
            _s("today."),
        ),
    ),
    Sentence(
        "en-us+f3",
        150,
        (
            _s("My email is"),
            ("mary underscore jones at gmail dot com", "EMAIL_ADDRESS", ("jones", "gmail")),
            _s("so write to me."),
        ),
    ),
    Sentence(
        "en-gb-scotland",
        145,
        (
            _s("The flat is at"),
            ("17 Victoria Road", "STREET_ADDRESS", ("Victoria",)),
            _s("in"),
            ("Glasgow", "LOCATION", ("Glasgow",)),
            _s("and it is lovely."),
        ),
    ),
    Sentence(
        "en-us",
        140,
        (
            _s("Text me on"),
            ("0 2 0 7, 9 4 6, 0 0 5 8", "PHONE_NUMBER", ("02079460058",)),
            _s("tonight."),
        ),
    ),
    Sentence(
        "en-gb-x-gbcwmd",
        160,
        (
            _s("Please ask for"),
            ("Emily Clarke", "PERSON", ("Emily", "Clarke")),
            _s("at the front desk."),
        ),
    ),
    # Noisy: real recorded noise at 10 dB SNR, then the denoiser in the graph.
    Sentence(
        "en-gb-x-rp",
        150,
        (
            _s("My number is"),
            ("0 7 9 1 1, 1 2 3, 4 5 6", "PHONE_NUMBER", ("07911123456",)),
            _s("call me."),
        ),
        10.0,
    ),
    Sentence(
        "en-us",
        150,
        (_s("My friend"), ("Robert Brown", "PERSON", ("Robert", "Brown")), _s("is coming over.")),
        10.0,
    ),
    Sentence(
        "en-gb",
        150,
        (
            _s("Write to"),
            ("anna dot white at example dot org", "EMAIL_ADDRESS", ("white", "example")),
            _s("for details."),
        ),
        10.0,
    ),
    Sentence(
        "en-us+f3",
        150,
        (_s("We moved to"), ("8 Church Lane", "STREET_ADDRESS", ("Church",)), _s("last spring.")),
        10.0,
    ),
    Sentence(
        "en-gb-x-rp",
        165,
        (
            _s("I'm"),
            ("Oliver Thompson", "PERSON", ("Oliver", "Thompson")),
            _s("and my mobile is"),
            ("0 7 4 5 6, 7 8 9, 0 1 2", "PHONE_NUMBER", ("07456789012",)),
            _s("."),
        ),
    ),
    Sentence(
        "en-us",
        155,
        (
            _s("Her address is"),
            ("221 Maple Avenue", "STREET_ADDRESS", ("Maple",)),
            _s("in"),
            ("Boston", "LOCATION", ("Boston",)),
            _s("."),
        ),
    ),
    Sentence(
        "en-gb",
        140,
        (
            _s("The card is"),
            (
                "five four one two, seven five one two, three four one two, three four five six",
                "CREDIT_CARD",
                ("5412751234123456",),
            ),
            _s("okay."),
        ),
        10.0,
    ),
)
"""The corpus: 18 sentences, 22 PII spans (names, phone numbers said digit by digit and
grouped, a card number, spoken e-mails, house number + street, places)."""


def espeak_available() -> bool:
    """Whether Debian's ``espeak-ng`` is on PATH."""
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str, wpm: int, workdir: Path) -> NDArray[np.float32]:
    """``text`` spoken by espeak-ng, 48 kHz mono float32, edge silence trimmed.

    Raises:
        subprocess.CalledProcessError: espeak-ng failed (unknown voice, ...).
    """
    path = workdir / f"piece-{abs(hash((text, voice, wpm)))}.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), text],
        check=True,
        capture_output=True,
        timeout=60,
    )
    samples = load_audio(path)
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def build(workdir: Path, *, with_jfk: bool = True) -> tuple[NDArray[np.float32], list[Span], int]:
    """Speak the corpus; return ``(samples, spans, jfk_start)``.

    Returns:
        48 kHz mono float32 audio (peak <= 0.9), the ground-truth PII spans in
        samples, and the sample where JFK starts (``len(samples)`` without JFK).
    """
    data = shared_data_dir()
    noise = load_audio(data / "noise_freesound_573577.wav")
    gap = np.zeros(round(GAP_S * SAMPLE_RATE), np.float32)
    pause = np.zeros(round(SENTENCE_GAP_S * SAMPLE_RATE), np.float32)
    parts: list[NDArray[np.float32]] = [pause]
    spans: list[Span] = []
    offset = len(pause)
    for sentence in SENTENCES:
        pieces: list[NDArray[np.float32]] = []
        local: list[Span] = []
        at = 0
        for text, label, secrets in sentence.pieces:
            audio = speak(text, sentence.voice, sentence.wpm, workdir)
            if label:
                local.append(Span(label, at, at + len(audio), secrets))
            pieces += [audio, gap]
            at += len(audio) + len(gap)
        said = np.concatenate(pieces) * np.float32(0.7)
        if sentence.snr_db is not None:
            said = make_noisy_mix(said, noise, sentence.snr_db, peak=0.9)
        spans += [Span(s.label, s.start + offset, s.end + offset, s.secrets) for s in local]
        parts += [said.astype(np.float32), pause]
        offset += len(said) + len(pause)
    jfk_start = offset
    if with_jfk:
        jfk = load_audio(data / "jfk.flac")
        parts += [jfk, pause]
    return np.concatenate(parts).astype(np.float32), spans, jfk_start
