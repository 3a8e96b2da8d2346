"""Accounts in headless Debian Chromium (Playwright): the account page (display name
seen by a friend, block and unblock, password change, password reset by the e-mail
printed on the console), the search card after a request is cancelled or declined,
sign-up error placement and focus, and a 150-character username on a phone.
Any console error (CSP violations included) fails.

Same rules as tests/test_browser.py, whose fixtures and helpers this uses: daphne
and Chromium inside a loopback-only network namespace.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests import test_browser

server = test_browser.server  # the fixture, bound here (an import would trip ruff F811)
chromium = test_browser.chromium
_befriend = test_browser._befriend
_orm = test_browser._orm
_sign_up = test_browser._sign_up
_sign_up_friends = test_browser._sign_up_friends

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-Passphrase-42"  # what _sign_up uses


def _log_in(page: Page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#ws-status")).to_have_attribute("data-state", "open", timeout=10_000)


def _log_out(page: Page) -> None:
    page.click("#logout-button")
    expect(page.locator("#login-form")).to_be_visible()


def _reset_link(log: Path, since: int) -> str:
    """The password-reset link of the e-mail daphne printed after byte ``since`` of its log."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = re.search(r"http://\S+/password-reset/[^/\s]+/[^/\s]+/", log.read_text()[since:])
        if found:
            return found.group(0)
        time.sleep(0.2)
    raise AssertionError("no reset e-mail on daphne's console:\n" + log.read_text()[-2000:])


def _no_horizontal_overflow(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"{page.url} is {width} px wide on a 390 px screen"
    expect(page.locator("#logout-button")).to_be_in_viewport()


def test_account_page_display_name_block_and_passwords(
    server, noisy_jfk_wav: Path, tmp_path: Path
) -> None:
    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        alice = browser.page(viewport={"width": 1100, "height": 900})
        bob = browser.page(viewport={"width": 390, "height": 844})
        _sign_up_friends(base, alice, bob)
        bob.reload()
        expect(bob.locator(".friend-item .friend-name")).to_have_text("alice")

        # Alice names herself on the account page (the header's username links there);
        # Bob's dashboard shows the name without reloading.
        alice.click("#current-username")
        expect(alice.locator("h1")).to_have_text("Account")
        alice.fill("#id_display_name", "Alice Liddell")
        alice.fill("#id_email", "alice@example.org")
        alice.click("#profile-form button[type=submit]")
        expect(alice.locator("#account-message")).to_have_text("Profile saved.")
        expect(bob.locator(".friend-item .friend-name")).to_have_text("Alice Liddell")
        expect(bob.locator(".friend-item .handle")).to_have_text("@alice")

        # A display name too long is refused with the field focused.
        alice.fill("#id_display_name", "x" * 60)
        alice.evaluate("document.getElementById('id_display_name').removeAttribute('maxlength')")
        alice.fill("#id_display_name", "x" * 60)
        alice.click("#profile-form button[type=submit]")
        expect(alice.locator("#id_display_name")).to_be_focused()
        expect(alice.locator("#id_display_name_error")).to_contain_text("at most 50")

        # Bob blocks Alice from his friends list: both lists empty, neither finds the other.
        alice.goto(f"{base}/")
        expect(alice.locator(".friend-item")).to_have_count(1)
        bob.click(".friend-item .block-button")  # the confirm() is accepted
        expect(bob.locator(".friend-item")).to_have_count(0)
        expect(alice.locator(".friend-item")).to_have_count(0)
        for page, query in ((alice, "bob"), (bob, "alice")):
            page.fill("#friend-search-input", query)
            page.press("#friend-search-input", "Enter")
            expect(page.locator("#friend-search-status")).to_have_text(f"Nobody called “{query}”.")
        # Bob unblocks on his account page; Alice can find him again.
        bob.goto(f"{base}/account/")
        expect(bob.locator(".blocked-item")).to_have_text(re.compile("alice"))
        bob.click(".blocked-item .unblock-button")
        expect(bob.locator("#blocked-empty")).to_be_visible()
        alice.press("#friend-search-input", "Enter")
        alice.fill("#friend-search-input", "bob")
        alice.press("#friend-search-input", "Enter")
        expect(alice.locator(".search-result")).to_have_count(1)
        expect(alice.locator(".search-result .add-friend-button")).to_be_visible()

        # Alice changes her password and logs in with the new one.
        alice.goto(f"{base}/account/")
        alice.click("#password-change-link")
        alice.fill("#id_old_password", PASSWORD)
        alice.fill("#id_new_password1", "another-Phrase-77")
        alice.fill("#id_new_password2", "another-Phrase-77")
        alice.click("#password-change-form button[type=submit]")
        expect(alice.locator("#password-change-done")).to_be_visible()
        _log_out(alice)
        _log_in(alice, base, "alice", "another-Phrase-77")

        # She forgets it: the reset e-mail is printed on daphne's console.
        _log_out(alice)
        log = tmp_path / "daphne.log"
        since = len(log.read_text())
        alice.click("#forgot-password-link")
        alice.fill("#id_email", "alice@example.org")
        alice.click("#password-reset-form button[type=submit]")
        expect(alice.locator("#password-reset-sent")).to_be_visible()
        alice.goto(_reset_link(log, since))
        alice.fill("#id_new_password1", "reset-Phrase-99")
        alice.fill("#id_new_password2", "reset-Phrase-99")
        alice.click("#password-reset-confirm-form button[type=submit]")
        expect(alice.locator("#password-reset-complete")).to_be_visible()
        _log_in(alice, base, "alice", "reset-Phrase-99")


def test_search_card_follows_a_cancel_and_a_decline(server, noisy_jfk_wav: Path) -> None:
    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        alice = browser.page(viewport={"width": 1100, "height": 900})
        bob = browser.page(viewport={"width": 1100, "height": 900})
        _sign_up(alice, base, "alice")
        _sign_up(bob, base, "bob")
        status = alice.locator("#friend-search-status")
        alice.fill("#friend-search-input", "bo")
        alice.press("#friend-search-input", "Enter")
        expect(status).to_have_text("1 person found.")

        alice.click(".search-result .add-friend-button")
        expect(status).to_have_text("Friend request sent.")
        alice.click("#outgoing-list .cancel-button")
        expect(status).to_have_text("1 person found.")
        expect(alice.locator(".search-result .add-friend-button")).to_be_visible()

        alice.click(".search-result .add-friend-button")
        expect(status).to_have_text("Friend request sent.")
        bob.reload()
        bob.click("#incoming-list .decline-button")
        expect(status).to_have_text("1 person found.")  # told by the friends.changed event
        expect(alice.locator(".search-result .add-friend-button")).to_be_visible()


def test_signup_errors_sit_under_their_field_and_take_the_focus(
    server, noisy_jfk_wav: Path
) -> None:
    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        page = browser.page(viewport={"width": 390, "height": 844})
        page.goto(f"{base}/signup/")
        page.fill("#id_username", "newbie")
        page.fill("#id_password1", "123")
        page.fill("#id_password2", "123")
        page.click("#signup-form button[type=submit]")
        expect(page.locator("#id_password1_error")).to_contain_text("too short")
        expect(page.locator("#id_password2_error")).to_have_count(0)
        expect(page.locator("#id_password1")).to_be_focused()

        page.fill("#id_password1", PASSWORD)
        page.fill("#id_password2", PASSWORD + "x")
        page.click("#signup-form button[type=submit]")
        expect(page.locator("#id_password2_error")).to_contain_text("didn’t match")
        expect(page.locator("#id_password2")).to_be_focused()

        page.goto(f"{base}/login/")
        page.fill("#id_username", "nobody")
        page.fill("#id_password", "wrong-password")
        page.click("#login-form button[type=submit]")
        expect(page.locator("#login-form .alert-error")).to_be_visible()
        expect(page.locator("#id_username")).to_be_focused()


def test_a_150_character_username_fits_a_phone(server, noisy_jfk_wav: Path) -> None:
    from tests.factories import go_live
    from users.models import User

    ns, base = server
    long_name = "w" * 150
    with chromium(ns, noisy_jfk_wav) as browser:
        page = browser.page(viewport={"width": 390, "height": 844})
        friend = browser.page(viewport={"width": 390, "height": 844})
        _sign_up(page, base, long_name)
        _sign_up(friend, base, "Rosalind")
        _befriend(long_name, "Rosalind")
        header_name = page.locator("#current-username")
        expect(header_name).to_have_attribute("title", re.compile(long_name))
        session = _orm(lambda: go_live(User.objects.get(username=long_name)))
        for path in ("/", "/live/", "/recordings/", "/account/"):
            page.goto(f"{base}{path}")
            expect(page.locator("#ws-status")).to_have_attribute("data-state", "open")
            _no_horizontal_overflow(page)
        friend.goto(f"{base}/")
        expect(friend.locator(".friend-item")).to_have_count(1)
        _no_horizontal_overflow(friend)
        friend.goto(f"{base}/listen/{session.id}/")
        expect(friend.locator("#broadcaster-name")).to_have_text(long_name)
        _no_horizontal_overflow(friend)
