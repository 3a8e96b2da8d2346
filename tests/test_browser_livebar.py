"""In-app navigation keeps a live broadcast and a live listen (one document, the live
bar on every page); a broadcaster's dropped WebSocket re-attaches to the still-live
broadcast, and a failed audio connection is replaced by a new one.

Same setting as tests/test_browser.py: daphne and Debian Chromium in a loopback-only
network namespace; any console error fails the test.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.test_browser import (
    CUTTABLE_WEBSOCKET,
    _audio_level,
    _orm,
    _screenshot,
    _sign_up_friends,
    chromium,
    server,  # noqa: F401  (the fixture)
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LIVE_PLAYERS = """[...document.querySelectorAll("audio")]
    .filter((audio) => !audio.closest(".recording-item, .recording-page")).length"""
"""How many <audio> elements of the page are not a recording's player."""


def _befriend_and_go_live(base: str, alice: Page, bob: Page) -> None:
    _sign_up_friends(base, alice, bob)
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
    with chromium(ns, noisy_jfk_wav) as browser:
        alice, bob = browser.page(), browser.page()
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
            if path == "/recordings/":
                _screenshot(alice, "live-bar-broadcasting")
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


@pytest.mark.parametrize("server", [{"BROADCAST_GRACE_S": "20"}], indirect=True)
def test_a_broadcasters_dropped_socket_and_failed_audio_reconnect_to_one_broadcast(
    server,  # noqa: F811
    noisy_jfk_wav: Path,
) -> None:
    from streams.models import LiveSession, Recording

    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        alice_ctx = browser.new_context()
        alice_ctx.add_init_script(CUTTABLE_WEBSOCKET)
        alice, bob = browser.page(alice_ctx), browser.page()
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

        # The audio connection fails (ICE): the page offers a new peer connection on the
        # same socket, the server swaps it in, and bob hears alice again.
        alice.evaluate(
            """() => {
                const pc = window.hearthBroadcaster.pc;
                window.failedPc = pc;
                Object.defineProperty(pc, "connectionState", { get: () => "failed" });
                pc.dispatchEvent(new Event("connectionstatechange"));
            }"""
        )
        alice.wait_for_function(
            """() => window.hearthBroadcaster.pc !== window.failedPc
                && window.hearthBroadcaster.pc.connectionState === "connected"
                && window.failedPc.signalingState === "closed"
            """,
            timeout=20_000,
        )
        expect(alice.locator("#livebar")).to_have_attribute("data-state", "live", timeout=10_000)
        expect(alice.locator("#live-status")).to_have_attribute("data-state", "live")
        assert _audio_level(bob) > 0.01, "bob hears nothing after alice's audio reconnected"
        expect(bob.locator("#listen-status")).to_have_attribute("data-state", "live")

        # The re-attached page drives the broadcast again: mute reaches the listener.
        alice.click("#live-mute")
        expect(bob.locator("#listen-muted")).to_be_visible(timeout=10_000)
        alice.click("#go-live-stop")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "ended", timeout=20_000
        )
        ended = _orm(lambda: LiveSession.objects.get(id=sessions[0].id))
        assert ended.end_reason == "stopped"
        recordings = _orm(lambda: list(Recording.objects.filter(owner__username="alice")))
        assert len(recordings) == 1, "one broadcast, one recording, across both drops"


def test_a_listen_lives_in_the_bar_across_pages_and_ends_there(
    server,  # noqa: F811
    noisy_jfk_wav: Path,
    tmp_path: Path,
) -> None:
    # Before: the listener's peer connection and <audio> belonged to the listen page,
    # so clicking "Home" or "Recordings" silenced bob at once.
    import shutil
    from datetime import timedelta

    from django.utils import timezone

    from streams.models import Recording
    from users.models import User

    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        bob_ctx = browser.new_context()
        bob_ctx.add_init_script(CUTTABLE_WEBSOCKET)
        alice, bob = browser.page(), browser.page(bob_ctx)
        _sign_up_friends(base, alice, bob)

        def name_alice_and_keep_an_old_recording() -> None:
            alice_user = User.objects.get(username="alice")
            alice_user.display_name = "Alice A."
            alice_user.save(update_fields=["display_name"])
            folder = tmp_path / "media" / "recordings"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(noisy_jfk_wav, folder / "earlier.wav")
            earlier = timezone.now() - timedelta(hours=2)
            Recording.objects.create(
                owner=alice_user,
                title="Earlier",
                file="recordings/earlier.wav",
                started_at=earlier,
                ended_at=earlier + timedelta(seconds=11),
                duration_s=11.0,
                size_bytes=noisy_jfk_wav.stat().st_size,
            )

        _orm(name_alice_and_keep_an_old_recording)
        alice.goto(f"{base}/live/")
        alice.click("#go-live-start")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        alice_bar = alice.locator("#livebar-text")

        def listen_from_home() -> None:
            bob.locator(".site-nav").get_by_role("link", name="Home").click()
            bob.locator(".live-now-item .listen-link").click()
            expect(bob.locator("#listen-status")).to_have_attribute(
                "data-state", "live", timeout=20_000
            )
            expect(alice_bar).to_have_text("You're live · 1 listening", timeout=10_000)

        bob.goto(f"{base}/")
        bob.evaluate("window.sameDocument = true")
        listen_from_home()
        assert _audio_level(bob) > 0.01
        bob.evaluate("window.firstPc = window.hearthListener.pc")
        # On the listen page, the page is the player: the bar's row stays out of the way.
        expect(bob.locator("#livebar-listen")).to_be_hidden()

        row = bob.locator("#livebar-listen")
        text = bob.locator("#livebar-listen-text")
        for name, path in (("Home", "/"), ("Recordings", "/recordings/"), ("Home", "/")):
            bob.locator(".site-nav").get_by_role("link", name=name).click()
            bob.wait_for_url(f"{base}{path}")
            expect(text).to_have_text("Listening to Alice A.")
            expect(row.locator("#livebar-live")).to_have_attribute("data-on", "true")
            expect(row.locator("#livebar-elapsed")).to_have_text(re.compile(r"^\d+:\d\d$"))
            expect(row.get_by_role("slider", name="Volume")).to_be_visible()
            assert "♪ Listening to Alice A. · " in bob.title(), bob.title()
            assert bob.evaluate("window.sameDocument") is True, "the page was reloaded"
            assert bob.evaluate("window.hearthListener.pc === window.firstPc")
            assert _audio_level(bob) > 0.01, f"bob hears nothing on {name}"
            assert bob.evaluate(LIVE_PLAYERS) == 1, "a second live player"
            if path == "/recordings/":
                _screenshot(bob, "live-bar-listening")
            bob.wait_for_timeout(1000)

        # The socket drops under the bar: it says so and resumes by itself.
        bob.evaluate("networkCut(true)")
        expect(row).to_have_attribute("data-state", "reconnecting", timeout=15_000)
        expect(text).to_have_text("Reconnecting to Alice A.…")
        bob.evaluate("networkCut(false)")
        expect(row).to_have_attribute("data-state", "live", timeout=30_000)
        assert _audio_level(bob) > 0.01
        bob.evaluate("window.firstPc = window.hearthListener.pc")

        # Back on the listen page: it shows the bar's listen, no second connection.
        bob.locator(".live-now-item .listen-link").click()
        expect(bob.locator("#listen-status")).to_have_attribute("data-state", "live")
        expect(bob.locator("#listen-live")).to_have_attribute("data-on", "true")
        expect(bob.locator("#listen-start")).to_be_hidden()
        assert bob.evaluate("window.hearthListener.pc === window.firstPc")
        assert bob.evaluate(LIVE_PLAYERS) == 1, "a second live player"
        expect(alice_bar).to_have_text("You're live · 1 listening")

        # Leave (in the bar, on another page) stops the audio; focus goes to the Listen link.
        bob.locator(".site-nav").get_by_role("link", name="Home").click()
        expect(bob.locator(".live-now-item .listen-link")).to_be_visible()
        bob.get_by_role("button", name="Leave Alice A.'s broadcast").click()
        expect(row).to_be_hidden()
        expect(alice_bar).to_have_text("You're live · 0 listening", timeout=10_000)
        assert bob.evaluate(
            "(() => { const a = document.getElementById('remote-audio');"
            " return a.paused && a.srcObject === null; })()"
        )
        focused = "document.activeElement.className + ' ' + document.activeElement.id"
        assert "listen-link" in bob.evaluate(focused), bob.evaluate(focused)
        assert "♪" not in bob.title()

        # One player at a time: a recording played on another page stops the listen.
        listen_from_home()
        bob.locator(".site-nav").get_by_role("link", name="Recordings").click()
        player = bob.locator(".recording-item audio").first
        player.evaluate("async (audio) => { audio.muted = true; await audio.play(); }")
        expect(row).to_be_hidden(timeout=10_000)
        expect(alice_bar).to_have_text("You're live · 0 listening", timeout=10_000)
        player.evaluate("(audio) => audio.pause()")

        # Alice stops while bob listens from another page: the bar says it ended, and
        # links the recording.
        listen_from_home()
        bob.locator(".site-nav").get_by_role("link", name="Home").click()
        expect(text).to_have_text("Listening to Alice A.")
        alice.click("#go-live-stop")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "ended", timeout=20_000
        )
        expect(text).to_have_text("Alice A.'s broadcast has ended — replay it", timeout=10_000)
        expect(row.locator("#livebar-live")).to_be_hidden()
        assert "♪" not in bob.title()
        recording = _orm(lambda: Recording.objects.exclude(title="Earlier").get())
        replay = row.get_by_role("link", name="replay it")
        expect(replay).to_have_attribute("href", f"/recordings/{recording.id}/")
        replay.click()
        bob.wait_for_url(f"{base}/recordings/{recording.id}/")
        bob.get_by_role("button", name="Close").click()
        expect(bob.locator("#livebar")).to_be_hidden()
        assert bob.evaluate("window.sameDocument") is True
