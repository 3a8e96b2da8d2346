"""In-app navigation keeps a live broadcast (one document, the live bar on every
page), and a broadcaster's dropped WebSocket re-attaches to the still-live broadcast.

Same setting as tests/test_browser.py: daphne and Debian Chromium in a loopback-only
network namespace; any console error fails the test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.netns import inside
from tests.test_browser import (
    CUTTABLE_WEBSOCKET,
    _audio_level,
    _befriend,
    _launch,
    _orm,
    _sign_up,
    _watch_console,
    server,  # noqa: F401  (the fixture)
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _befriend_and_go_live(base: str, alice: Page, bob: Page) -> None:
    _sign_up(alice, base, "alice")
    _sign_up(bob, base, "bob")
    _befriend("alice", "bob")
    alice.goto(f"{base}/live/")
    alice.click("#go-live-start")
    expect(alice.locator("#live-status")).to_have_attribute("data-state", "live", timeout=20_000)
    bob.goto(f"{base}/")
    bob.locator(".live-now-item .listen-link").click()
    expect(bob.locator("#listen-status")).to_have_attribute("data-state", "live", timeout=20_000)
    assert _audio_level(bob) > 0.01


def test_navigating_while_live_keeps_the_broadcast_and_one_recording(
    server,  # noqa: F811
    noisy_jfk_wav: Path,
) -> None:
    from streams.models import Recording

    ns, base = server
    errors: list[str] = []
    with inside(ns):
        playwright, browser = _launch(noisy_jfk_wav)
    try:
        alice, bob = browser.new_context().new_page(), browser.new_context().new_page()
        for page in (alice, bob):
            _watch_console(page, errors)
        _befriend_and_go_live(base, alice, bob)
        started = time.monotonic()
        bar = alice.locator("#livebar-text")
        expect(bar).to_have_text("You're live · 1 listening", timeout=10_000)
        assert alice.title().startswith("● Live · ")
        # Leaving the site while live asks first.
        asks = """() => {
            const event = new Event("beforeunload", { cancelable: true });
            window.dispatchEvent(event);
            return event.defaultPrevented;
        }"""
        assert alice.evaluate(asks) is True
        alice.evaluate("window.sameDocument = true")

        for name, path in (("Home", "/"), ("Recordings", "/recordings/"), ("Home", "/")):
            alice.locator(".site-nav").get_by_role("link", name=name).click()
            alice.wait_for_url(f"{base}{path}")
            expect(alice.locator(".site-nav a[aria-current=page]")).to_have_attribute("href", path)
            expect(bar).to_have_text("You're live · 1 listening")
            assert alice.evaluate("window.sameDocument") is True, "the page was reloaded"
            assert alice.title().startswith("● Live · ")
            assert alice.evaluate("window.hearthBroadcaster.pc.connectionState") == "connected"
            assert _audio_level(bob) > 0.01, f"bob hears nothing after alice opened {name}"
            alice.wait_for_timeout(1500)
        expect(bob.locator("#listen-status")).to_have_attribute("data-state", "live")

        # Back on the go-live page, it shows the broadcast still going; the bar stops it.
        alice.locator(".site-nav").get_by_role("link", name="Go live").click()
        expect(alice.locator("#live-status")).to_have_attribute("data-state", "live")
        alice.click("#livebar-stop")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "ended", timeout=20_000
        )
        wall = time.monotonic() - started
        expect(alice.locator("#livebar")).to_be_hidden()
        assert alice.evaluate(asks) is False  # not live: leaving asks nothing
        expect(bob.locator("#listen-status")).to_have_attribute(
            "data-state", "ended", timeout=10_000
        )

        recordings = _orm(lambda: list(Recording.objects.filter(owner__username="alice")))
        assert len(recordings) == 1, "one broadcast, one recording"
        assert recordings[0].duration_s >= 0.8 * wall - 1.0, (recordings[0].duration_s, wall)
        assert errors == [], "console errors:\n" + "\n".join(errors)
    finally:
        browser.close()
        playwright.stop()


@pytest.mark.parametrize("server", [{"BROADCAST_GRACE_S": "20"}], indirect=True)
def test_a_broadcasters_dropped_socket_reattaches_within_the_grace(
    server,  # noqa: F811
    noisy_jfk_wav: Path,
) -> None:
    from streams.models import LiveSession

    ns, base = server
    errors: list[str] = []
    with inside(ns):
        playwright, browser = _launch(noisy_jfk_wav)
    try:
        alice_ctx = browser.new_context()
        alice_ctx.add_init_script(CUTTABLE_WEBSOCKET)
        alice, bob = alice_ctx.new_page(), browser.new_context().new_page()
        for page in (alice, bob):
            _watch_console(page, errors)
        _befriend_and_go_live(base, alice, bob)
        alice.evaluate("networkCut(true)")
        expect(alice.locator("#livebar")).to_have_attribute("data-state", "reconnecting")
        expect(alice.locator("#ws-status")).not_to_have_attribute("data-state", "open")
        assert _audio_level(bob) > 0.01, "the media stops with the socket"
        alice.wait_for_timeout(2000)
        alice.evaluate("networkCut(false)")
        expect(alice.locator("#ws-status")).to_have_attribute("data-state", "open", timeout=20_000)
        expect(alice.locator("#livebar")).to_have_attribute("data-state", "live", timeout=10_000)
        expect(alice.locator("#live-status")).to_have_attribute("data-state", "live")
        sessions = _orm(lambda: list(LiveSession.objects.filter(broadcaster__username="alice")))
        assert len(sessions) == 1 and sessions[0].ended_at is None
        # The re-attached page drives the broadcast again: mute reaches the listener.
        alice.click("#live-mute")
        expect(bob.locator("#listen-muted")).to_be_visible(timeout=10_000)
        alice.click("#go-live-stop")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "ended", timeout=20_000
        )
        ended = _orm(lambda: LiveSession.objects.get(id=sessions[0].id))
        assert ended.end_reason == "stopped"
        assert errors == [], "console errors:\n" + "\n".join(errors)
    finally:
        browser.close()
        playwright.stop()
