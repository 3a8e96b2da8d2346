"""Shared fixtures: real test material, loopback-only ICE, a media root per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench._common import shared_data_dir, shared_models_dir

DATA_DIR = shared_data_dir()
MODELS_DIR = shared_models_dir()


@pytest.fixture(autouse=True)
def _hearth_settings(settings, tmp_path: Path) -> None:
    # Every WebRTC peer in the tests gathers ICE host candidates on loopback only.
    settings.ICE_HOST_ADDRESSES = ["127.0.0.1"]
    settings.ICE_SERVERS = []
    settings.MEDIA_ROOT = tmp_path / "media"
    # Recordings stay WAV, and are kept however short, unless a test turns compression
    # or the minimum on (tests/test_recording_keep.py does): most tests write a few
    # milliseconds of audio and read the recorder's WAV, which a background transcode
    # would race.
    # A broadcasting page whose socket closes ends its broadcast at once, and so does
    # one whose peer connection fails or closes, unless a test sets a grace period
    # (tests/test_broadcast_grace.py, tests/test_media_reconnect.py; the browser
    # tests' daphne runs with the production defaults).
    settings.HEARTH = {
        **settings.HEARTH,
        "RECORDING_COMPRESS": False,
        "MIN_RECORDING_S": 0.0,
        "BROADCAST_GRACE_S": 0.0,
        # YuNet's verified ONNX from ../shared/models (as CI has it).
        "MODEL_DIR": str(MODELS_DIR),
        "MEDIA_RECONNECT_S": 0.0,
    }


@pytest.fixture(autouse=True)
def _fresh_cache(settings) -> None:
    # Rate-limit counters live in the cache: give every test an empty one of its own
    # (a new LocMem store, or a new key prefix on Redis, never flushing the database
    # other processes share). Django drops its cache connections on this change.
    import copy
    import uuid

    caches = copy.deepcopy(settings.CACHES)
    tag = f"hearth-test-{uuid.uuid4().hex[:12]}"
    caches["default"]["KEY_PREFIX"] = tag
    if caches["default"]["BACKEND"].endswith("LocMemCache"):
        caches["default"]["LOCATION"] = tag
    settings.CACHES = caches


@pytest.fixture(autouse=True)
def _fresh_channel_layer() -> None:
    # Each async test runs on its own event loop; channels_redis binds its locks and
    # connections to the loop that first used them, so give every test a new layer.
    from channels.layers import channel_layers

    channel_layers.backends.clear()


@pytest.fixture
def alice():
    from tests.factories import make_user

    return make_user("alice")


@pytest.fixture
def bob():
    from tests.factories import make_user

    return make_user("bob")


@pytest.fixture
def carol():
    from tests.factories import make_user

    return make_user("carol")


@pytest.fixture
def layer(settings):
    """The configured channel layer, fresh for this test (its own Redis key prefix)."""
    import copy
    import uuid

    from channels.layers import get_channel_layer

    config = copy.deepcopy(settings.CHANNEL_LAYERS)
    default = config["default"]
    if "redis" in default["BACKEND"].lower():
        default.setdefault("CONFIG", {})["prefix"] = f"hearth-test-{uuid.uuid4().hex[:12]}"
    settings.CHANNEL_LAYERS = config  # channels drops its cached layers on this change
    return get_channel_layer()


@pytest.fixture(scope="session")
def jfk_48k() -> np.ndarray:
    """JFK excerpt as float32 mono 48 kHz (the clean reference)."""
    from streams.audio import load_audio

    return load_audio(DATA_DIR / "jfk.flac")


@pytest.fixture(scope="session")
def noise_48k() -> np.ndarray:
    """Real recorded noise, float32 mono 48 kHz."""
    from streams.audio import load_audio

    return load_audio(DATA_DIR / "noise_freesound_573577.wav")


@pytest.fixture(scope="session")
def noisy_jfk_0db(jfk_48k: np.ndarray, noise_48k: np.ndarray) -> np.ndarray:
    """JFK + looped noise at 0 dB SNR, float32 mono 48 kHz, peak 0.95."""
    from streams.audio import make_noisy_mix

    return make_noisy_mix(jfk_48k, noise_48k, 0.0, peak=0.95)


@pytest.fixture(scope="session")
def noisy_jfk_wav(tmp_path_factory: pytest.TempPathFactory, noisy_jfk_0db: np.ndarray) -> Path:
    """The 0 dB noisy JFK mix as a 48 kHz 16-bit WAV file (peak 0.95, for Chromium)."""
    from streams.audio import write_wav

    path = tmp_path_factory.mktemp("material") / "noisy_jfk_0db.wav"
    write_wav(path, noisy_jfk_0db)
    return path


@pytest.fixture(scope="session")
def noisy_jfk_speech_level(jfk_48k: np.ndarray, noise_48k: np.ndarray) -> np.ndarray:
    """JFK + noise at 0 dB SNR with the speech at its recorded level (-17 dBFS RMS).

    The noise is impulsive: its peaks exceed full scale, and a 16-bit path (Opus
    decoding, the browser) clips them; the speech itself is untouched.
    """
    from streams.audio import make_noisy_mix

    return make_noisy_mix(jfk_48k, noise_48k, 0.0)


def write_float_wav(path: Path, samples: np.ndarray, sample_rate: int = 48_000) -> None:
    """32-bit float WAV via PyAV: keeps the mix's impulsive noise peaks beyond [-1, 1]."""
    import av

    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_f32le", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.asarray(samples, np.float32).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = sample_rate
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


@pytest.fixture(scope="session")
def noisy_jfk_speech_level_wav(
    tmp_path_factory: pytest.TempPathFactory, noisy_jfk_speech_level: np.ndarray
) -> Path:
    """:func:`noisy_jfk_speech_level` as a 48 kHz 32-bit float WAV (no clipping on disk)."""
    path = tmp_path_factory.mktemp("material") / "noisy_jfk_0db_float.wav"
    write_float_wav(path, noisy_jfk_speech_level)
    return path
