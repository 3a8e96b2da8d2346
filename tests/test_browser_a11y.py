"""Accessibility in headless Debian Chromium (Playwright): axe-core on every page and
state, light and dark, desktop and phone; and where the keyboard focus goes after
the buttons that replace themselves (Start, Stop, Listen, Add friend, Cancel,
Accept, Decline).

axe-core (static/vendor/axe-core, pinned; never linked from a page) is evaluated
into the page by Playwright, which the page's CSP does not govern. Each state is
audited four times in place: ``emulate_media(color_scheme=...)`` and
``set_viewport_size`` restyle the same document, so a state is set up once.

Same rules as tests/test_browser.py, whose fixtures and helpers this uses: daphne
and Chromium inside a loopback-only network namespace; any console error fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests import test_browser

server = test_browser.server  # the fixture, bound here (an import would trip ruff F811)
chromium = test_browser.chromium
_orm = test_browser._orm
_sign_up = test_browser._sign_up
_sign_up_friends = test_browser._sign_up_friends

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-Passphrase-42"  # what _sign_up uses
AXE_JS = (test_browser.REPO / "static" / "vendor" / "axe-core" / "axe.min.js").read_text()
# The rule sets run: WCAG 2.0 and 2.1, levels A and AA, and Deque's best practices
# (landmarks, headings, region...). A violation of impact "serious" or "critical"
# fails the test; "moderate" and "minor" ones are printed only.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
BLOCKING = {"serious", "critical"}
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Ordered so that each step changes one thing.
LOOKS = (("light", DESKTOP), ("dark", DESKTOP), ("dark", PHONE), ("light", PHONE))

# Finite animations (a toast sliding in) end first: axe measures colours as drawn.
RUN_AXE = """async (tags) => {
    await Promise.all(document.getAnimations()
        .filter((a) => Number.isFinite(a.effect?.getTiming().iterations))
        .map((a) => a.finished.catch(() => null)));
    const result = await axe.run(document, {
        runOnly: {type: "tag", values: tags},
        resultTypes: ["violations"],
    });
    return result.violations.map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        nodes: v.nodes.map((n) => {
            const d = [...n.any, ...n.all, ...n.none].map((c) => c.data)
                .find((data) => data && data.contrastRatio);
            return {
                target: n.target.join(" "),
                why: d ? `${d.fgColor} on ${d.bgColor} = ${d.contrastRatio}:1`
                    + ` (needs ${d.expectedContrastRatio})`
                    : `${n.html.slice(0, 80)}: ${n.failureSummary.replace(/\\s+/g, " ")}`,
            };
        }),
    }));
}"""


class Audit:
    """axe-core results gathered over a journey: ``blocking`` (serious, critical)
    fail the test, ``notes`` (moderate, minor) are printed."""

    def __init__(self) -> None:
        self.blocking: list[str] = []
        self.notes: list[str] = []
        self.states = 0

    def __call__(self, page: Page, state: str) -> None:
        """Run axe on ``page`` as it is now, in each of LOOKS; leaves it in the last."""
        self.states += 1
        # Turbo marks <html aria-busy> while a visit is under way (an ARIA attribute the
        # html element may not have): audit settled pages only.
        expect(page.locator("html")).not_to_have_attribute("aria-busy", "true")
        if not page.evaluate("typeof window.axe === 'object'"):
            page.evaluate(AXE_JS)  # Runtime.evaluate: not subject to the page's CSP
        for scheme, size in LOOKS:
            page.emulate_media(color_scheme=scheme)
            page.set_viewport_size(size)
            look = f"{scheme} {size['width']}x{size['height']}"
            for violation in page.evaluate(RUN_AXE, AXE_TAGS):
                nodes = "; ".join(f"{n['target']} {n['why']}" for n in violation["nodes"][:6])
                line = (
                    f"{state} [{look}] {violation['id']} ({violation['impact']}): "
                    f"{violation['help']} -> {nodes}"
                )
                (self.blocking if violation["impact"] in BLOCKING else self.notes).append(line)

    def check(self) -> None:
        print(f"axe: {self.states} states x {len(LOOKS)} looks")
        print("\n".join(["axe, not blocking:", *sorted(set(self.notes))]))
        assert not self.blocking, "serious or critical axe violations:\n" + "\n".join(self.blocking)


def _http_error(page: Page, status: int) -> str:
    """The console error Chromium logs for a page answered with HTTP ``status``."""
    # daphne's reason phrases
    reason = {400: "Bad Request", 404: "Not Found", 429: "Unknown Status"}[status]
    return (
        f"{page.url}: Failed to load resource: "
        f"the server responded with a status of {status} ({reason})"
    )


def _connected(page: Page) -> None:
    expect(page.locator("#ws-status")).to_have_attribute("data-state", "open", timeout=10_000)


def test_every_page_and_state_passes_axe_light_and_dark_desktop_and_phone(
    server, noisy_jfk_wav: Path, tmp_path: Path
) -> None:
    from streams.models import LiveSession
    from tests.factories import make_user
    from tests.test_browser_accounts import _reset_link
    from users import services
    from users.models import User

    ns, base = server
    expected_errors: list[str] = []  # the 404 and 429 pages' own status
    audit = Audit()
    with chromium(ns, noisy_jfk_wav, check_console=False) as browser:
        anon = browser.page(viewport=DESKTOP)
        alice = browser.page(viewport=DESKTOP)
        bob = browser.page(viewport=DESKTOP)

        # --- Signed out: landing, sign-up and log-in with errors, locked out, reset.
        anon.goto(f"{base}/")
        audit(anon, "landing")
        anon.goto(f"{base}/signup/")
        anon.fill("#id_username", "new user!")
        anon.fill("#id_password1", "123")
        anon.fill("#id_password2", "1234")
        anon.click("#signup-form button[type=submit]")
        expect(anon.locator("#id_username_error")).to_be_visible()
        audit(anon, "sign-up with errors")
        anon.goto(f"{base}/login/")
        for attempt in range(5):  # LOGIN_FAILURE_LIMIT failures lock the pair out
            anon.fill("#id_username", "mallory")
            anon.fill("#id_password", "wrong-password")
            anon.click("#login-form button[type=submit]")
            if attempt == 0:
                expect(anon.locator("#login-form .alert-error")).to_be_visible()
                audit(anon, "log-in with an error")
        expect(anon.locator("#locked-out")).to_be_visible()
        expected_errors.append(_http_error(anon, 429))
        audit(anon, "locked out")

        _orm(lambda: User.objects.create_user("erin", "erin@example.org", PASSWORD))
        anon.goto(f"{base}/password-reset/")
        audit(anon, "password reset")
        log = tmp_path / "daphne.log"
        since = len(log.read_text())
        anon.fill("#id_email", "erin@example.org")
        anon.click("#password-reset-form button[type=submit]")
        expect(anon.locator("#password-reset-sent")).to_be_visible()
        audit(anon, "password reset sent")
        anon.goto(_reset_link(log, since))
        anon.fill("#id_new_password1", "short")
        anon.fill("#id_new_password2", "short")
        anon.click("#password-reset-confirm-form button[type=submit]")
        expect(anon.locator("#id_new_password2_error")).to_be_visible()
        audit(anon, "password reset confirm with an error")
        anon.fill("#id_new_password1", "reset-Phrase-99")
        anon.fill("#id_new_password2", "reset-Phrase-99")
        anon.click("#password-reset-confirm-form button[type=submit]")
        expect(anon.locator("#password-reset-complete")).to_be_visible()
        audit(anon, "password reset complete")
        anon.context.close()

        # --- Bob's dashboard: Alice online, Carol's request, a search, Eve blocked.
        _sign_up_friends(base, alice, bob)

        def others() -> None:
            bob_user = User.objects.get(username="bob")
            carol, _ = make_user("carol"), make_user("dave")
            services.friend_request_send(from_user=carol, to_username="bob")
            services.block_create(user=bob_user, blocked_id=make_user("eve").id)

        _orm(others)
        bob.reload()
        _connected(bob)
        expect(bob.locator('.friend-item[data-presence="online"]')).to_have_count(1)
        expect(bob.locator("#incoming-list .request-item")).to_have_count(1)
        bob.fill("#friend-search-input", "da")
        bob.press("#friend-search-input", "Enter")
        expect(bob.locator(".search-result .add-friend-button")).to_have_count(1)
        audit(bob, "home: a friend online, a request, a search")

        # --- Alice goes live; Bob sees it (toast, Live now) and listens.
        alice.goto(f"{base}/live/")
        _connected(alice)
        audit(alice, "go live: before")
        alice.click("#go-live-start")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        expect(bob.locator(".live-now-item")).to_have_count(1, timeout=10_000)
        expect(bob.locator("#toasts .toast")).to_have_count(1)
        audit(bob, "home: a friend live, an alert")
        bob.locator(".live-now-item .listen-link").click()
        expect(bob.locator("#listen-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        expect(alice.locator("#listener-names li")).to_have_text(["bob"], timeout=10_000)
        audit(bob, "listen: live")
        audit(alice, "go live: live, with a listener")
        alice.click('.site-nav a:text-is("Recordings")')
        expect(alice.locator("h1")).to_have_text("Recordings")
        expect(alice.locator("#livebar-stop")).to_be_visible()
        audit(alice, "recordings, with the live bar")

        # --- Alice stops: Bob's page ends; the recording, its page, the replay link.
        session = _orm(lambda: LiveSession.objects.get(ended_at__isnull=True))
        # Audits can take less than MIN_RECORDING_S (2 s) on a quick run; a shorter
        # broadcast is not kept and the recordings page below would be empty (CI saw it:
        # 99 blocks, 1.98 s). Let a few seconds be recorded first.
        alice.wait_for_timeout(3000)
        alice.click("#livebar-stop")
        expect(bob.locator("#listen-status")).to_have_attribute(
            "data-state", "ended", timeout=20_000
        )
        audit(bob, "listen: ended")
        alice.goto(f"{base}/recordings/")
        item = alice.locator(".recording-item")
        expect(item).to_have_count(1, timeout=15_000)
        audit(alice, "recordings")
        item.locator(".recording-title a").click()
        expect(alice.locator("#recording-title")).to_contain_text("alice")
        audit(alice, "recording page")
        bob.goto(f"{base}/listen/{session.id}/")
        expect(bob.locator("#replay-link")).to_be_visible()
        audit(bob, "listen: a link to a broadcast that ended")

        # --- Bob's account, password change, a missing page.
        bob.goto(f"{base}/account/")
        expect(bob.locator(".blocked-item")).to_have_count(1)
        audit(bob, "account")
        bob.click("#password-change-link")
        bob.fill("#id_old_password", "not-my-password")
        bob.click("#password-change-form button[type=submit]")
        expect(bob.locator("#id_old_password_error")).to_be_visible()
        audit(bob, "password change with errors")
        bob.fill("#id_old_password", PASSWORD)
        bob.fill("#id_new_password1", "another-Phrase-77")
        bob.fill("#id_new_password2", "another-Phrase-77")
        bob.click("#password-change-form button[type=submit]")
        expect(bob.locator("#password-change-done")).to_be_visible()
        audit(bob, "password changed")
        # --- Upload & process: the form, and a file refused for what it holds.
        bob.click('.site-nav a:text-is("Upload")')
        expect(bob.locator("h1")).to_have_text("Upload & process")
        audit(bob, "upload")
        not_media = tmp_path / "notes.mp4"
        not_media.write_bytes(b"notes, not a video\n" * 50)
        bob.set_input_files("#upload-file", str(not_media))
        bob.click("#upload-submit")
        expect(bob.locator("#upload-error")).to_be_visible()
        expected_errors.append(_http_error(bob, 400))
        audit(bob, "upload: file refused")
        bob.goto(f"{base}/no-such-page/")
        expect(bob.locator("#not-found")).to_be_visible()
        expected_errors.append(_http_error(bob, 404))
        audit(bob, "not found")

        audit.check()
        unexpected = [e for e in browser.errors if e not in expected_errors]
        assert unexpected == [], "console errors:\n" + "\n".join(unexpected)


def test_focus_moves_to_what_replaced_the_pressed_button(server, noisy_jfk_wav: Path) -> None:
    # Before: each of these buttons hid or re-rendered itself and the focus fell to the
    # page's body, so a keyboard or screen-reader user was thrown back to the top.
    from tests.factories import make_user
    from users import services

    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        alice = browser.page(viewport=DESKTOP)
        bob = browser.page(viewport=PHONE)
        _sign_up(alice, base, "alice")
        _sign_up(bob, base, "bob")

        # Add friend: the button becomes "Request sent"; the focus goes to the status line.
        alice.fill("#friend-search-input", "bo")
        alice.press("#friend-search-input", "Enter")
        alice.locator(".search-result .add-friend-button").click()
        status = alice.locator("#friend-search-status")
        expect(status).to_have_text("Friend request sent.")
        expect(status).to_be_focused()
        # Cancel: its row goes; the list's "none" text takes the focus.
        alice.locator("#outgoing-list .cancel-button").click()
        expect(alice.locator("#outgoing-empty")).to_be_focused()
        alice.locator(".search-result .add-friend-button").click()
        expect(status).to_be_focused()

        # Decline: the focus goes to the same button on the next request; Accept the
        # last one: to the list's "none" text.
        _orm(lambda: services.friend_request_send(from_user=make_user("carol"), to_username="bob"))
        bob.reload()
        requests = bob.locator("#incoming-list .request-item")
        expect(requests).to_have_count(2)
        requests.filter(has_text="carol").locator(".decline-button").click()
        expect(requests).to_have_count(1)
        expect(requests.filter(has_text="alice").locator(".decline-button")).to_be_focused()
        bob.keyboard.press("Shift+Tab")  # to Accept, by keyboard
        bob.keyboard.press("Enter")
        expect(bob.locator("#incoming-empty")).to_be_focused()
        expect(bob.locator(".friend-item")).to_have_count(1)

        # Start: the focus goes to Stop, which replaces it.
        alice.goto(f"{base}/live/")
        alice.click("#go-live-start")
        expect(alice.locator("#go-live-stop")).to_be_focused()
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        expect(alice.locator("#go-live-stop")).to_be_focused()

        # Listen (a link to the listen page): its player's Stop has the focus; Stop and
        # Listen hand it to each other.
        bob.locator(".live-now-item .listen-link").click()
        expect(bob.locator("#listen-stop")).to_be_focused()
        expect(bob.locator("#listen-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        bob.keyboard.press("Enter")  # Stop
        expect(bob.locator("#listen-start")).to_be_focused()
        bob.keyboard.press("Enter")  # Listen
        expect(bob.locator("#listen-stop")).to_be_focused()
        expect(bob.locator("#listen-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )

        # Stop (by keyboard): the status line holds the focus while stopping, then
        # "Start again"; the listener's Stop, gone with the broadcast, hands it to
        # the listen page's status ("Ended").
        alice.keyboard.press("Enter")
        start = alice.locator("#go-live-start")
        expect(start).to_have_text("Start again", timeout=20_000)
        expect(start).to_be_focused()
        expect(bob.locator("#listen-status")).to_have_attribute(
            "data-state", "ended", timeout=10_000
        )
        expect(bob.locator("#listen-status")).to_be_focused()

        # The live bar's Stop, on another page: the bar goes, the focus goes to the page.
        alice.keyboard.press("Enter")  # Start again
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        alice.click('.site-nav a:text-is("Recordings")')
        # Wait for Turbo to render the new page: a Stop pressed while the visit is still
        # loading hands the focus to the old page's <main>, which the render then drops.
        alice.wait_for_url(f"{base}/recordings/")
        expect(alice.locator("#main h1")).to_have_text("Recordings")
        alice.locator("#livebar-stop").click()
        expect(alice.locator("#livebar")).to_be_hidden(timeout=20_000)
        expect(alice.locator("#main")).to_be_focused()
