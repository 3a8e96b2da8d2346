"""Content-Security-Policy on every page: no inline script, nothing from elsewhere."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import befriend, go_live

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-test-passphrase-42"

EXPECTED = {
    "default-src": {"'self'"},
    "script-src": {"'self'"},
    "style-src": {"'self'", "'sha256-WAyOw4V+FqDc35lQPyRADLBWbuNK8ahvYEaQIYF1+Ps='"},
    "connect-src": {"'self'"},
    "media-src": {"'self'"},
    "img-src": {"'self'", "data:"},
    "object-src": {"'none'"},
    "base-uri": {"'self'"},
    "form-action": {"'self'"},
    "frame-ancestors": {"'none'"},
}


@pytest.fixture(autouse=True)
def _plain_static_storage(settings) -> None:
    settings.STATIC_ROOT = None
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def parse_csp(header: str) -> dict[str, set[str]]:
    policy: dict[str, set[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            assert words[0] not in policy, f"directive {words[0]} given twice"
            policy[words[0]] = set(words[1:])
    return policy


def assert_policy(response) -> None:
    assert "Content-Security-Policy" in response, f"{response.status_code} has no CSP"
    policy = parse_csp(response["Content-Security-Policy"])
    assert policy == EXPECTED
    assert "'unsafe-inline'" not in policy["script-src"]
    assert "'unsafe-eval'" not in policy["script-src"]


def test_anonymous_pages_carry_the_policy(client):
    for url in ("/", reverse("signup"), reverse("login"), "/no-such-page/"):
        assert_policy(client.get(url))


def test_signed_in_pages_carry_the_policy(client, django_user_model):
    alice = django_user_model.objects.create_user(username="alice", password=PASSWORD)
    bob = django_user_model.objects.create_user(username="bob", password=PASSWORD)
    befriend(alice, bob)
    session = go_live(alice)
    client.force_login(bob)
    urls = [
        reverse("home"),
        reverse("go_live"),
        reverse("recordings"),
        reverse("listen", args=[session.id]),
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert_policy(response)
        # The pages hold no inline executable script (json_script data blocks only).
        html = response.content.decode()
        for chunk in html.split("<script")[1:]:
            opening = chunk.split(">", 1)[0]
            assert 'src="' in opening or 'type="application/json"' in opening, opening
        assert " style=" not in html
        assert " onclick=" not in html.lower()


def test_api_responses_carry_the_policy(client, django_user_model):
    client.force_login(django_user_model.objects.create_user(username="carol", password=PASSWORD))
    assert_policy(client.get("/api/friends"))
