"""Pictures and deleting an account, in headless Debian Chromium (Playwright): Alice
uploads a picture that Bob sees in his friends list without reloading, then deletes
her account (a wrong password first); Bob's list drops her live, her other device is
signed out, her files are gone. Any console error (CSP violations, a broken image
load) fails.

Same rules as tests/test_browser.py, whose fixtures and helpers this uses: daphne
and Chromium inside a loopback-only network namespace.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests import test_browser
from tests.test_avatars import halves_jpeg

server = test_browser.server  # the fixture, bound here (an import would trip ruff F811)
chromium = test_browser.chromium
_sign_up_friends = test_browser._sign_up_friends

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-Passphrase-42"  # what _sign_up uses


def _image_width(page: Page, selector: str) -> int:
    """The decoded width of the first image matching ``selector`` (0: not loaded)."""
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete; }", arg=selector
    )
    return page.eval_on_selector(selector, "img => img.naturalWidth")


def test_picture_seen_by_a_friend_then_account_deleted(
    server, noisy_jfk_wav: Path, tmp_path: Path
) -> None:
    ns, base = server
    picture = tmp_path / "me.jpg"
    picture.write_bytes(halves_jpeg(orientation=6))
    with chromium(ns, noisy_jfk_wav) as browser:
        alice = browser.page(viewport={"width": 1100, "height": 900})
        laptop_context = browser.new_context(viewport={"width": 1100, "height": 900})
        bob = browser.page(viewport={"width": 390, "height": 844})
        _sign_up_friends(base, alice, bob)
        bob.reload()
        initials = bob.locator(".friend-item .avatar-initials")
        expect(initials).to_have_attribute("data-initials", "A")
        expect(bob.locator(".friend-item")).to_contain_text("alice")

        # Alice uploads a picture on her account page; Bob's list shows it at once.
        alice.goto(f"{base}/account/")
        alice.set_input_files("#avatar_avatar", str(picture))
        alice.click("#avatar-form button[type=submit]")
        expect(alice.locator("#account-message")).to_have_text("Picture saved.")
        assert _image_width(alice, "img#avatar-current") == 256
        friend_picture = bob.locator(".friend-item img.avatar")
        expect(friend_picture).to_have_attribute(
            "src", re.compile(r"^/avatars/\d+/[0-9a-f]{32}\.webp$")
        )
        expect(friend_picture).to_have_attribute("alt", "")
        assert _image_width(bob, ".friend-item img.avatar") == 256
        stored = list((tmp_path / "media" / "avatars").iterdir())
        assert len(stored) == 1

        # A file that is not a picture is refused with the reason, the field focused.
        alice.set_input_files(
            "#avatar_avatar",
            files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"just text"}],
        )
        alice.click("#avatar-form button[type=submit]")
        expect(alice.locator("#avatar_avatar_error")).to_contain_text("not a picture")
        expect(alice.locator("#avatar_avatar")).to_be_focused()

        # Alice is signed in on a second device too.
        laptop = browser.page(laptop_context)
        laptop.goto(f"{base}/login/")
        laptop.fill("#id_username", "alice")
        laptop.fill("#id_password", PASSWORD)
        laptop.click("#login-form button[type=submit]")
        expect(laptop.locator("#ws-status")).to_have_attribute("data-state", "open")

        # She deletes her account: a wrong password first, then hers.
        alice.goto(f"{base}/account/")
        alice.click("#account-delete-link")
        expect(alice.locator("h1")).to_have_text("Delete your account")
        alice.fill("#id_password", "not-my-password")
        alice.click("#account-delete-confirm")
        expect(alice.locator("#id_password_error")).to_contain_text("not your password")
        expect(alice.locator("#id_password")).to_be_focused()
        expect(bob.locator(".friend-item")).to_have_count(1)
        alice.fill("#id_password", PASSWORD)
        alice.click("#account-delete-confirm")
        expect(alice.locator("#landing-message")).to_have_text(
            "Your account and your recordings were deleted."
        )

        # Bob's list drops her without a reload; her other device is signed out.
        expect(bob.locator(".friend-item")).to_have_count(0)
        expect(laptop.locator("#ws-status")).to_have_attribute("data-state", "signed-out")
        laptop.goto(f"{base}/account/")
        expect(laptop.locator("#login-form")).to_be_visible()
        assert not stored[0].exists()
