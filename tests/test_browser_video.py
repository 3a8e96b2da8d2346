"""Live video in headless Debian Chromium: a broadcaster goes live with the camera
(Chromium's fake camera plays a pan across ``city.jpg`` written as Y4M at test time),
a friend's listen page shows the server's redacted video in a playing ``<video>``, and
keeps getting it after the broadcaster's media connection is replaced (reconnect).

Same loopback-only namespace and daphne as ``tests/test_browser.py``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from playwright.sync_api import expect

from bench._video_material import pan_frames
from tests.conftest import MODELS_DIR
from tests.test_browser import _sign_up_friends, chromium, server

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

__all__ = ["server"]  # the fixture, used below


def _write_y4m(path: Path, *, frames: int = 45, width: int = 640, height: int = 480) -> Path:
    """A YUV4MPEG2 (4:2:0) file of ``frames`` crops panning across ``city.jpg``, 15 fps.

    Chromium's ``--use-file-for-fake-video-capture`` loops it as the camera.
    """
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F15:1 Ip A1:1 C420jpeg\n".encode())
        for crop in pan_frames(frames=frames, width=width, height=height, step=8):
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(crop, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def _until(page, script: str, *, timeout_s: float = 30.0) -> object:
    """Evaluate ``script`` (a JS expression) every 250 ms until it is truthy; the page's
    CSP forbids the string eval behind ``wait_for_function``."""
    tries = int(timeout_s * 4)
    for _ in range(tries):
        value = page.evaluate(f"() => {script}")
        if value:
            return value
        page.wait_for_timeout(250)
    raise AssertionError(f"{script} stayed false for {timeout_s} s")


def _frames_decoded(page) -> int:
    """Video frames the listen page's peer connection decoded so far (``getStats``)."""
    return int(
        page.evaluate(
            """async () => {
                let frames = 0;
                (await window.hearthListener.pc.getStats()).forEach((s) => {
                    if (s.type === "inbound-rtp" && s.kind === "video") frames = s.framesDecoded;
                });
                return frames;
            }"""
        )
    )


@pytest.mark.parametrize("server", [{"HEARTH_MODEL_DIR": str(MODELS_DIR)}], indirect=True)
def test_a_friend_watches_the_redacted_camera(server, noisy_jfk_wav: Path, tmp_path) -> None:
    ns, base = server
    camera = _write_y4m(tmp_path / "city.y4m")
    with chromium(ns, noisy_jfk_wav, video=camera) as browser:
        alice = browser.page()
        bob = browser.page()
        _sign_up_friends(base, alice, bob)

        alice.goto(f"{base}/live/")
        expect(alice.locator("#blur-faces")).not_to_be_visible()
        alice.check("#camera-on")
        expect(alice.locator("#blur-faces")).to_be_checked()
        expect(alice.locator("#blur-plates")).to_be_checked()
        expect(alice.locator("#blur-text")).not_to_be_checked()  # off unless asked for
        _until(alice, "document.getElementById('camera-preview').videoWidth > 0")
        assert alice.locator("#camera-select option").count() >= 1
        alice.click("#go-live-start")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "live", timeout=30_000
        )
        expect(alice.locator("#camera-on")).to_be_disabled()

        bob.goto(f"{base}/")
        bob.locator(".live-now-item .listen-link").click(timeout=15_000)
        expect(bob.locator("#listen-status")).to_have_attribute(
            "data-state", "live", timeout=30_000
        )
        video = bob.locator("#remote-video")
        expect(video).to_be_visible(timeout=15_000)
        _until(bob, "document.getElementById('remote-video').videoWidth > 0")
        first = bob.evaluate("() => document.getElementById('remote-video').currentTime")
        _until(bob, f"document.getElementById('remote-video').currentTime > {first} + 1")
        size = bob.evaluate(
            "() => [document.getElementById('remote-video').videoWidth,"
            " document.getElementById('remote-video').videoHeight]"
        )
        assert size == [640, 480], size
        # The audio still plays through the page's audio sink.
        assert bob.evaluate("() => document.getElementById('remote-audio').srcObject !== null")
        # The broadcaster is told what the server blurs (session.stats, every 2 s).
        expect(alice.locator("#video-status")).to_contain_text(
            "faces and licence plates blurred", timeout=15_000
        )

        # Alice's media connection fails (ICE): the new peer connection carries the
        # camera too, and bob's same video element plays the new frames.
        alice.evaluate(
            """() => {
                const pc = window.hearthBroadcaster.pc;
                window.failedPc = pc;
                Object.defineProperty(pc, "connectionState", { get: () => "failed" });
                pc.dispatchEvent(new Event("connectionstatechange"));
            }"""
        )
        _until(
            alice,
            "window.hearthBroadcaster.pc !== window.failedPc"
            " && window.hearthBroadcaster.pc.connectionState === 'connected'",
        )
        assert alice.evaluate(
            """() => window.hearthBroadcaster.pc.getSenders()
                .some((s) => s.track?.kind === "video" && s.track.readyState === "live")"""
        ), "the reconnected peer connection does not send the camera"
        # The old connection is closed by now: only the new camera's frames, through
        # the server's redaction graph, can reach bob (a few were still in flight).
        listener = bob.evaluate("() => window.hearthListener.pc.connectionState")
        decoded = _frames_decoded(bob)
        for _ in range(120):
            if _frames_decoded(bob) >= decoded + 20:
                break
            bob.wait_for_timeout(250)
        assert _frames_decoded(bob) >= decoded + 20, "bob's video froze after the reconnect"
        assert listener == "connected"
        assert bob.evaluate("() => window.hearthListener.pc.connectionState") == "connected"
        expect(video).to_be_visible()
        expect(alice.locator("#live-status")).to_have_attribute("data-state", "live")

        alice.click("#go-live-stop")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "ended", timeout=20_000
        )
        expect(bob.locator("#remote-video")).to_be_hidden(timeout=15_000)
