"""Account pages: settings (profile, blocked people), password change and reset, the
sign-up form's error placement."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from tests.factories import make_user
from users import services
from users.models import User

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-Passphrase-42"


@pytest.fixture(autouse=True)
def _page_settings(settings) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    # Pages link their static files: no manifest needed in these tests.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def logs_in(username: str, password: str) -> bool:
    """Whether the log-in form accepts ``username`` and ``password`` (a fresh client)."""
    response = Client().post("/login/", {"username": username, "password": password})
    return response.status_code == 302 and response["Location"] == "/"


def with_password(user: User) -> User:
    user.set_password(PASSWORD)  # resets are only sent to accounts with a usable one
    user.save()
    return user


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_account_page_needs_sign_in(client):
    for url in ("/account/", "/account/password/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/")


def test_account_page_saves_profile(alice):
    client = login(alice)
    page = client.get("/account/")
    assert page.status_code == 200
    assert b'id="profile-form"' in page.content
    response = client.post(
        "/account/", {"display_name": " Alice  L. ", "email": "alice@example.org"}, follow=True
    )
    assert b"Profile saved." in response.content
    alice.refresh_from_db()
    assert (alice.display_name, alice.email) == ("Alice L.", "alice@example.org")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"display_name": "x" * 51, "email": ""}, b"at most 50 characters"),
        ({"display_name": "a\x07b", "email": ""}, b"Remove control characters"),
        ({"display_name": "", "email": "nope"}, b"Enter a valid email address"),
    ],
)
def test_account_page_refuses_bad_profile(alice, data, error):
    response = login(alice).post("/account/", data)
    assert response.status_code == 200  # the form again, with the error
    assert error in response.content
    assert b'aria-invalid="true"' in response.content
    alice.refresh_from_db()
    assert alice.display_name == ""


def test_account_page_lists_and_unblocks(alice, bob):
    services.block_create(user=alice, blocked_id=bob.id)
    client = login(alice)
    page = client.get("/account/").content.decode()
    assert 'aria-label="Unblock bob"' in page
    assert client.get(f"/account/unblock/{bob.id}/").status_code == 405
    response = client.post(f"/account/unblock/{bob.id}/")
    assert response.status_code == 302
    assert "You haven't blocked anyone." in client.get("/account/").content.decode()
    assert client.post(f"/account/unblock/{bob.id}/").status_code == 404


def test_password_change_then_log_in_with_the_new_one(alice):
    with_password(alice)
    client = login(alice)
    wrong = client.post(
        "/account/password/",
        {"old_password": "nope", "new_password1": "x", "new_password2": "x"},
    )
    assert wrong.status_code == 200
    assert b'aria-invalid="true"' in wrong.content
    response = client.post(
        "/account/password/",
        {
            "old_password": PASSWORD,
            "new_password1": "another-Phrase-77",
            "new_password2": "another-Phrase-77",
        },
    )
    assert response["Location"] == "/account/password/done/"
    assert client.get("/account/").status_code == 200  # this session stays signed in
    assert logs_in("alice", "another-Phrase-77")
    assert not logs_in("alice", PASSWORD)


def test_password_reset_mails_a_link_that_sets_a_new_password(alice):
    with_password(alice)
    services.user_profile_update(user=alice, display_name="", email="alice@example.org")
    client = Client()
    assert b'id="forgot-password-link"' in client.get("/login/").content
    response = client.post("/password-reset/", {"email": "ALICE@example.org"})
    assert response["Location"] == "/password-reset/sent/"
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["alice@example.org"]
    assert message.subject == "Reset your Hearth password"
    link = re.search(r"http://testserver(/password-reset/\S+/)", message.body).group(1)
    form = client.get(link, follow=True)
    assert b'id="password-reset-confirm-form"' in form.content
    done = client.post(
        form.redirect_chain[-1][0],
        {"new_password1": "reset-Phrase-99", "new_password2": "reset-Phrase-99"},
    )
    assert done["Location"] == "/password-reset/done/"
    assert logs_in("alice", "reset-Phrase-99")
    # The link works once.
    again = client.get(link, follow=True)
    assert b'id="password-reset-invalid"' in again.content


def test_password_reset_for_an_unknown_address_looks_the_same_and_sends_nothing(client):
    response = client.post("/password-reset/", {"email": "nobody@example.org"})
    assert response["Location"] == "/password-reset/sent/"
    assert mail.outbox == []


def test_password_reset_is_rate_limited_per_ip(alice, settings):
    with_password(alice)
    settings.HEARTH = {**settings.HEARTH, "PASSWORD_RESET_RATE": "2/h"}
    services.user_profile_update(user=alice, display_name="", email="alice@example.org")
    client = Client()
    for _ in range(2):
        assert client.post("/password-reset/", {"email": "alice@example.org"}).status_code == 302
    refused = client.post("/password-reset/", {"email": "alice@example.org"})
    assert refused.status_code == 429
    assert b"Too many reset requests" in refused.content
    assert len(mail.outbox) == 2


def test_signup_password_errors_show_under_the_password_field(client):
    make_user("someone")
    weak = client.post(
        "/signup/", {"username": "newbie", "password1": "123", "password2": "123"}
    ).content.decode()
    # Django's validators' messages sit in password1's error list, not password2's.
    assert re.search(r'id="id_password1_error".*too short', weak, re.S)
    assert 'id="id_password2_error"' not in weak
    mismatch = client.post(
        "/signup/",
        {"username": "newbie", "password1": PASSWORD, "password2": PASSWORD + "x"},
    ).content.decode()
    assert 'id="id_password2_error"' in mismatch
    assert 'id="id_password1_error"' not in mismatch
    assert "/static/js/forms.js" in mismatch
