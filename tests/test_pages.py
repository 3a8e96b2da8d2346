"""Server-rendered pages: access control, signup/login/logout, and each page's hooks."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from tests.factories import befriend, go_live

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-test-passphrase-42"
PROTECTED = ["go_live", "recordings"]


@pytest.fixture(autouse=True)
def _plain_static_storage(settings) -> None:
    # Tests run with DEBUG off, where the manifest storage needs collectstatic first
    # (and WhiteNoise warns about a missing STATIC_ROOT).
    settings.STATIC_ROOT = None
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(username="alice", password=PASSWORD)


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user(username="bob", password=PASSWORD)


def json_script(html: str, element_id: str):
    match = re.search(
        rf'<script id="{re.escape(element_id)}" type="application/json">(.*?)</script>', html, re.S
    )
    assert match, f"no json_script #{element_id}"
    return json.loads(match.group(1))


# --- Access -------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROTECTED)
def test_protected_pages_redirect_anonymous_to_login(client, name):
    url = reverse(name)
    response = client.get(url)
    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={url}"


def test_listen_redirects_anonymous_to_login(client, alice):
    session = go_live(alice)
    response = client.get(reverse("listen", args=[session.id]))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_home_is_landing_page_for_anonymous(client):
    response = client.get(reverse("home"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="landing-signup"' in html and 'id="landing-login"' in html
    assert f'href="{reverse("signup")}"' in html
    assert 'rel="icon" href="data:,"' in html
    # No socket or user data for visitors.
    assert "js/app.js" not in html and 'id="current-user"' not in html


# --- Signup, login, logout ------------------------------------------------------------


def test_signup_creates_user_and_logs_in(client):
    response = client.post(
        reverse("signup"),
        {"username": "carol", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    assert response.url == reverse("home")
    user = get_user_model().objects.get(username="carol")
    assert user.check_password(PASSWORD)
    assert int(client.session["_auth_user_id"]) == user.id
    home = client.get(reverse("home"))
    assert json_script(home.content.decode(), "current-user") == {
        "id": user.id,
        "username": "carol",
    }


def test_signup_rejects_duplicate_username(client, alice):
    response = client.post(
        reverse("signup"),
        {"username": "Alice", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 200
    assert response.context["form"].errors["username"]
    assert get_user_model().objects.filter(username__iexact="alice").count() == 1
    assert "_auth_user_id" not in client.session
    assert 'aria-invalid="true"' in response.content.decode()


def test_signup_rejects_mismatched_passwords(client):
    response = client.post(
        reverse("signup"),
        {"username": "dave", "password1": PASSWORD, "password2": PASSWORD + "x"},
    )
    assert response.status_code == 200
    assert response.context["form"].errors["password2"]
    assert not get_user_model().objects.filter(username="dave").exists()


def test_signup_page_renders_form(client):
    html = client.get(reverse("signup")).content.decode()
    for field in ("id_username", "id_password1", "id_password2"):
        assert f'<label for="{field}"' in html
    assert "csrfmiddlewaretoken" in html


def test_login_and_logout(client, alice):
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert 'id="login-form"' in page.content.decode()

    bad = client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert bad.status_code == 200
    assert "_auth_user_id" not in client.session

    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert response.url == reverse("home")
    assert int(client.session["_auth_user_id"]) == alice.id

    home = client.get(reverse("home")).content.decode()
    assert f'action="{reverse("logout")}"' in home and 'id="logout-button"' in home

    assert client.get(reverse("logout")).status_code == 405  # POST only
    assert int(client.session["_auth_user_id"]) == alice.id
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert "_auth_user_id" not in client.session
    assert client.get(reverse("go_live")).status_code == 302


def test_login_page_redirects_signed_in_user(client, alice):
    client.force_login(alice)
    assert client.get(reverse("login")).url == reverse("home")


# --- Pages for a signed-in user --------------------------------------------------------


PAGE_HOOKS = {
    "home": [
        'id="live-now-list"',
        'id="friends-list"',
        'id="friend-search"',
        'id="friend-search-input"',
        '<label for="friend-search-input"',
        'id="incoming-list"',
        'id="outgoing-list"',
        "js/home.js",
    ],
    "go_live": [
        'id="go-live-start"',
        'id="go-live-stop"',
        'id="live-status"',
        'id="listener-count"',
        '<label for="mic-select"',
        'id="mic-level"',
        'id="denoise" name="denoise" checked',
        '<label for="denoise">Denoise (DeepFilterNet3)</label>',
        "js/golive.js",
    ],
    "recordings": ['id="recordings-list"', 'id="recordings-empty"', "js/recordings.js"],
}


@pytest.mark.parametrize("name", list(PAGE_HOOKS))
def test_signed_in_pages_render_with_hooks(client, alice, settings, name):
    settings.ICE_SERVERS = [{"urls": "stun:stun.example.org:3478"}]
    client.force_login(alice)
    response = client.get(reverse(name))
    assert response.status_code == 200
    html = response.content.decode()
    for hook in PAGE_HOOKS[name]:
        assert hook in html, hook
    assert json_script(html, "ice-servers") == [{"urls": "stun:stun.example.org:3478"}]
    assert json_script(html, "current-user") == {"id": alice.id, "username": "alice"}
    assert 'id="ws-status"' in html and "js/app.js" in html
    assert '<script type="module"' in html
    assert 'rel="icon" href="data:,"' in html
    assert re.search(r'<a href="[^"]+" aria-current="page">', html)


def test_go_live_shows_own_active_session(client, alice):
    client.force_login(alice)
    html = client.get(reverse("go_live")).content.decode()
    assert json_script(html, "active-session") is None

    session = go_live(alice, denoise=False)
    html = client.get(reverse("go_live")).content.decode()
    active = json_script(html, "active-session")
    assert active["id"] == session.id
    assert active["denoise"] is False
    assert active["started_at"] == session.started_at.isoformat()


def test_go_live_offers_bleeping_with_the_servers_delays(client, alice, settings):
    settings.HEARTH = {**settings.HEARTH, "PII_LIVE": True, "PII_DELAY_S": 4.0}
    client.force_login(alice)
    html = client.get(reverse("go_live")).content.decode()
    assert 'id="bleep"' in html
    delays = re.findall(r'<option value="([0-9.]+)"( selected)?>\1 seconds</option>', html)
    assert delays == [("2", ""), ("3", ""), ("4", " selected"), ("5", ""), ("10", "")]

    settings.HEARTH = {**settings.HEARTH, "PII_LIVE": False}
    html = client.get(reverse("go_live")).content.decode()
    assert 'id="bleep"' not in html and 'id="bleep-delay"' not in html


# --- Listen page ---------------------------------------------------------------------


def test_listen_page_for_friend_of_live_broadcaster(client, alice, bob):
    befriend(alice, bob)
    session = go_live(alice)
    client.force_login(bob)
    response = client.get(reverse("listen", args=[session.id]))
    assert response.status_code == 200
    html = response.content.decode()
    hooks = ("listen-start", "listen-status", "listener-count", "listen-live", "listen-volume")
    for hook in hooks:
        assert f'id="{hook}"' in html
    # The <audio> is a hidden sink behind Hearth's own player: no native controls.
    audio = re.search(r"<audio [^>]*>", html).group(0)
    assert 'id="remote-audio"' in audio and "autoplay" in audio and "hidden" in audio
    assert "controls" not in audio
    assert "muted" not in audio
    assert 'id="broadcaster-name">alice<' in html
    assert json_script(html, "live-session") == {
        "id": session.id,
        "broadcaster": {
            "id": alice.id,
            "username": "alice",
            "display_name": "",
            "avatar_url": None,
        },
        "started_at": session.started_at.isoformat(),
        "denoise": True,
        "listeners": None,
    }
    assert json_script(html, "ice-servers") == []


@pytest.mark.parametrize("bleep", ["tone", ""])
def test_listen_page_shows_the_captions_toggle_only_for_a_bleeped_broadcast(
    client, alice, bob, bleep
):
    from streams.services import live_session_start

    befriend(alice, bob)
    session, _ = live_session_start(
        broadcaster=alice, denoise=False, owner_channel="x", bleep=bleep, delay_s=3.0
    )
    client.force_login(bob)
    html = client.get(reverse("listen", args=[session.id])).content.decode()
    row = re.search(r'<div class="captions-row" id="listen-captions-row"[^>]*>', html).group(0)
    box = re.search(r'<p id="listen-captions"[^>]*>([^<]*)</p>', html).group(1)
    if bleep:  # captions will come: the toggle is there before the first one
        assert " hidden" not in row and box == "Waiting for speech…"
        assert 'id="listen-captions-on" checked' in html
    else:  # no speech analysis, no captions: no toggle
        assert row.endswith(" hidden>") and box == ""


def test_listen_page_404_for_non_friend(client, alice, bob):
    session = go_live(alice)
    client.force_login(bob)
    response = client.get(reverse("listen", args=[session.id]))
    assert response.status_code == 404
    assert 'id="not-found"' in response.content.decode()


def test_listen_page_404_for_ended_session(client, alice, bob):
    befriend(alice, bob)
    session = go_live(alice)
    session.ended_at = timezone.now()
    session.end_reason = "stopped"
    session.save()
    client.force_login(bob)
    assert client.get(reverse("listen", args=[session.id])).status_code == 404


def test_listen_page_404_for_unknown_session(client, bob):
    client.force_login(bob)
    assert client.get(reverse("listen", args=[999_999])).status_code == 404
