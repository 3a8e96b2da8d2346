"""``manage.py fetch_face_model``: YuNet downloaded from a loopback HTTP server, verified.

The served "good" file is the real model from ``../shared/models`` (read from there,
never copied into the repository); the server runs on 127.0.0.1 in a thread and
records every path it is asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from bench._video_material import CITY_FACES, city_image, face_hit
from streams.media.detectors import YUNET_FILE, YuNetDetector, face_detector_build
from tests.conftest import MODELS_DIR

pytestmark = pytest.mark.backend_free

GOOD = (MODELS_DIR / YUNET_FILE.name).read_bytes()


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch) -> Iterator[_Server]:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # loopback only, never through a proxy
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files = {}
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _fetch(*args: str) -> str:
    out = StringIO()
    call_command("fetch_face_model", *args, stdout=out)
    return out.getvalue()


def test_a_good_download_lands_in_the_configured_dir_and_yunet_loads_it(
    server: _Server, tmp_path: Path, settings
) -> None:
    model_dir = tmp_path / "models"  # created by the command
    settings.HEARTH = {**settings.HEARTH, "MODEL_DIR": str(model_dir)}
    server.files["/yunet.onnx"] = GOOD
    out = _fetch("--url", _url(server, "/yunet.onnx"))
    assert server.requests == ["/yunet.onnx"]
    assert "SHA-256 verified" in out
    assert [p.name for p in model_dir.iterdir()] == [YUNET_FILE.name]  # no partial file
    assert (model_dir / YUNET_FILE.name).read_bytes() == GOOD
    detector = face_detector_build(model_dir=model_dir, choice="yunet")
    assert isinstance(detector, YuNetDetector)
    found = [(b.x0, b.y0, b.x1, b.y1) for b in detector.detect(city_image())]
    # It finds the city faces as tests/test_video.py's YuNet does (17 or more of 20).
    assert sum(any(face_hit(b, face) for b in found) for face in CITY_FACES) >= 17


def test_dest_overrides_the_configured_dir(server: _Server, tmp_path: Path) -> None:
    server.files["/m"] = GOOD
    out = _fetch("--dest", str(tmp_path / "d"), "--url", _url(server, "/m"))
    assert (tmp_path / "d" / YUNET_FILE.name).read_bytes() == GOOD
    assert f"set HEARTH_MODEL_DIR={tmp_path / 'd'}" in out


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (GOOD[:-1] + bytes([GOOD[-1] ^ 1]), "has SHA-256"),  # same size, one bit flipped
        (GOOD[:1000], "has 1000 bytes"),  # truncated
        (GOOD + b"\0", "more than the 232589 bytes"),  # too long: stopped at the limit
    ],
    ids=["flipped-bit", "truncated", "too-long"],
)
def test_a_wrong_download_is_refused_and_leaves_nothing(
    server: _Server, tmp_path: Path, body: bytes, message: str
) -> None:
    server.files["/bad"] = body
    with pytest.raises(CommandError, match=message):
        _fetch("--dest", str(tmp_path), "--url", _url(server, "/bad"))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_request_is_a_command_error_and_leaves_nothing(
    server: _Server, tmp_path: Path
) -> None:
    with pytest.raises(CommandError, match=r"cannot download .*404"):
        _fetch("--dest", str(tmp_path), "--url", _url(server, "/missing"))
    assert server.requests == ["/missing"]
    assert list(tmp_path.iterdir()) == []


def test_a_verified_file_already_there_is_not_downloaded_again(
    server: _Server, tmp_path: Path
) -> None:
    (tmp_path / YUNET_FILE.name).write_bytes(GOOD)
    server.files["/m"] = GOOD
    out = _fetch("--dest", str(tmp_path), "--url", _url(server, "/m"))
    assert "already there" in out
    assert server.requests == []


def test_a_differing_file_is_replaced_only_with_force(server: _Server, tmp_path: Path) -> None:
    impostor = b"not a face model"
    (tmp_path / YUNET_FILE.name).write_bytes(impostor)
    server.files["/m"] = GOOD
    with pytest.raises(CommandError, match="--force"):
        _fetch("--dest", str(tmp_path), "--url", _url(server, "/m"))
    assert server.requests == []
    assert (tmp_path / YUNET_FILE.name).read_bytes() == impostor

    _fetch("--dest", str(tmp_path), "--url", _url(server, "/m"), "--force")
    assert server.requests == ["/m"]
    assert [p.name for p in tmp_path.iterdir()] == [YUNET_FILE.name]
    assert (tmp_path / YUNET_FILE.name).read_bytes() == GOOD


def test_force_keeps_the_present_file_when_the_new_download_is_wrong(
    server: _Server, tmp_path: Path
) -> None:
    impostor = b"not a face model"
    (tmp_path / YUNET_FILE.name).write_bytes(impostor)
    server.files["/bad"] = GOOD[:1000]
    with pytest.raises(CommandError, match="has 1000 bytes"):
        _fetch("--dest", str(tmp_path), "--url", _url(server, "/bad"), "--force")
    assert [p.name for p in tmp_path.iterdir()] == [YUNET_FILE.name]
    assert (tmp_path / YUNET_FILE.name).read_bytes() == impostor


def test_no_model_dir_is_a_command_error(settings) -> None:
    settings.HEARTH = {**settings.HEARTH, "MODEL_DIR": ""}
    with pytest.raises(CommandError, match="HEARTH_MODEL_DIR"):
        _fetch()
