"""Recordings in headless Debian Chromium (Playwright): a recording's own page
(waveform drawn from the peaks, play, seek by clicking it, download named after the
title, found by transcript search and opened at that moment, rename, delete), the
list (pages, the friend filter, live updates when a friend goes live and when the
recording is finalised and compressed) and the link to a broadcast that has ended.
Any console error (CSP violations included) fails.

Same rules as tests/test_browser.py, whose fixtures and helpers this uses: daphne
and Chromium inside a loopback-only network namespace, production settings for
recordings (compressed to Ogg/Opus, broadcasts under 2 s discarded).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests import test_browser

server = test_browser.server  # the fixture, bound here (an import would trip ruff F811)
chromium = test_browser.chromium
_orm = test_browser._orm
_sign_up_friends = test_browser._sign_up_friends

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _set_display_name(username: str, display_name: str) -> None:
    """Give user ``username`` a display name, straight in the database."""
    from users.models import User

    _orm(lambda: User.objects.filter(username=username).update(display_name=display_name))


def _speech_recording(owner: str, speech: Path, settings) -> int:
    """A finished, compressed recording of ``owner`` holding ``speech`` (as the server
    would leave it after a broadcast); returns its id."""
    from django.utils import timezone

    from streams import services
    from streams.audio import load_audio, write_wav
    from streams.models import Recording
    from streams.when import default_title
    from users.models import User

    settings.HEARTH = {**settings.HEARTH, "RECORDING_COMPRESS": True}

    def make() -> int:
        user = User.objects.get(username=owner)
        now = timezone.now()
        samples = load_audio(speech)
        recording = Recording.objects.create(
            owner=user,
            title=default_title(owner, now),
            file=f"recordings/{user.id}/speech-{now:%H%M%S%f}.wav",
            started_at=now,
            ended_at=now,
            duration_s=len(samples) / 48_000,
            processing={"denoise": True, "model": "DeepFilterNet3"},
        )
        path = services.recording_path(recording)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, samples)
        assert services.recording_compress(recording_id=recording.id, writer_closed=True)
        return recording.id

    return _orm(make)


def _ink(page: Page) -> float:
    """Share of the waveform canvas's pixels that are drawn on."""
    return page.evaluate(
        """() => {
            const c = document.getElementById('waveform');
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let inked = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) inked++;
            return inked / (c.width * c.height);
        }"""
    )


def _search_and_land(page: Page, base: str, recording_id: int, title: str) -> None:
    """``page``'s user searches the recordings' transcripts for a word of the
    recording's stored transcript, sees the hit, opens it at that moment, comes back
    to the results and clears the search."""
    from streams import services
    from streams.models import Recording

    cues = [
        {"start": 0.3, "end": 2.9, "text": "And so, my fellow Americans,"},
        {"start": 3.6, "end": 6.8, "text": "ask not what your country can do for you,"},
        {"start": 7.3, "end": 10.6, "text": "ask what you can do for [place]."},
    ]
    _orm(
        lambda: Recording.objects.filter(id=recording_id).update(
            transcript=cues, transcript_text=services.transcript_search_text(cues=cues)
        )
    )
    page.goto(f"{base}/recordings/")
    expect(page.locator("#recordings-list .recording-item")).to_have_count(1)
    box = page.get_by_label("Search transcripts")
    box.fill("Country")  # typing searches by itself
    result = page.locator("#search-results-list .search-result")
    expect(result).to_have_count(1)
    expect(page.locator("#recordings-all")).to_be_hidden()
    expect(result.locator(".recording-title")).to_have_text(title)
    expect(result.locator(".row-meta")).to_contain_text("alice")
    expect(result.locator(".search-snippet mark")).to_have_text("country")
    expect(result.locator(".search-snippet")).to_contain_text("[place]")
    expect(result.locator(".search-play")).to_have_text("Play from 0:03")
    expect(page).to_have_url(f"{base}/recordings/?q=Country")
    test_browser._screenshot(page, "recordings-search")

    # A masked place is not searchable; the words around it are.
    box.fill("place")
    expect(page.locator("#search-results-title")).to_have_text("No recording mentions “place”.")
    expect(result).to_have_count(0)
    box.fill("country")
    expect(result).to_have_count(1)

    result.locator(".recording-title a").click()
    expect(page).to_have_url(f"{base}/recordings/{recording_id}/?t=3.6")
    expect(page.locator("#recording-title")).to_have_text(title)
    position = 0.0
    for _ in range(50):  # the page's CSP forbids the eval wait_for_function needs
        position = page.evaluate("document.getElementById('recording-audio').currentTime")
        if position > 0:
            break
        page.wait_for_timeout(200)
    assert abs(position - 3.6) < 0.2, f"the player is at {position} s, not 3.6 s"

    # Back to the same results; Escape clears the search and shows the list again.
    page.go_back()
    expect(box).to_have_value("country")
    expect(result).to_have_count(1)
    box.press("Escape")
    expect(page.locator("#recordings-all")).to_be_visible()
    expect(page.locator("#search-results")).to_be_hidden()
    expect(page).to_have_url(f"{base}/recordings/")


def test_a_recording_page_plays_seeks_downloads_renames_and_deletes(
    server, noisy_jfk_wav: Path, settings, tmp_path: Path
) -> None:
    from streams.models import Recording
    from streams.views import download_stem

    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        alice = browser.page(viewport={"width": 1100, "height": 900})
        bob = browser.page(viewport={"width": 390, "height": 844})
        _sign_up_friends(base, alice, bob)
        recording_id = _speech_recording("alice", noisy_jfk_wav, settings)
        rec = _orm(lambda: Recording.objects.get(id=recording_id))
        assert rec.is_compressed

        # Bob, a friend, finds it in the list and opens its page; Alice shows by her
        # display name there, as everywhere.
        _set_display_name("alice", "Alice Liddell")
        bob.goto(f"{base}/recordings/")
        expect(bob.locator(".recording-item .recording-owner")).to_have_text("Alice Liddell")
        bob.locator(".recording-item .recording-link").click()
        expect(bob.locator("#recording-title")).to_have_text(rec.title)
        assert rec.title.startswith("alice · ")
        expect(bob.locator("#recording-owner")).to_have_text("Alice Liddell")
        expect(bob.locator("#recording-owner")).to_have_attribute("title", "alice")
        expect(bob.locator("#recording-duration")).to_have_text("0:11")
        expect(bob.locator("#recording-file")).to_contain_text("Ogg/Opus")
        expect(bob.locator("#recording-processing")).to_contain_text("DeepFilterNet3")
        expect(bob.locator("#rename-button")).to_have_count(0)  # not his to change

        # The waveform is drawn from the stored peaks.
        assert _ink(bob) > 0.05, "the waveform canvas is (nearly) empty"
        test_browser._screenshot(bob, "recording-page")

        # Play: the audio runs.
        bob.evaluate("document.getElementById('recording-audio').muted = true")
        bob.click("#play-button")
        expect(bob.locator("#play-button")).to_have_text("Pause")
        played = 0.0
        for _ in range(50):  # the page's CSP forbids the eval wait_for_function needs
            played = bob.evaluate("document.getElementById('recording-audio').currentTime")
            if played > 0.3:
                break
            bob.wait_for_timeout(200)
        assert played > 0.3, f"the audio did not play ({played} s)"

        # Seek: a click at three quarters of the waveform moves the player there.
        box = bob.locator("#waveform").bounding_box()
        assert box is not None
        bob.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
        position = bob.evaluate("document.getElementById('recording-audio').currentTime")
        assert abs(position - 0.75 * rec.duration_s) < 0.6, position
        bob.click("#play-button")  # pause
        expect(bob.locator("#play-button")).to_have_text("Play")

        # Download: the file is named after the title, with the Ogg extension.
        with bob.expect_download() as download_info:
            bob.click("#download-link")
        download = download_info.value
        assert download.suggested_filename == f"{download_stem(rec.title, rec.id)}.ogg"
        saved = tmp_path / "download.ogg"
        download.save_as(saved)
        assert saved.read_bytes()[:4] == b"OggS"
        assert saved.stat().st_size == rec.size_bytes

        # Bob finds it by a word of its (redacted) transcript and opens it there.
        _search_and_land(bob, base, recording_id, rec.title)
        bob.goto(f"{base}/recordings/{recording_id}/")

        # Alice renames it on its page; Bob's page follows without a reload.
        alice.goto(f"{base}/recordings/{recording_id}/")
        alice.click("#rename-button")
        alice.fill("#rename-input", "Kennedy, read aloud")
        alice.click("#rename-form button[type=submit]")
        expect(alice.locator("#recording-title")).to_have_text("Kennedy, read aloud")
        expect(bob.locator("#recording-title")).to_have_text("Kennedy, read aloud")
        assert _orm(lambda: Recording.objects.get(id=recording_id).title) == "Kennedy, read aloud"
        # An empty title is refused with the server's message, nothing changes.
        alice.click("#rename-button")
        alice.fill("#rename-input", " ")
        alice.click("#rename-form button[type=submit]")
        expect(alice.locator("#rename-error")).to_have_text("Enter a title.")
        alice.click("#rename-cancel")

        # Alice deletes it (the confirm dialog is accepted); she lands on the list.
        alice.click("#delete-button")
        expect(alice).to_have_url(f"{base}/recordings/")
        expect(alice.locator("#recordings-empty")).to_contain_text("No recordings yet")
        expect(bob.locator("#recording-error")).to_have_text("This recording has been deleted.")
        assert not _orm(lambda: Recording.objects.filter(id=recording_id).exists())


def test_the_list_follows_a_friend_live_and_an_ended_link_leads_to_the_replay(
    server, noisy_jfk_wav: Path
) -> None:
    from streams.models import LiveSession, Recording
    from streams.when import when_label

    ns, base = server
    with chromium(ns, noisy_jfk_wav) as browser:
        alice = browser.page()
        bob = browser.page(viewport={"width": 390, "height": 844})
        _sign_up_friends(base, alice, bob)
        bob.goto(f"{base}/recordings/")
        expect(bob.locator("#recordings-empty")).to_contain_text("No recordings yet")

        # Alice goes live: Bob's list shows it at once, with a way to listen.
        alice.goto(f"{base}/live/")
        alice.click("#go-live-start")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        item = bob.locator(".recording-item")
        expect(item).to_have_count(1, timeout=10_000)
        expect(item.locator(".badge-live")).to_have_text("Recording")
        session = _orm(lambda: LiveSession.objects.get(broadcaster__username="alice"))
        expect(item.locator(".listen-live-link")).to_have_attribute(
            "href", f"/listen/{session.id}/"
        )
        expect(item.locator(".recording-title")).to_have_text(
            f"alice · {when_label(session.started_at)}"
        )

        bob.wait_for_timeout(3000)  # a few seconds of speech: more than the 2 s minimum
        alice.click("#go-live-stop")
        expect(alice.locator("#live-status")).to_have_attribute(
            "data-state", "ended", timeout=20_000
        )
        # Finalised, then compressed by the server: Bob's list follows both.
        expect(item.locator(".badge-live")).to_have_count(0, timeout=10_000)
        expect(item.locator("audio")).to_have_attribute(
            "src",
            f"/recordings/{_orm(lambda: Recording.objects.get().id)}/audio?v=opus",
            timeout=30_000,
        )
        recording = _orm(lambda: Recording.objects.get())
        assert recording.is_compressed and recording.duration_s > 2.0
        assert recording.size_bytes < recording.duration_s * 48_000 * 2 / 8

        # The broadcast's link now says it has ended and leads to the replay.
        bob.goto(f"{base}/listen/{session.id}/")
        expect(bob.locator("#broadcast-ended-title")).to_have_text(
            "alice's broadcast has ended — replay it"
        )
        bob.click("#replay-link")
        expect(bob).to_have_url(f"{base}/recordings/{recording.id}/")
        expect(bob.locator("#recording-title")).to_have_text(recording.title)
        # A broadcast that never was is a clear 404 page.
        response = bob.goto(f"{base}/listen/{session.id + 1000}/")
        assert response is not None and response.status == 404
        expect(bob.locator("#not-found h1")).to_have_text("Not found")
        browser.errors[:] = [
            e for e in browser.errors if "404 (Not Found)" not in e
        ]  # that one was asked for

        # Many more recordings: the list pages through them, and filters by friend.
        def many() -> None:
            from tests.factories import make_recording
            from users.models import User

            bob_user = User.objects.get(username="bob")
            for age in range(1, 25):
                make_recording(bob_user, age_s=60 * age)

        _orm(many)
        _set_display_name("alice", "Alice Liddell")
        bob.goto(f"{base}/recordings/")
        expect(bob.locator(".recording-item")).to_have_count(20)
        bob.click("#recordings-more")
        expect(bob.locator(".recording-item")).to_have_count(25)
        expect(bob.locator("#recordings-more")).to_be_hidden()
        bob.select_option("#recordings-owner", label="Alice Liddell")
        expect(bob.locator(".recording-item")).to_have_count(1)
        expect(bob.locator(".recording-owner")).to_have_text("Alice Liddell")
        bob.select_option("#recordings-owner", label="You")
        expect(bob.locator(".recording-item")).to_have_count(20)
        expect(bob.locator("#recordings-more")).to_be_visible()
