"""Logs: JSON lines with session and user ids, and no SDP, addresses or names in them."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest
from django.urls import reverse

from project.logs import (
    IP_WITHHELD,
    SDP_WITHHELD,
    TEXT_FORMAT,
    LogContextFilter,
    LogRedactFilter,
    RedactingFormatter,
    axes_client_str,
    json_formatter,
    log_context,
    log_context_reset,
    log_context_set,
    logging_config,
    redact,
)

SDP = (
    "v=0\r\no=- 3924 0 IN IP4 192.0.2.7\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=candidate:1 1 udp 2130706431 192.0.2.7 50000 typ host\r\na=ice-pwd:secretpwd\r\n"
)


class JsonLog:
    """A handler on the root logger built as ``LOG_FORMAT=json`` builds it."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(json_formatter())
        self.handler.addFilter(LogContextFilter())
        self.handler.addFilter(LogRedactFilter())

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _plain_static_storage(settings) -> None:
    settings.STATIC_ROOT = None
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def json_log():
    log = JsonLog()
    root = logging.getLogger()
    root.addHandler(log.handler)
    yield log
    root.removeHandler(log.handler)


# --- Units ----------------------------------------------------------------------------


def test_redact_removes_sdp_and_addresses_and_keeps_the_rest():
    text = redact(f"offer from 192.0.2.7:5000 and [2001:db8::1] at 12:30:45: {SDP!r}")
    assert "v=0" not in text and "a=candidate" not in text and "secretpwd" not in text
    assert "192.0.2.7" not in text and "2001:db8::1" not in text
    assert SDP_WITHHELD in text and IP_WITHHELD in text
    assert "12:30:45" in text  # a time is not an address
    assert redact("aiortc 1.16.0, session 42 ended") == "aiortc 1.16.0, session 42 ended"
    assert redact("a=candidate:1 1 udp 1 10.0.0.1 9 typ host") == SDP_WITHHELD


def test_json_records_carry_the_log_context(json_log):
    logger = logging.getLogger("hearth.test")
    logger.warning("outside any context")
    tokens = log_context_set(session_id=7, user_id=3)
    try:
        logger.warning("session %s did a thing", 7)
        assert log_context() == {"session_id": 7, "user_id": 3}
    finally:
        log_context_reset(tokens)
    assert log_context() == {"session_id": None, "user_id": None}
    first, second = json_log.records()
    assert first["session_id"] is None and first["user_id"] is None
    assert second["session_id"] == 7 and second["user_id"] == 3
    assert second["message"] == "session 7 did a thing"
    assert second["level"] == "WARNING" and second["logger"] == "hearth.test"
    assert "timestamp" in second


def test_tracebacks_are_redacted_too(json_log):
    try:
        raise ValueError(f"bad offer {SDP}")
    except ValueError:
        logging.getLogger("hearth.test").exception("offer from 198.51.100.4 failed")
    (record,) = json_log.records()
    assert "ValueError" in record["exc_info"]
    assert "v=0" not in json_log.text and "198.51.100.4" not in json_log.text


def test_text_format_redacts_tracebacks_another_handler_cached():
    try:
        raise ValueError("from 198.51.100.4")
    except ValueError:
        info = sys.exc_info()
        record = logging.LogRecord("hearth.t", logging.ERROR, __file__, 1, "x", None, info)
    logging.Formatter().format(record)  # caches the raw traceback on the record
    text = RedactingFormatter(TEXT_FORMAT).format(record)
    assert "ValueError" in text and "198.51.100.4" not in text
    assert "198.51.100.4" in record.exc_text  # the other handler's cache is left alone


def test_logging_config_refuses_unknown_formats():
    assert logging_config("json")["handlers"]["console"]["formatter"] == "json"
    assert logging_config("text")["handlers"]["console"]["filters"] == ["context", "redact"]
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logging_config("xml")


def test_log_format_json_makes_the_process_log_json_lines():
    code = (
        "import django, logging; django.setup(); "
        "from project.logs import log_context_set; log_context_set(session_id=5, user_id=9); "
        "logging.getLogger('hearth.rtc').info('session %s ended from %s', 5, '203.0.113.9')"
    )
    env = {
        **os.environ,
        "LOG_FORMAT": "json",
        "SECRET_KEY": "x",
        "DJANGO_SETTINGS_MODULE": "project.settings",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["session_id"] == 5 and record["user_id"] == 9
    assert record["message"] == f"session 5 ended from {IP_WITHHELD}"
    bad = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**env, "LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "LOG_FORMAT" in bad.stderr


def test_axes_names_clients_by_pseudonym(settings):
    one = axes_client_str("alice", "10.0.0.1", "UA", "/login/", None)
    assert "alice" not in one and "10.0.0.1" not in one
    assert one.startswith("client=") and one.endswith("path=/login/")
    assert axes_client_str("alice", "10.0.0.1", "other UA", ("/login/",), None) == one
    assert axes_client_str("alice", "10.0.0.2", "UA", "/login/", None) != one


@pytest.mark.django_db
def test_failed_logins_log_no_username_or_address(client, json_log):
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user(username="quentin_private", password="a-long-pass-42")
    for _ in range(6):
        client.post(
            reverse("login"),
            {"username": "quentin_private", "password": "wrong"},
            REMOTE_ADDR="203.0.113.77",
        )
    records = json_log.records()
    assert any("AXES" in record["message"] for record in records)
    assert "quentin_private" not in json_log.text
    assert "203.0.113.77" not in json_log.text
    assert all("request" not in record for record in records)


# --- A real go-live and listen ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
async def test_a_live_broadcast_logs_ids_but_no_sdp_or_names(json_log, noisy_jfk_speech_level_wav):
    from channels.db import database_sync_to_async

    from streams.models import Recording
    from streams.rtc import media_server
    from tests.factories import befriend, make_user
    from tests.live_flow import go_live, listen, until
    from tests.rtc_helpers import close_all, connected, expect

    def make():
        zoe, yann = make_user("zoe_private_name"), make_user("yann_private_name")
        befriend(zoe, yann)
        return zoe, yann

    zoe, yann = await database_sync_to_async(make)()
    z, y = await connected(zoe), await connected(yann)
    pc_z, player, session_id = await go_live(z, noisy_jfk_speech_level_wav)
    pc_y, sink = await listen(y, session_id)
    room = media_server().rooms[session_id]
    await until(lambda: room.listeners_connected() == 1 and room.metrics.blocks_in >= 25)
    # A listen.start the media server refuses: its reply path logs too.
    await y.send_json_to({"type": "listen.start", "session_id": session_id, "sdp": "v=0 nope"})
    assert (await expect(y, "error"))["code"] == "bad_sdp"
    await z.send_json_to({"type": "broadcast.stop"})
    ended = await expect(z, "broadcast.ended")
    await sink.stop()
    player.audio.stop()
    await close_all([pc_z, pc_y], [z, y])

    recording = await database_sync_to_async(Recording.objects.get)(id=ended["recording_id"])
    records = json_log.records()  # every line is one JSON object
    assert records, "the flow logged nothing"
    for record in records:
        assert {"session_id", "user_id", "level", "logger", "message"} <= record.keys()
    # The broadcast's own lines carry its session and its broadcaster.
    ended_lines = [r for r in records if f"session {session_id} ended" in r["message"]]
    assert ended_lines and all(
        r["session_id"] == session_id and r["user_id"] == zoe.id for r in ended_lines
    )
    for secret in (
        "v=0",
        "a=candidate",
        "a=fingerprint",
        "ice-pwd",
        "zoe_private_name",
        "yann_private_name",
        recording.title,
        "127.0.0.1",
    ):
        assert secret not in json_log.text, secret


@pytest.mark.django_db
def test_http_requests_log_with_the_signed_in_user_id(client, json_log):
    from django.urls import path

    from tests.factories import make_user

    user = make_user("rita_private")
    client.force_login(user)
    seen: list[dict] = []

    def view(request):
        from django.http import HttpResponse

        logging.getLogger("hearth.test").warning("inside a view")
        seen.append(log_context())
        return HttpResponse("ok")

    from django.test import override_settings

    urlconf = type("urls", (), {"urlpatterns": [path("t", view)]})
    with override_settings(ROOT_URLCONF=urlconf):
        assert client.get("/t").status_code == 200
        client.logout()
        assert client.get("/t").status_code == 200
    assert seen == [{"session_id": None, "user_id": user.id}, {"session_id": None, "user_id": None}]
    assert [r["user_id"] for r in json_log.records()] == [user.id, None]
    assert log_context()["user_id"] is None  # reset after the request
