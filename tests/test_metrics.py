"""/metrics: protected by a token, Prometheus text, and figures that move with real
HTTP, WebSocket, media and throttling activity."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import AsyncClient
from django.urls import reverse
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from project.asgi import application
from project.metrics import metric_names, metrics_serve, ws_close_class
from streams.rtc import media_server
from tests.factories import make_user
from tests.live_flow import go_live, listen, until
from tests.rtc_helpers import close_all, connected, expect, friends_make

TOKEN = "metrics-token-for-tests-0123456789abcdef"
PASSWORD = "a-long-test-passphrase-42"


def value(name: str, **labels: str) -> float:
    """The current value of one series in this process's registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text → {(sample name, sorted labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def token(settings) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.fixture(autouse=True)
def _plain_static_storage(settings) -> None:
    settings.STATIC_ROOT = None
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


# --- The endpoint ---------------------------------------------------------------------


def test_no_token_configured_means_no_endpoint(client, settings):
    settings.METRICS_TOKEN = ""
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything")
    assert response.status_code == 404
    assert response.json() == {"error": "Not found."}
    assert "hearth_" not in response.content.decode()


def test_missing_credentials_get_401_json(client, token):
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "error" in response.json()
    basic = client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}")
    assert basic.status_code == 401


@pytest.mark.parametrize("sent", ["wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper()])
def test_wrong_token_gets_403_json(client, token, sent):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {sent}")
    assert response.status_code == 403
    assert response.json() == {"error": "Wrong metrics token."}


def test_other_methods_get_405(client, token):
    response = client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


def test_right_token_gets_prometheus_text_without_cookies(client, token):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "no-store" in response["Cache-Control"]
    assert not response.cookies  # no session, no CSRF cookie
    assert "Content-Security-Policy" in response  # the site's headers still apply
    samples = parse(response.content.decode())
    names = {name for name, _ in samples}
    # Families with samples before any activity, and the process collector.
    assert {"hearth_media_worker_slots", "hearth_live_broadcasts"} <= names
    assert "process_cpu_seconds_total" in names


def test_openmetrics_is_served_when_asked_for(client, token):
    response = client.get(
        "/metrics",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
        HTTP_ACCEPT="application/openmetrics-text; version=1.0.0",
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")


def test_http_requests_are_counted_by_route_and_status(client, token):
    before = value("hearth_http_requests_total", method="GET", route="login", status="200")
    before_count = value("hearth_http_request_duration_seconds_count", method="GET", route="login")
    unmatched = value("hearth_http_requests_total", method="GET", route="unmatched", status="404")
    assert client.get(reverse("login")).status_code == 200
    assert client.get("/no/such/page/abc123").status_code == 404
    after = value("hearth_http_requests_total", method="GET", route="login", status="200")
    assert after == before + 1
    assert (
        value("hearth_http_request_duration_seconds_count", method="GET", route="login")
        == before_count + 1
    )
    # A path no pattern matches is one "unmatched" series, whatever the path.
    assert (
        value("hearth_http_requests_total", method="GET", route="unmatched", status="404")
        == unmatched + 1
    )
    text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()
    assert "abc123" not in text


def test_static_files_are_one_route(settings):
    from django.test import Client

    settings.WHITENOISE_USE_FINDERS = True  # read when a new client builds its handler
    before = value("hearth_http_requests_total", method="GET", route="static", status="200")
    assert Client().get("/static/css/hearth.css").status_code == 200
    after = value("hearth_http_requests_total", method="GET", route="static", status="200")
    assert after == before + 1


def test_short_metrics_token_is_refused_at_start_up():
    import os
    import subprocess
    import sys

    env = {**os.environ, "METRICS_TOKEN": "too-short", "SECRET_KEY": "x"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**env, "DJANGO_SETTINGS_MODULE": "project.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "METRICS_TOKEN must be at least 32" in result.stderr


def test_metrics_serve_exposes_the_registry_on_its_own_address():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics_serve(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert "hearth_media_worker_slots" in text
    assert "hearth_http_requests_total" in text or "hearth_http_requests" in text


def test_close_code_classes():
    assert ws_close_class(1000) == ws_close_class(1001) == "normal"
    assert ws_close_class(1006) == ws_close_class(None) == "abnormal"
    assert ws_close_class(1011) == "protocol"
    assert ws_close_class(4401) == ws_close_class(3000) == "application"


def test_every_series_is_named_with_its_unit():
    names = metric_names()
    assert names, "no hearth_* metric registered"
    for name in names:
        assert name.startswith("hearth_")
        assert "_ms" not in name and "_milliseconds" not in name, name


# --- Throttling -----------------------------------------------------------------------


@pytest.mark.django_db
def test_rate_limit_refusals_are_counted_by_group(client, settings):
    settings.HEARTH = {**settings.HEARTH, "SIGNUP_RATE": "1/h"}
    before = value("hearth_ratelimit_hits_total", group="signup")

    def sign_up(username: str):
        client.logout()
        return client.post(
            reverse("signup"),
            {"username": username, "password1": PASSWORD, "password2": PASSWORD},
            REMOTE_ADDR="10.0.0.7",
        )

    assert sign_up("ann").status_code == 302
    assert value("hearth_ratelimit_hits_total", group="signup") == before
    assert sign_up("ben").status_code == 429
    assert sign_up("cat").status_code == 429
    assert value("hearth_ratelimit_hits_total", group="signup") == before + 2


@pytest.mark.django_db
def test_login_failures_and_lockouts_are_counted(client):
    get_user_model().objects.create_user(username="alice", password=PASSWORD)
    failures = value("hearth_login_failures_total")
    lockouts = value("hearth_login_lockouts_total")

    def login(password: str):
        return client.post(
            reverse("login"), {"username": "alice", "password": password}, REMOTE_ADDR="10.0.0.1"
        )

    for _ in range(4):
        assert login("wrong").status_code == 200
    assert value("hearth_login_failures_total") == failures + 4
    assert value("hearth_login_lockouts_total") == lockouts
    assert login("wrong").status_code == 429  # reaches the limit: locked out
    assert value("hearth_login_lockouts_total") == lockouts + 1
    assert login(PASSWORD).status_code == 429  # even the right password, while locked
    assert value("hearth_login_lockouts_total") == lockouts + 2


@pytest.mark.django_db(transaction=True)
async def test_websocket_rate_limit_refusals_are_counted(settings) -> None:
    settings.HEARTH = {**settings.HEARTH, "BROADCAST_START_RATE": "1/m"}
    group = "ws:broadcast.start"
    before = value("hearth_ratelimit_hits_total", group=group)
    limited = value("hearth_ws_error_frames_total", code="rate_limited")
    ann = await database_sync_to_async(make_user)("ann")
    page = await connected(ann)
    for expected in ("bad_sdp", "rate_limited"):
        await page.send_json_to({"type": "broadcast.start", "sdp": "not sdp"})
        assert (await expect(page, "error"))["code"] == expected
    await page.disconnect()
    assert value("hearth_ratelimit_hits_total", group=group) == before + 1
    assert value("hearth_ws_error_frames_total", code="rate_limited") == limited + 1


# --- WebSocket ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_websocket_connections_frames_and_errors_are_counted() -> None:
    ann = await database_sync_to_async(make_user)("ann")
    opened = value("hearth_ws_connections_opened_total")
    closed = value("hearth_ws_connections_closed_total", code_class="normal")
    pings = value("hearth_ws_frames_received_total", type="ping")
    ping_timed = value("hearth_ws_handler_duration_seconds_count", type="ping")
    invalid = value("hearth_ws_frames_received_total", type="invalid")
    bad_json = value("hearth_ws_error_frames_total", code="bad_json")
    unknown = value("hearth_ws_error_frames_total", code="unknown_type")
    refused_origin = value("hearth_ws_connections_refused_total", reason="origin")

    page = await connected(ann)
    assert value("hearth_ws_connections_opened_total") == opened + 1
    open_now = value("hearth_ws_connections")
    await page.send_json_to({"type": "ping"})
    await expect(page, "pong")
    await page.send_to(text_data="{not json")
    assert (await expect(page, "error"))["code"] == "bad_json"
    await page.send_json_to({"type": "launch.rockets"})
    assert (await expect(page, "error"))["code"] == "unknown_type"
    await page.disconnect(code=1000)

    assert value("hearth_ws_frames_received_total", type="ping") == pings + 1
    assert value("hearth_ws_handler_duration_seconds_count", type="ping") == ping_timed + 1
    # Bad JSON and an unknown type are both "invalid": no label from client text.
    assert value("hearth_ws_frames_received_total", type="invalid") == invalid + 2
    assert value("hearth_ws_frames_received_total", type="launch.rockets") == 0
    assert value("hearth_ws_error_frames_total", code="bad_json") == bad_json + 1
    assert value("hearth_ws_error_frames_total", code="unknown_type") == unknown + 1
    assert value("hearth_ws_connections_closed_total", code_class="normal") == closed + 1
    assert value("hearth_ws_connections") == open_now - 1

    foreign = WebsocketCommunicator(
        application, "/ws/", headers=[(b"origin", b"http://evil.example")]
    )
    assert not (await foreign.connect())[0]
    assert value("hearth_ws_connections_refused_total", reason="origin") == refused_origin + 1


async def test_unauthenticated_sockets_are_counted_refused() -> None:
    from django.contrib.auth.models import AnonymousUser

    from tests.rtc_helpers import communicator_for

    before = value("hearth_ws_connections_refused_total", reason="unauthenticated")
    opened = value("hearth_ws_connections_opened_total")
    comm = communicator_for(AnonymousUser())
    assert (await comm.connect())[1] == 4401
    assert value("hearth_ws_connections_refused_total", reason="unauthenticated") == before + 1
    assert value("hearth_ws_connections_opened_total") == opened


# --- A real broadcast -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
async def test_a_live_broadcast_shows_in_metrics_and_its_counts_outlive_it(
    token, noisy_jfk_speech_level_wav: Path
) -> None:
    ann, ben = await friends_make()
    a, b = await connected(ann), await connected(ben)
    started = value("hearth_broadcasts_started_total")
    stopped = value("hearth_broadcasts_ended_total", reason="stopped")
    process_count = value("hearth_media_stage_duration_seconds_count", stage="process")
    blocks_before = value("hearth_media_blocks_total")
    bytes_before = value("hearth_recording_bytes_written_total")
    starts = value("hearth_ws_frames_received_total", type="broadcast.start")

    pc_a, player, session_id = await go_live(a, noisy_jfk_speech_level_wav)
    pc_b, sink = await listen(b, session_id)
    while (await expect(a, "session.stats"))["listeners"] != 1:
        pass
    room = media_server().rooms[session_id]
    await until(lambda: room.metrics.blocks_in >= 50)  # a second of audio through

    http = AsyncClient()
    response = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    live = parse(response.content.decode())
    assert live[("hearth_live_broadcasts", ())] == 1
    assert live[("hearth_listeners", (("state", "connected"),))] == 1
    assert live[("hearth_broadcasts_started_total", ())] == started + 1
    assert live[("hearth_ws_frames_received_total", (("type", "broadcast.start"),))] == starts + 1
    assert live[("hearth_ws_connections", ())] >= 2
    assert live[("hearth_media_blocks_total", ())] >= blocks_before + 50
    assert live[("hearth_recording_bytes_written_total", ())] > bytes_before
    assert live[("hearth_media_packets_encoded_total", ())] > 0
    assert live[("hearth_media_worker_slots", ())] >= 1
    assert (
        live[("hearth_media_stage_duration_seconds_count", (("stage", "process"),))]
        >= process_count + 50
    )
    for stage in ("receive", "queue", "encode", "relay"):
        assert live[("hearth_media_stage_duration_seconds_count", (("stage", stage),))] > 0
    assert ("hearth_media_loop_lag_seconds", (("quantile", "0.95"),)) in live
    blocks_live = live[("hearth_media_blocks_total", ())]
    bytes_live = live[("hearth_recording_bytes_written_total", ())]

    await a.send_json_to({"type": "broadcast.stop"})
    await expect(a, "broadcast.ended")
    await sink.stop()
    player.audio.stop()
    await close_all([pc_a, pc_b], [a, b])
    await asyncio.sleep(0)

    # The room is gone; its counts stay in the process totals.
    after = parse(
        (await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).content.decode()
    )
    assert after[("hearth_live_broadcasts", ())] == 0
    assert after[("hearth_listeners", (("state", "connected"),))] == 0
    assert after[("hearth_broadcasts_ended_total", (("reason", "stopped"),))] == stopped + 1
    assert after[("hearth_media_blocks_total", ())] >= blocks_live
    assert after[("hearth_recording_bytes_written_total", ())] >= bytes_live
    recording_bytes = after[("hearth_recording_bytes_written_total", ())] - bytes_before
    assert recording_bytes % 2 == 0  # whole 16-bit samples


def test_metrics_is_exempt_from_the_https_redirect(client, token, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get(reverse("login")).status_code == 301
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
