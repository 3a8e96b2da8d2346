"""Prometheus metrics of one Hearth process, and the protected ``/metrics`` endpoint.

Every metric is named ``hearth_*`` with its unit in the name (``_seconds``,
``_bytes``, ``_total`` for counters); :func:`metric_names` lists the series, and
``deploy/grafana/hearth-dashboard.json`` charts them (a test keeps the two in step).

Where the figures come from:

* HTTP: :class:`MetricsMiddleware` (first in ``MIDDLEWARE``) counts every request by
  method, route name and status and times it (until the response object is returned;
  a streamed body is not timed).
* WebSocket: :class:`ConsumerMetricsMixin` on the page consumer counts connections
  opened, refused and closed (by close-code class), frames by type, error frames by
  code (:func:`ws_error_frame_count`), and times each frame's handler; it also sets
  the log context (``project.logs``) for every message the consumer handles.
* Broadcasts: :func:`broadcast_started_count` and :func:`broadcast_ended_count`, called
  by the media server (``streams.rtc``).
* Media engine: each stage duration (``streams.media.metrics.stage_observer_set``)
  goes to a histogram as it happens; :class:`MediaCollector` reads the process's media
  server at scrape time for everything else (live broadcasts, listeners, blocks, drops,
  recording bytes, loop lag, worker capacity).
* Throttling: :func:`ratelimit_hit_count` (``users.ratelimit``) and the login failure
  and lockout receivers in ``users.signals`` (django-axes' ``user_locked_out``).

Per process: each daphne process (and each ``mediaworker``) has its own figures, so
Prometheus scrapes every process; the ``instance`` label tells them apart. ``/metrics``
answers only with ``METRICS_TOKEN`` (see :func:`metrics_view`); :func:`metrics_serve`
serves the same figures on a separate address for processes without HTTP.
"""

from __future__ import annotations

import hmac
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from project.api import json_error
from project.logs import log_context_reset, log_context_set

if TYPE_CHECKING:
    from streams.rtc import BroadcastRoom, MediaServer

# --- Metric definitions ------------------------------------------------------------

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the HTTP and WebSocket handler latency histograms."""
STAGE_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
)
"""Upper bounds (seconds) of the per-stage histogram: a 20 ms block must be through
every stage well within 20 ms, and a stage call is abandoned at 2 s."""

HTTP_REQUESTS = Counter(
    "hearth_http_requests_total",
    "HTTP requests answered, by method, route name and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "hearth_http_request_duration_seconds",
    "Seconds from a request entering the middleware stack to its response.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS_S,
)
WS_OPENED = Counter(
    "hearth_ws_connections_opened_total", "WebSocket connections accepted (signed-in pages)."
)
WS_REFUSED = Counter(
    "hearth_ws_connections_refused_total",
    "WebSocket handshakes refused, by reason (origin, unauthenticated, other).",
    ["reason"],
)
WS_CLOSED = Counter(
    "hearth_ws_connections_closed_total",
    "Accepted WebSocket connections that ended, by close-code class "
    "(normal: 1000/1001, abnormal: 1006 or none, protocol: other 1xxx, application: 3xxx/4xxx).",
    ["code_class"],
)
WS_OPEN = Gauge("hearth_ws_connections", "WebSocket connections open now.")
WS_FRAMES = Counter(
    "hearth_ws_frames_received_total",
    "Client WebSocket frames received, by message type (invalid: not a known type).",
    ["type"],
)
WS_ERROR_FRAMES = Counter(
    "hearth_ws_error_frames_total", "Error frames sent to pages, by error code.", ["code"]
)
WS_HANDLER_DURATION = Histogram(
    "hearth_ws_handler_duration_seconds",
    "Seconds the server spent handling one client frame, by message type.",
    ["type"],
    buckets=LATENCY_BUCKETS_S,
)
BROADCASTS_STARTED = Counter(
    "hearth_broadcasts_started_total", "Broadcasts that went live on this process."
)
BROADCASTS_ENDED = Counter(
    "hearth_broadcasts_ended_total",
    "Broadcasts of this process that ended, by end reason (stopped, disconnected, failed, ...).",
    ["reason"],
)
STAGE_DURATION = Histogram(
    "hearth_media_stage_duration_seconds",
    "Seconds per block in each media-engine stage (receive, queue, process, each "
    "processor, encode, relay).",
    ["stage"],
    buckets=STAGE_BUCKETS_S,
)
RATELIMIT_HITS = Counter(
    "hearth_ratelimit_hits_total",
    "Requests and WebSocket attempts refused by a rate limit, by limit group.",
    ["group"],
)
LOGIN_FAILURES = Counter("hearth_login_failures_total", "Failed log-in attempts.")
LOGIN_LOCKOUTS = Counter(
    "hearth_login_lockouts_total",
    "Log-in attempts answered with the lockout (django-axes), the locking one included.",
)

_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# --- HTTP ------------------------------------------------------------------------


def _http_observe(request: HttpRequest, response: HttpResponse, seconds: float) -> None:
    method = request.method if request.method in _HTTP_METHODS else "other"
    match = getattr(request, "resolver_match", None)
    if match is not None:
        route = match.view_name or "unnamed"
    elif settings.STATIC_URL and request.path.startswith(settings.STATIC_URL):
        route = "static"  # served by WhiteNoise before any URL pattern is tried
    else:
        route = "unmatched"
    HTTP_REQUESTS.labels(method, route, str(response.status_code)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)


class MetricsMiddleware:
    """Counts and times every HTTP request (``hearth_http_*``), sync or async.

    Labels stay few: the method (``other`` for unusual ones), the URL pattern's name
    (``static`` for static files, ``unmatched`` when no pattern matched, so a scan of
    random paths adds no series) and the status code.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        """Pass the request on and record its outcome."""
        if self._is_async:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        _http_observe(request, response, time.perf_counter() - started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = await self.get_response(request)
        _http_observe(request, response, time.perf_counter() - started)
        return response


# --- WebSocket ---------------------------------------------------------------------


def ws_close_class(code: object) -> str:
    """The ``code_class`` label of a WebSocket close code (see ``WS_CLOSED``)."""
    if code in (1000, 1001):
        return "normal"
    if code in (None, 1006) or not isinstance(code, int):
        return "abnormal"
    if 1000 <= code < 2000:
        return "protocol"
    if 3000 <= code < 5000:
        return "application"
    return "abnormal"


def ws_refused_count(reason: str) -> None:
    """Count a refused WebSocket handshake (``origin``, ``unauthenticated``, ``other``)."""
    WS_REFUSED.labels(reason).inc()


def ws_error_frame_count(code: str) -> None:
    """Count one ``error`` frame sent to a page, by its ``code``."""
    WS_ERROR_FRAMES.labels(code).inc()


class ConsumerMetricsMixin:
    """Put before ``AsyncWebsocketConsumer`` in a consumer's bases: WebSocket metrics
    and the log context, with no change to the consumer's own methods.

    * ``accept()`` counts the connection opened; ``close()`` before it, refused.
    * The ``websocket.disconnect`` message counts it closed by its close code; a
      consumer that ends without one (a crash, a cancelled task) counts as abnormal.
    * Each client frame is counted and timed by :attr:`frame_type`, which the consumer
      sets once it knows the frame's type is one it handles (``invalid`` otherwise).
    * Every message the consumer handles (frames and channel-layer events) runs with
      the log context ``user_id`` (the signed-in user) and ``session_id`` (the
      consumer's ``broadcasting`` session, if any); a handler may narrow it further.
    """

    frame_type: str | None = None
    """Set by the consumer to the type of the frame being handled (a metric label)."""
    _ws_open = False
    _ws_closed = False

    if TYPE_CHECKING:
        scope: dict[str, Any]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Run the consumer; count it closed if it ended without a disconnect message."""
        try:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
        finally:
            self._ws_closed_count(None)

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        """Accept the handshake and count the connection opened."""
        await super().accept(subprotocol, headers)  # type: ignore[misc]
        if not self._ws_open:
            self._ws_open = True
            WS_OPENED.inc()
            WS_OPEN.inc()

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the socket; before ``accept()`` that refuses the handshake (counted)."""
        if not self._ws_open and not self._ws_closed:
            self._ws_closed = True
            ws_refused_count("unauthenticated" if code == 4401 else "other")
        await super().close(code, reason)  # type: ignore[misc]

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Count the connection closed by its code, then disconnect as usual."""
        self._ws_closed_count(message.get("code"))
        await super().websocket_disconnect(message)  # type: ignore[misc]

    def _ws_closed_count(self, code: object) -> None:
        if self._ws_open and not self._ws_closed:
            self._ws_closed = True
            WS_CLOSED.labels(ws_close_class(code)).inc()
            WS_OPEN.dec()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Handle ``message`` within the log context; count and time client frames."""
        user = self.scope.get("user")
        user_id = user.id if getattr(user, "is_authenticated", False) else None
        tokens = log_context_set(user_id=user_id, session_id=getattr(self, "broadcasting", None))
        try:
            if message.get("type") != "websocket.receive":
                await super().dispatch(message)  # type: ignore[misc]
                return
            self.frame_type = None
            started = time.perf_counter()
            try:
                await super().dispatch(message)  # type: ignore[misc]
            finally:
                kind = self.frame_type or "invalid"
                WS_FRAMES.labels(kind).inc()
                WS_HANDLER_DURATION.labels(kind).observe(time.perf_counter() - started)
        finally:
            log_context_reset(tokens)


# --- Broadcasts and the media engine --------------------------------------------------


def broadcast_started_count() -> None:
    """Count a broadcast that went live on this process."""
    BROADCASTS_STARTED.inc()


@dataclass
class _EngineTotals:
    """Counters of the media engine, summed over rooms (see :class:`MediaCollector`)."""

    blocks_in: int = 0
    blocks_processed: int = 0
    blocks_failed_closed: int = 0
    lag_skips: int = 0
    gap_samples: int = 0
    packets_encoded: int = 0
    listener_drops: int = 0
    recording_bytes: int = 0
    sink_drops: dict[str, int] = field(default_factory=dict)

    def add_room(self, room: BroadcastRoom) -> None:
        """Add ``room``'s figures so far."""
        from streams.recording import SAMPLE_WIDTH_BYTES

        stats = room.metrics
        self.blocks_in += stats.blocks_in
        self.blocks_processed += stats.blocks_processed
        self.blocks_failed_closed += stats.blocks_failed_closed
        self.lag_skips += stats.lag_events
        self.gap_samples += stats.gap_samples
        for sink, dropped in dict(stats.sink_drops).items():
            self.sink_drops[sink] = self.sink_drops.get(sink, 0) + dropped
        if room.relay is not None:
            self.packets_encoded += room.relay.packets_encoded
            self.listener_drops += room.relay.dropped_total
        if room.recorder_sink is not None:
            self.recording_bytes += room.recorder_sink.recorder.frames_written * SAMPLE_WIDTH_BYTES

    def copy(self) -> _EngineTotals:
        """An independent copy."""
        return _EngineTotals(**{**self.__dict__, "sink_drops": dict(self.sink_drops)})


_engine_lock = threading.Lock()
_engine_retired = _EngineTotals()
_rooms_retired: weakref.WeakSet[Any] = weakref.WeakSet()


def broadcast_ended_count(room: BroadcastRoom, reason: str) -> None:
    """Count a broadcast ended (by ``reason``) and keep its engine figures.

    Call once the room is closed (its graph drained): its blocks, drops and recording
    bytes join the process totals, so the counters :class:`MediaCollector` exports
    keep them after the room is gone. A second call for the same room does nothing.
    """
    with _engine_lock:
        if room in _rooms_retired:
            return
        _engine_retired.add_room(room)
        _rooms_retired.add(room)
    BROADCASTS_ENDED.labels(reason).inc()


def _current_media_server() -> MediaServer | None:
    from streams import rtc

    return rtc._server


class MediaCollector(Collector):
    """Reads this process's media server (``streams.rtc``) at scrape time.

    The engine counts per room in plain integers (no lock, no metrics import on the
    audio path). Counters here are the sum of the rooms still live and of the figures
    every ended room left in the process totals (:func:`broadcast_ended_count`), so
    they only go up for as long as the process lives, and move while a broadcast is
    on rather than when it ends. Gauges describe the moment of the scrape.
    """

    def describe(self) -> Iterable[Metric]:
        """The families, without samples (no media server is read at registration)."""
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        """The families with this moment's samples."""
        families = self._families()
        server = _current_media_server()
        with _engine_lock:
            totals = _engine_retired.copy()
            rooms = list(server.rooms.values()) if server is not None else []
            live_rooms = [room for room in rooms if room not in _rooms_retired]
            for room in live_rooms:
                totals.add_room(room)
        connected = connecting = 0
        failed_streams = 0
        for room in live_rooms:
            for listener in list(room.listeners.values()):
                if listener.connected.is_set():
                    connected += 1
                else:
                    connecting += 1
            failed_streams += bool(room.metrics.failed)
        families["hearth_live_broadcasts"].add_metric(
            [], sum(1 for room in live_rooms if not room.closing)
        )
        families["hearth_listeners"].add_metric(["connected"], connected)
        families["hearth_listeners"].add_metric(["connecting"], connecting)
        families["hearth_media_streams_failed"].add_metric([], failed_streams)
        families["hearth_media_blocks"].add_metric([], totals.blocks_in)
        families["hearth_media_blocks_processed"].add_metric([], totals.blocks_processed)
        families["hearth_media_blocks_failed_closed"].add_metric([], totals.blocks_failed_closed)
        families["hearth_media_lag_skips"].add_metric([], totals.lag_skips)
        families["hearth_media_gap_seconds"].add_metric([], totals.gap_samples / 48_000)
        for sink, dropped in sorted(totals.sink_drops.items()):
            families["hearth_media_sink_dropped_items"].add_metric([sink], dropped)
        families["hearth_media_listener_dropped_packets"].add_metric([], totals.listener_drops)
        families["hearth_media_packets_encoded"].add_metric([], totals.packets_encoded)
        families["hearth_recording_bytes_written"].add_metric([], totals.recording_bytes)
        slots = settings.HEARTH["MEDIA_THREADS"]
        families["hearth_media_worker_slots"].add_metric([], slots)
        if server is not None:
            families["hearth_ice_candidates_dropped"].add_metric([], server.candidates_dropped)
            lag = server.loop_lag.summary()
            families["hearth_media_loop_lag_seconds"].add_metric(["0.5"], lag["p50_ms"] / 1000)
            families["hearth_media_loop_lag_seconds"].add_metric(["0.95"], lag["p95_ms"] / 1000)
            free = getattr(server.workers.processing_slots, "_value", None)
            if isinstance(free, int):
                families["hearth_media_worker_slots_busy"].add_metric([], max(0, slots - free))
        return list(families.values())

    @staticmethod
    def _families() -> dict[str, Metric]:
        def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels or [])

        def counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=labels or [])

        families: list[Metric] = [
            gauge("hearth_live_broadcasts", "Broadcasts live on this process now."),
            gauge(
                "hearth_listeners",
                "Listeners of this process's broadcasts now, by state (connected, connecting).",
                ["state"],
            ),
            gauge(
                "hearth_media_streams_failed",
                "Live broadcasts one of whose stages failed (their audio fails closed).",
            ),
            counter("hearth_media_blocks", "Audio blocks (20 ms) that entered the engine."),
            counter(
                "hearth_media_blocks_processed", "Audio blocks every processing stage processed."
            ),
            counter(
                "hearth_media_blocks_failed_closed",
                "Audio blocks that left the engine failed closed (as silence).",
            ),
            counter(
                "hearth_media_lag_skips",
                "Blocks that skipped processing because the stream fell behind real time.",
            ),
            counter(
                "hearth_media_gap_seconds",
                "Seconds of silence filled in where broadcaster packets were missing.",
            ),
            counter(
                "hearth_media_sink_dropped_items",
                "Items a graph sink's queue dropped (drop-oldest), by sink.",
                ["sink"],
            ),
            counter(
                "hearth_media_listener_dropped_packets",
                "Packets dropped for listeners whose sender fell behind.",
            ),
            counter("hearth_media_packets_encoded", "Opus packets the relays encoded."),
            counter(
                "hearth_recording_bytes_written", "Bytes of audio written to recordings (WAV data)."
            ),
            counter(
                "hearth_ice_candidates_dropped",
                "Remote ICE candidates removed from SDP offers (over the limit or refused).",
            ),
            gauge(
                "hearth_media_loop_lag_seconds",
                "How late the event loop woke a 100 ms sleep, over the last minute, by quantile.",
                ["quantile"],
            ),
            gauge(
                "hearth_media_worker_slots",
                "Stream processing jobs that may run at once (MEDIA_THREADS).",
            ),
            gauge("hearth_media_worker_slots_busy", "Stream processing jobs running now."),
        ]
        return {family.name: family for family in families}


_stage_children: dict[str, Any] = {}


def _stage_observe(stage: str, seconds: float) -> None:
    child = _stage_children.get(stage)
    if child is None:
        child = _stage_children.setdefault(stage, STAGE_DURATION.labels(stage))
    child.observe(seconds)


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Register :class:`MediaCollector` and the stage observer, once per process.

    Called by the streams app's ``ready()``; safe to call again.
    """
    global _installed
    from streams.media.metrics import stage_observer_set

    with _install_lock:
        if _installed:
            return
        REGISTRY.register(MediaCollector())
        stage_observer_set(_stage_observe)
        _installed = True


# --- Throttling ----------------------------------------------------------------------


def ratelimit_hit_count(group: str) -> None:
    """Count one attempt refused by the rate limit ``group``."""
    RATELIMIT_HITS.labels(group).inc()


def login_failure_count() -> None:
    """Count one failed log-in."""
    LOGIN_FAILURES.inc()


def login_lockout_count() -> None:
    """Count one log-in attempt answered with the lockout."""
    LOGIN_LOCKOUTS.inc()


# --- Exposition ----------------------------------------------------------------------


def metric_names() -> set[str]:
    """Every ``hearth_*`` series name this process exposes (``_total``, ``_bucket``,
    ``_count``, ``_sum`` included), whether or not it has samples yet."""
    install()
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("hearth_"):
            continue
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


def _token_ok(request: HttpRequest, token: str) -> bool | None:
    """None: no bearer credentials; else whether they match ``token``."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


async def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics → this process's metrics in the Prometheus text format.

    Needs ``Authorization: Bearer <METRICS_TOKEN>``. Without a configured token the URL
    does not exist (404), so nothing is exposed by default; no credentials → 401 (with
    ``WWW-Authenticate: Bearer``), wrong ones → 403, other methods than GET/HEAD → 405;
    errors are JSON ``{"error"}`` as in the API. Never cached; touches no session.
    Async, so under daphne it reads the media server on the server's own event loop.
    """
    token = settings.METRICS_TOKEN
    if not token:
        return json_error("Not found.", status=404)
    if request.method not in ("GET", "HEAD"):
        response = json_error(f"Method {request.method} not allowed.", status=405)
        response["Allow"] = "GET, HEAD"
        return response
    verdict = _token_ok(request, token)
    if verdict is None:
        response = json_error("Send Authorization: Bearer <token>.", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if not verdict:
        return json_error("Wrong metrics token.", status=403)
    install()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = HttpResponse(encoder(REGISTRY), content_type=content_type)
    add_never_cache_headers(response)
    return response


def metrics_serve(port: int, addr: str = "127.0.0.1") -> None:
    """Serve this process's metrics at ``http://<addr>:<port>/`` from a daemon thread.

    For processes with no Django HTTP stack of their own (``manage.py mediaworker``):
    the same registry and figures as ``/metrics``, but *without* a token, so bind it to
    loopback (the default) or an address only Prometheus can reach. Port 0 picks a
    free port (not reported back). Returns once the server listens.

    Raises:
        OSError: the address cannot be bound (in use, not on this host).
    """
    install()
    start_http_server(port, addr=addr, registry=REGISTRY)
