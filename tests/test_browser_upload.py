"""Upload & process in headless Debian Chromium (Playwright): a signed-in user uploads
a tiny video made at test time from city.jpg, the progress bar follows the job that
the real task worker (``manage.py db_worker``, a process of its own) runs, and the
link leads to the recording's page, which plays the MP4 in a <video>. A file that is
not media gets the form's error. Any console error (CSP violations included) fails.

Same rules as tests/test_browser.py, whose fixtures and helpers this uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from bench._video_material import write_pan_video
from tests import test_browser
from tests.conftest import MODELS_DIR
from tests.netns import inside

server = test_browser.server  # the fixture, bound here (an import would trip ruff F811)
chromium = test_browser.chromium
_sign_up = test_browser._sign_up

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_upload_a_video_follow_its_progress_and_open_the_recording(
    server, tmp_path: Path, noisy_jfk_wav: Path
) -> None:
    ns, base = server
    clip = write_pan_video(tmp_path / "street.mp4", frames=12, width=320, height=240).path
    not_media = tmp_path / "notes.mp4"
    not_media.write_bytes(b"these are notes, not a video\n" * 50)
    env = {
        **os.environ,
        "DATABASE_URL": test_browser._database_url_for_namespace(),
        "SECRET_KEY": "browser-test",
        "MEDIA_ROOT": str(tmp_path / "media"),  # the server fixture's
        "HEARTH_MODEL_DIR": str(MODELS_DIR),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    with inside(ns):
        worker_log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "db_worker", "--no-reload", "--interval", "0.2"],
            cwd=test_browser.REPO,
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
    try:
        with chromium(ns, noisy_jfk_wav, check_console=False) as browser:
            page = browser.page()
            _sign_up(page, base, "uploader")
            page.click("nav.site-nav a[href='/upload/']")
            expect(page.locator("h1")).to_have_text("Upload & process")
            for option in ("#upload-blur-faces", "#upload-blur-plates", "#upload-denoise"):
                expect(page.locator(option)).to_be_checked()  # the defaults
            expect(page.locator("#upload-blur-text")).not_to_be_checked()

            page.set_input_files("#upload-file", str(not_media))
            page.click("#upload-submit")
            expect(page.locator("#upload-error")).to_contain_text("not an audio or video file")

            page.set_input_files("#upload-file", str(clip))
            page.fill("#upload-title", "Street walk")
            page.uncheck("#upload-denoise")  # the AAC track still goes through (passthrough)
            page.evaluate("window.sameDocument = true")
            page.click("#upload-submit")
            # The job's states reach the page as upload.progress events on its socket (the
            # page never polls): the link to the new recording appears when it is done,
            # without a reload. (A 1 s clip can finish between two relayed events, so the
            # "Processing…" state in between is not asserted.)
            link = page.locator("#upload-recording-link")
            expect(link).to_be_visible(timeout=120_000)
            expect(page.locator("#upload-status")).to_contain_text("Done: “Street walk”")
            assert page.evaluate("window.sameDocument") is True
            expect(page.locator("#upload-progress")).to_have_attribute("value", "100")
            link.click()
            expect(page.locator("#recording-title")).to_have_text("Street walk")
            video = page.locator("video#recording-audio")
            expect(video).to_be_visible()
            page.wait_for_function(
                "() => document.querySelector('video#recording-audio').readyState >= 1",
                timeout=20_000,
            )
            assert page.evaluate(
                "() => document.querySelector('video#recording-audio').duration"
            ) == pytest.approx(1.0, abs=0.1)  # 12 frames at 12 fps
            expect(page.locator("#recording-video-redaction")).to_contain_text(
                "12 frames processed"
            )
            expect(page.locator("#recording-file")).to_contain_text("MP4 (H.264 + AAC)")
            # The list plays it in a <video> too.
            page.click('.site-nav a:text-is("Recordings")')
            expect(page.locator(".recording-item video")).to_have_count(1, timeout=15_000)
            # The one refusal above is logged by Chromium as a failed load; nothing else.
            refused = "the server responded with a status of 400"
            assert [e for e in browser.errors if refused not in e] == []
            assert sum(refused in e for e in browser.errors) == 1
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()
        print((tmp_path / "worker.log").read_text()[-3000:])
