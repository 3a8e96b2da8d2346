"""The whole product in headless Debian Chromium, driven by Playwright.

Two people sign up, become friends, one goes live with the (fake) microphone
playing the 0 dB noisy JFK mix, the other sees it without reloading, listens,
and after the broadcast replays the recording. Any console error fails the test.

Network rule: daphne and Chromium both run inside a network namespace that has
only a loopback interface (tests/netns.py), so Chromium cannot gather or use any
LAN candidate; the server gathers on 127.0.0.1 (ICE_HOST_ADDRESSES).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Route,
    expect,
    sync_playwright,
)

from tests.netns import inside, network_namespace

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_url_for_namespace() -> str:
    """The test database, reachable from inside the namespace (PostgreSQL by socket)."""
    from django.db import connection

    cfg = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{cfg['NAME']}"
    if connection.vendor == "postgresql":
        user = cfg.get("USER") or "postgres"
        password = f":{cfg['PASSWORD']}" if cfg.get("PASSWORD") else ""
        return f"postgres://{user}{password}@%2Fvar%2Frun%2Fpostgresql/{cfg['NAME']}"
    raise RuntimeError(f"unsupported test database {connection.vendor}")


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """daphne inside a fresh loopback-only namespace; yields (namespace, base URL).

    Indirect parametrisation passes extra environment for daphne (a dict).
    """
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url_for_namespace(),
        "SECRET_KEY": "browser-test",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "ICE_HOST_ADDRESSES": "127.0.0.1",
        "ICE_SERVERS": "[]",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "STATIC_ROOT": str(tmp_path / "static"),
        "PYTHONUNBUFFERED": "1",
        **getattr(request, "param", {}),
    }
    env.pop("REDIS_URL", None)  # one process: the in-memory layer (Redis is outside the namespace)
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=REPO,
        env=env,
        check=True,
    )
    log = (tmp_path / "daphne.log").open("w")
    with network_namespace("hearth-e2e") as ns:
        with inside(ns):
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "project.asgi:application",
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, (
                    "daphne did not start:\n" + (tmp_path / "daphne.log").read_text()[-3000:]
                )
                time.sleep(0.3)
        try:
            yield ns, base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            print((tmp_path / "daphne.log").read_text()[-4000:])


def _watch_console(page: Page, errors: list[str]) -> None:
    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"{page.url}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: uncaught {exc}"))
    page.on("dialog", lambda dialog: dialog.accept())


def _screenshot(page: Page, name: str) -> None:
    """Save a PNG for the README when HEARTH_SCREENSHOTS names a folder."""
    folder = os.environ.get("HEARTH_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _sign_up(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/signup/")
    page.fill("#id_username", username)
    page.fill("#id_password1", "a-long-Passphrase-42")
    page.fill("#id_password2", "a-long-Passphrase-42")
    page.click("#signup-form button[type=submit]")
    expect(page.locator("#ws-status")).to_have_attribute("data-state", "open", timeout=10_000)


# Lets a test cut the page's WebSocket like a network drop: networkCut(true) closes
# the open sockets and makes new ones fail until networkCut(false). (Chromium's
# offline emulation leaves open WebSockets alone.)
CUTTABLE_WEBSOCKET = """
(() => {
  const Native = window.WebSocket;
  const open = new Set();
  let cut = false;
  window.WebSocket = class extends Native {
    constructor(...args) {
      if (cut) throw new DOMException("network cut by the test", "NetworkError");
      super(...args);
      open.add(this);
      this.addEventListener("close", () => open.delete(this));
    }
  };
  window.networkCut = (on) => {
    cut = on;
    if (on) for (const ws of open) ws.close();
  };
})();
"""


def _orm(fn: Callable[[], T]) -> T:
    """Run ``fn`` (ORM work) in a thread of its own, closing its connection after.

    Playwright's sync API runs an event loop in the test's thread, where Django
    refuses synchronous database access.
    """
    from django.db import connection

    def run() -> T:
        try:
            return fn()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


LEVEL_JS = """async () => {
    let level = 0;
    (await window.hearthListener.pc.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio") level = s.audioLevel || 0;
    });
    return level;
}"""
"""The listen page's remote audio level (0..1), from its peer connection's stats."""


def _audio_level_until(page: Page, check: Callable[[float], bool], *, tries: int = 40) -> float:
    """The listen page's remote audio level, read up to ``tries`` times 250 ms apart
    until ``check(level)`` holds; returns the last level read."""
    level = page.evaluate(LEVEL_JS)
    for _ in range(tries - 1):
        if check(level):
            break
        page.wait_for_timeout(250)
        level = page.evaluate(LEVEL_JS)
    return level


def _audio_level(page: Page) -> float:
    """The listen page's remote audio level (0..1), waiting up to 10 s for one > 0.01."""
    return _audio_level_until(page, lambda level: level > 0.01)


def _befriend(a: str, b: str) -> None:
    """Make the users named ``a`` and ``b`` friends, straight in the database."""
    from users.models import Friendship, User

    def make() -> None:
        low, high = sorted(User.objects.filter(username__in=[a, b]), key=lambda u: u.id)
        Friendship.objects.create(user_low=low, user_high=high)

    _orm(make)


def _launch(
    audio: Path, *, video: Path | None = None, autoplay_anything: bool = True
) -> tuple[Playwright, Browser]:
    """Playwright and headless Debian Chromium whose fake microphone plays ``audio``
    (a WAV file) and, with ``video`` (a Y4M file), whose fake camera loops it.

    ``autoplay_anything=False`` keeps Chromium's own autoplay policy (sound only
    after a user activation) instead of letting any page play.
    """
    playwright = sync_playwright().start()
    camera = [f"--use-file-for-fake-video-capture={video}"] if video is not None else []
    autoplay = ["--autoplay-policy=no-user-gesture-required"] if autoplay_anything else []
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={audio}",
            *camera,
            "--allow-loopback-in-peer-connection",
            *autoplay,
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )
    return playwright, browser


@dataclass
class Chromium:
    """A Chromium launched by :func:`chromium`: ``browser`` (Playwright's), and
    ``errors``, the console errors and uncaught exceptions of the pages made by
    :meth:`page`, each as ``"<page URL>: <text>"``, in the order they came."""

    browser: Browser
    errors: list[str] = field(default_factory=list)

    def new_context(self, **options: Any) -> BrowserContext:
        """A fresh browser context; ``options`` are Playwright's ``new_context`` ones."""
        return self.browser.new_context(**options)

    def page(self, context: BrowserContext | None = None, **options: Any) -> Page:
        """A new page whose console errors go to ``errors`` (and whose dialogs are
        accepted): in ``context``, or in a fresh context made with ``options``.

        Raises TypeError when given both a context and options.
        """
        if context is None:
            context = self.browser.new_context(**options)
        elif options:
            raise TypeError("options are for a fresh context; this one is made already")
        page = context.new_page()
        _watch_console(page, self.errors)
        return page


@contextlib.contextmanager
def chromium(
    ns: str,
    audio: Path,
    *,
    video: Path | None = None,
    autoplay_anything: bool = True,
    check_console: bool = True,
) -> Iterator[Chromium]:
    """Chromium (see ``_launch`` for ``audio``, ``video``, ``autoplay_anything``)
    started inside network namespace ``ns``, for the block.

    When the block ends normally, fails if a page made by ``Chromium.page`` logged a
    console error, unless ``check_console=False`` (the test judges ``errors`` itself);
    an exception from the block goes on unmasked. The browser is closed and
    Playwright stopped whatever happens.
    """
    with inside(ns):  # Playwright's driver and Chromium start inside the namespace
        playwright, browser = _launch(audio, video=video, autoplay_anything=autoplay_anything)
    try:
        handle = Chromium(browser)
        yield handle
        if check_console:
            assert handle.errors == [], "console errors:\n" + "\n".join(handle.errors)
    finally:
        try:
            browser.close()
        finally:
            playwright.stop()


def _sign_up_friends(base: str, alice: Page, bob: Page) -> None:
    """Sign up "alice" on page ``alice`` and "bob" on page ``bob``; make them friends."""
    _sign_up(alice, base, "alice")
    _sign_up(bob, base, "bob")
    _befriend("alice", "bob")


def test_sign_up_befriend_go_live_listen_and_replay(server, noisy_jfk_wav: Path) -> None:
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), "install Debian chromium"
    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        alice_ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        bob_ctx = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
        alice, bob = browser.page(alice_ctx), browser.page(bob_ctx)

        _sign_up(alice, base, "alice")
        _sign_up(bob, base, "bob")

        # Alice finds Bob and asks; Bob's page shows the request without reload.
        alice.fill("#friend-search-input", "bob")
        alice.press("#friend-search-input", "Enter")
        alice.locator('.search-result[data-username="bob"] .add-friend-button').click()
        expect(alice.locator("#outgoing-list .request-item")).to_have_count(1)
        bob.locator("#incoming-list .accept-button").click()
        expect(bob.locator('.friend-item[data-presence="online"]')).to_have_count(1)
        expect(alice.locator('.friend-item[data-presence="online"]')).to_have_count(1)

        # Alice goes live; Bob sees her in "Live now" without reloading, and the
        # heading's red dot, which stayed off while nobody was live, comes on.
        expect(bob.locator("#live-now .live-pip")).to_be_hidden()
        alice.goto(f"{base}/live/")
        expect(alice.locator("#denoise")).to_be_checked()
        alice.click("#go-live-start")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        live_item = bob.locator(".live-now-item")
        expect(live_item).to_have_count(1, timeout=10_000)
        expect(bob.locator('.friend-item[data-presence="live"]')).to_have_count(1)
        expect(bob.locator("#live-now .live-pip")).to_be_visible()
        _screenshot(bob, "listener-dashboard")

        # The dashboard has its toast too; dismissing it by keyboard keeps focus on the page.
        dismiss = bob.get_by_role("button", name="Dismiss the alert about alice")
        dismiss.focus()
        bob.keyboard.press("Enter")
        expect(bob.locator("#toasts .toast")).to_have_count(0)
        assert bob.evaluate("document.activeElement.id") == "main"

        # Bob listens with one click on the dashboard's Listen: no second button to
        # press, and the unmuted audio element plays non-silent remote audio.
        live_item.locator(".listen-link").click()
        expect(bob.locator("#broadcaster-name")).to_contain_text("alice")
        expect(bob.locator("#listen-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        expect(bob.locator("#listen-start")).to_be_hidden()
        expect(alice.locator("#listener-count")).to_have_text("1", timeout=10_000)
        _screenshot(alice, "go-live")
        assert bob.evaluate("document.getElementById('remote-audio').muted") is False
        level = _audio_level(bob)
        assert level > 0.01, f"remote audioLevel stayed at {level}"
        bob.wait_for_timeout(3000)  # let a few seconds of speech be recorded

        # Alice stops; Bob is told; the recording appears for Bob and plays, seekably.
        alice.click("#go-live-stop")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "ended", timeout=20_000
        )
        expect(bob.locator("#listen-status")).to_have_attribute(
            "data-state", "ended", timeout=10_000
        )
        bob.click("#listen-recordings-link")
        item = bob.locator(".recording-item")
        expect(item).to_have_count(1, timeout=10_000)
        expect(item.locator(".recording-title")).to_contain_text("alice")
        played = bob.evaluate(
            """async () => {
                const audio = document.querySelector('.recording-item audio');
                audio.muted = false;
                if (audio.readyState < 1) {
                    await new Promise(
                        (ok) => audio.addEventListener('loadedmetadata', ok, {once: true}));
                }
                const duration = audio.duration;
                audio.currentTime = Math.min(2, duration / 2);  // seek: needs HTTP Range
                await audio.play();
                await new Promise((ok) => setTimeout(ok, 1200));
                const result = {duration, time: audio.currentTime, paused: audio.paused};
                audio.pause();
                return result;
            }"""
        )
        assert played["duration"] > 3, played
        assert played["time"] > 2.3 and not played["paused"], played


@pytest.mark.parametrize("server", [{"MAX_BROADCAST_S": "62"}], indirect=True)
def test_the_broadcaster_is_told_before_the_length_limit_ends_the_broadcast(
    server, noisy_jfk_wav: Path
) -> None:
    # Before: the server sent session.warning a minute before MAX_BROADCAST_S, but
    # the go-live page ignored it, so the broadcast ended without notice.
    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        page = browser.page()
        _sign_up(page, base, "alice")
        page.goto(f"{base}/live/")
        page.click("#go-live-start")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live", timeout=20_000)
        expect(page.locator("#live-message")).to_contain_text(
            "reaching the maximum length", timeout=15_000
        )
        page.click("#go-live-stop")
        expect(page.locator("#live-status")).to_have_attribute(
            "data-state", "ended", timeout=20_000
        )


def test_a_listener_resumes_after_a_network_drop_and_learns_of_a_missed_end(
    server, noisy_jfk_wav: Path
) -> None:
    # Before: a dropped page socket put the listen page in "Lost the connection to
    # the server." for good, and after a missed end it still said "alice is live"
    # while Listen answered "You can only listen to friends who are live".
    from streams.models import LiveSession

    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        alice_ctx, bob_ctx = browser.new_context(), browser.new_context()
        bob_ctx.add_init_script(CUTTABLE_WEBSOCKET)
        alice, bob = browser.page(alice_ctx), browser.page(bob_ctx)
        _sign_up_friends(base, alice, bob)

        alice.goto(f"{base}/live/")
        alice.click("#go-live-start")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        session = _orm(
            lambda: LiveSession.objects.get(broadcaster__username="alice", ended_at__isnull=True)
        )
        bob.goto(f"{base}/listen/{session.id}/")
        bob.click("#listen-start")
        status = bob.locator("#listen-status")
        expect(status).to_have_attribute("data-state", "live", timeout=20_000)
        bob.evaluate("window.firstPc = window.hearthListener.pc")

        # The network drops and comes back: Bob's page resumes by itself.
        bob.evaluate("window.networkCut(true)")
        expect(status).to_have_attribute("data-state", "reconnecting", timeout=15_000)
        bob.evaluate("window.networkCut(false)")
        expect(status).to_have_attribute("data-state", "live", timeout=30_000)
        assert bob.evaluate("window.hearthListener.pc !== window.firstPc")
        expect(alice.locator("#listener-count")).to_have_text("1", timeout=10_000)

        # Offline again while Alice stops: Bob's page learns of the end once back.
        bob.evaluate("window.networkCut(true)")
        expect(status).to_have_attribute("data-state", "reconnecting", timeout=15_000)
        alice.click("#go-live-stop")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "ended", timeout=20_000
        )
        bob.evaluate("window.networkCut(false)")
        expect(status).to_have_attribute("data-state", "ended", timeout=30_000)
        expect(bob.locator("#listen-title-state")).to_have_text("was live")


# Records every desktop notification a page shows (window.shownNotifications, the
# objects in window.notifications) and makes the page look unfocused, as when the
# user is in another window: Hearth only notifies when no toast can be seen.
NOTIFICATION_SPY = """
(() => {
  const Native = window.Notification;
  window.shownNotifications = [];
  window.notifications = [];
  window.Notification = class extends Native {
    static get permission() { return Native.permission; }
    static requestPermission(...args) { return Native.requestPermission(...args); }
    constructor(title, options = {}) {
      super(title, options);
      window.shownNotifications.push({ title, body: options.body, tag: options.tag });
      window.notifications.push(this);
    }
  };
  document.hasFocus = () => false;
})();
"""


def test_a_friend_going_live_alerts_every_page_and_one_click_listens(
    server, noisy_jfk_wav: Path, tmp_path: Path
) -> None:
    # Before: only the dashboard showed who went live, its Listen opened a page with
    # a second Listen button and a dead "0:00 / 0:00" native player, a recording
    # and a live stream could play over each other, and an ended page kept
    # "1 listener" and the title "Listening to alice".
    from datetime import timedelta

    from django.utils import timezone

    from streams.models import LiveSession, Recording
    from tests.factories import befriend
    from users.models import User

    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        alice_ctx = browser.new_context()
        # Granting a permission denies every other one: with the microphone denied
        # (not granted by --use-fake-ui-for-media-stream), Chromium hides host
        # candidates behind mDNS names, which never resolve in the namespace.
        bob_ctx = browser.new_context(permissions=["notifications", "microphone"])
        bob_ctx.add_init_script(NOTIFICATION_SPY)
        alice, bob = browser.page(alice_ctx), browser.page(bob_ctx)
        _sign_up(alice, base, "alice")
        _sign_up(bob, base, "bob")

        def befriend_with_two_recordings() -> None:
            alice_user, bob_user = (User.objects.get(username=n) for n in ("alice", "bob"))
            befriend(alice_user, bob_user)
            folder = tmp_path / "media" / "recordings"
            folder.mkdir(parents=True, exist_ok=True)
            earlier = timezone.now() - timedelta(hours=2)
            for n in (1, 2):
                shutil.copy(noisy_jfk_wav, folder / f"earlier-{n}.wav")
                Recording.objects.create(
                    owner=alice_user,
                    title=f"Earlier {n}",
                    file=f"recordings/earlier-{n}.wav",
                    started_at=earlier + timedelta(minutes=n),
                    ended_at=earlier + timedelta(minutes=n, seconds=11),
                    duration_s=11.0,
                    size_bytes=noisy_jfk_wav.stat().st_size,
                )

        _orm(befriend_with_two_recordings)

        # Bob has the recordings page open in two tabs and opts in to desktop alerts.
        other = browser.page(bob_ctx)
        other.goto(f"{base}/recordings/")
        held: list[Route] = []  # this tab's first /api/live is answered late, see below
        bob.route("**/api/live", lambda route: held.append(route))
        bob.goto(f"{base}/recordings/")
        expect(bob.locator(".recording-item")).to_have_count(2)
        desktop = bob.get_by_role("button", name="Desktop alerts")
        expect(desktop).to_have_attribute("aria-pressed", "false")
        desktop.click()
        expect(desktop).to_have_attribute("aria-pressed", "true")
        expect(bob.locator("#nav-live-count")).to_be_hidden()
        expect(bob).to_have_title("Recordings · Hearth")

        # Alice goes live: Bob gets a toast, the count on the nav and in the tab
        # title, and a desktop notification; Alice gets no alert of her own.
        alice.goto(f"{base}/live/")
        alice.click("#go-live-start")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        toast = bob.locator("#toasts .toast", has_text="alice is live")
        expect(toast).to_be_visible(timeout=10_000)
        # The page's own /api/live, sent before Alice went live, is answered after
        # the event (it then lists her session): the toast and the count stay.
        with bob.expect_response("**/api/live"):
            held[0].continue_()
        bob.unroute("**/api/live")
        bob.wait_for_timeout(300)
        expect(toast).to_be_visible()
        expect(bob.locator("#nav-live-count")).to_be_visible()
        expect(bob.locator("#nav-live-count")).to_have_attribute("data-count", "1")
        expect(bob).to_have_title("(1) Recordings · Hearth")
        session = _orm(lambda: LiveSession.objects.get(ended_at__isnull=True))
        for page in (bob, other):  # one per tab, and one on screen: they share a tag
            page.wait_for_function("window.shownNotifications.length > 0")
            shown = page.evaluate("window.shownNotifications")
            expected = ("alice is live on Hearth", f"hearth-live-{session.id}")
            assert [(n["title"], n["tag"]) for n in shown] == [expected], shown
        # The other tab's toggle follows the opt-in made in this one.
        expect(other.get_by_role("button", name="Desktop alerts")).to_have_attribute(
            "aria-pressed", "true"
        )
        expect(alice.locator("#toasts .toast")).to_have_count(0)
        expect(alice.locator("#nav-live-count")).to_be_hidden()

        # One click on the toast's Listen plays: Hearth's player, no native one.
        toast.get_by_role("link", name="Listen to alice").click()
        status = bob.locator("#listen-status")
        expect(status).to_have_attribute("data-state", "live", timeout=20_000)
        expect(bob.locator("#listen-start")).to_be_hidden()
        expect(bob.locator("#listen-play")).to_be_hidden()
        expect(bob.locator("audio[controls]")).to_have_count(0)
        expect(bob.locator("#listen-live")).to_have_attribute("data-on", "true")
        expect(bob.locator("#listen-elapsed")).to_be_visible()
        assert _audio_level(bob) > 0.01
        expect(bob).to_have_title("(1) Listening to alice · Hearth")
        bob.locator("#listen-volume").fill("40")  # the bar has its own, hidden here
        assert bob.evaluate("document.getElementById('remote-audio').volume") == 0.4

        # One at a time: a recording started in another tab stops the live stream,
        # a second recording pauses the first, and listening again pauses that one.
        players = other.locator(".recording-item audio")
        expect(players).to_have_count(2)
        play = "async (audio) => { audio.muted = false; await audio.play(); }"
        players.nth(0).evaluate(play)
        expect(status).to_have_attribute("data-state", "idle", timeout=10_000)
        expect(bob.locator("#listen-live")).to_have_attribute("data-on", "false")
        players.nth(1).evaluate(play)
        assert players.nth(0).evaluate("(audio) => audio.paused")
        bob.get_by_role("button", name="Listen").click()
        expect(status).to_have_attribute("data-state", "live", timeout=20_000)
        other.wait_for_function(
            "[...document.querySelectorAll('.recording-item audio')].every((a) => a.paused)"
        )

        # A click on the other tab's desktop notification listens there, in one
        # click too, and this tab's stream stops.
        other.evaluate("window.notifications[0].dispatchEvent(new Event('click'))")
        expect(other.locator("#listen-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        expect(status).to_have_attribute("data-state", "idle", timeout=10_000)
        other.close()

        # Alice stops: the ended page drops its listener count and its title, and
        # the live count is gone.
        alice.click("#go-live-stop")
        expect(status).to_have_attribute("data-state", "ended", timeout=20_000)
        expect(bob).to_have_title("alice was live · Hearth")
        expect(bob.locator("#listen-listeners")).to_be_hidden()
        expect(bob.locator("#nav-live-count")).to_be_hidden()


# Logs the outcome of every HTMLMediaElement.play() ("hearth-test play: played" or
# the error's name), so that a test can wait for it without evaluating anything in
# the page: Playwright's evaluations count as user gestures, which would let any
# later play() through the browser's autoplay policy.
PLAY_RECORDER = """
(() => {
  const play = HTMLMediaElement.prototype.play;
  HTMLMediaElement.prototype.play = function (...args) {
    const result = play.apply(this, args);
    result.then(
      () => console.info("hearth-test play: played"),
      (error) => console.info(`hearth-test play: ${error.name}`),
    );
    return result;
  };
})();
"""


def _first_play(page: Page, action: Callable[[], object]) -> str:
    """Run ``action`` and return how the page's first play() after it ended."""
    prefix = "hearth-test play: "
    with page.expect_console_message(lambda m: m.text.startswith(prefix), timeout=20_000) as msg:
        action()
    return msg.value.text.removeprefix(prefix)


def test_listen_links_play_under_the_browsers_own_autoplay_policy(
    server, noisy_jfk_wav: Path
) -> None:
    # The other tests let any page play sound. Real browsers play only after a user
    # activation: a click on a Listen link carries it over to the same-origin listen
    # page, which plays at once; a listen page opened without one (typed URL, a
    # desktop notification) shows one "Click to play" button, never a dead player.
    from streams.models import LiveSession
    from tests.factories import befriend
    from users.models import User

    ns, base = server
    with chromium(ns, noisy_jfk_wav, autoplay_anything=False) as browser:
        alice, bob = browser.page(), browser.page()
        _sign_up(alice, base, "alice")
        _sign_up(bob, base, "bob")
        _orm(lambda: befriend(*User.objects.filter(username__in=["alice", "bob"])))
        alice.goto(f"{base}/live/")
        alice.click("#go-live-start")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        session = _orm(lambda: LiveSession.objects.get(ended_at__isnull=True))
        # Signing up was a user activation, which same-origin navigations carry on:
        # Bob goes on in a fresh browsing context with only his cookies.
        bob_ctx = browser.new_context(storage_state=bob.context.storage_state())
        bob.context.close()
        bob_ctx.add_init_script(PLAY_RECORDER)

        # No user activation: it connects, and the one thing to press is "Click to play".
        page = browser.page(bob_ctx)
        url = f"{base}/listen/{session.id}/?autoplay=1"
        assert _first_play(page, lambda: page.goto(url)) == "NotAllowedError"
        expect(page.locator("#listen-status")).to_have_attribute("data-state", "live")
        expect(page.locator("#listen-play")).to_be_visible()
        expect(page.locator("#listen-start")).to_be_hidden()
        expect(page.locator("#listen-live")).to_have_attribute("data-on", "false")
        page.get_by_role("button", name="Click to play").click()
        expect(page.locator("#listen-live")).to_have_attribute("data-on", "true")
        expect(page.locator("#listen-play")).to_be_hidden()
        page.close()

        # From the dashboard: one click on Listen, and it plays.
        page = browser.page(bob_ctx)
        page.goto(f"{base}/")
        link = page.locator(".live-now-item .listen-link")
        link.wait_for()
        assert _first_play(page, link.click) == "played"
        expect(page.locator("#listen-live")).to_have_attribute("data-on", "true")
        expect(page.locator("#listen-play")).to_be_hidden()
        assert _audio_level(page) > 0.01


def test_broadcaster_titles_mutes_switches_denoise_and_sees_who_listens(
    server, noisy_jfk_wav: Path
) -> None:
    from users.models import User

    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        alice, bob = browser.page(), browser.page()
        _sign_up_friends(base, alice, bob)
        alice.goto(f"{base}/live/")
        alice.fill("#live-title", "Friday jam")
        alice.click("#go-live-start")
        status = alice.locator("#live-status")
        expect(status).to_have_attribute("data-state", "live", timeout=20_000)
        expect(alice.locator("#listener-names-empty")).to_be_visible()
        expect(alice.locator("#live-title")).to_be_disabled()

        bob.goto(f"{base}/")
        live_item = bob.locator(".live-now-item")
        expect(live_item).to_have_count(1, timeout=10_000)
        live_item.locator(".listen-link").click()  # one click: it plays
        expect(bob.locator("#listen-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        expect(alice.locator("#listener-names li")).to_have_text(["bob"], timeout=10_000)

        def wait_level(check: Callable[[float], bool]) -> float:
            return _audio_level_until(bob, check, tries=61)

        assert wait_level(lambda v: v > 0.01) > 0.01
        alice.click("#live-mute")
        expect(alice.locator("#live-mute")).to_have_attribute("aria-pressed", "true")
        expect(status).to_have_text("Live · muted")
        expect(bob.locator("#listen-muted")).to_be_visible(timeout=10_000)
        assert wait_level(lambda v: v < 0.001) < 0.001, "listener still hears a muted broadcast"
        alice.click("#live-mute")
        expect(alice.locator("#live-mute")).to_have_text("Mute")
        expect(bob.locator("#listen-muted")).to_be_hidden(timeout=10_000)
        assert wait_level(lambda v: v > 0.01) > 0.01

        alice.uncheck("#denoise")  # switched off live: audio keeps flowing
        alice.wait_for_timeout(1000)
        expect(alice.locator("#denoise")).not_to_be_checked()
        assert wait_level(lambda v: v > 0.01) > 0.01

        bob.click("#listen-stop")
        expect(alice.locator("#listener-names-empty")).to_be_visible(timeout=10_000)
        alice.click("#go-live-stop")
        expect(status).to_have_attribute("data-state", "ended", timeout=20_000)
        titles = _orm(
            lambda: list(
                User.objects.get(username="alice").recordings.values_list("title", flat=True)
            )
        )
        assert titles == ["Friday jam"]


def test_a_broadcast_too_short_to_keep_says_so(server, noisy_jfk_wav: Path) -> None:
    # Before: a broadcast under MIN_RECORDING_S ended with "Nothing was recorded."
    # although audio was sent: its recording is dropped as too short, and now says so.
    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        page = browser.page()
        _sign_up(page, base, "alice")
        page.goto(f"{base}/live/")
        page.click("#go-live-start")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live", timeout=20_000)
        page.click("#go-live-stop")
        expect(page.locator("#live-status")).to_have_attribute(
            "data-state", "ended", timeout=20_000
        )
        expect(page.locator("#live-message")).to_contain_text("shorter than 2 seconds")
