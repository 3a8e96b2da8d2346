"""Upload & process: the upload checks, the queued job run by the real task worker
(``manage.py db_worker``, django-tasks' database backend), the recording it becomes,
and the pages and API around it."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from pathlib import Path

import av
import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from bench._video_material import write_pan_video
from streams import selectors, services
from streams.models import Recording, UploadJob
from tests.conftest import write_float_wav
from tests.factories import befriend
from users.models import User


@pytest.fixture(autouse=True)
def _plain_static_storage(settings) -> None:
    # As tests/test_pages.py: no collectstatic manifest in tests with DEBUG off.
    settings.STATIC_ROOT = None
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 6-frame 320x240 video (MPEG-4 Part 2 in MP4, no audio) panned over city.jpg."""
    return write_pan_video(tmp_path / "clip.mp4", frames=6, width=320, height=240, audio=False).path


@pytest.fixture
def tone_wav(tmp_path: Path) -> Path:
    """0.5 s of a 440 Hz tone, 48 kHz mono WAV."""
    t = np.arange(24_000) / 48_000
    path = tmp_path / "tone.wav"
    write_float_wav(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    return path


def as_upload(path: Path, name: str | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(name or path.name, path.read_bytes(), content_type="video/mp4")


def run_worker() -> None:
    """Run every queued task with the real worker command, then return."""
    call_command("db_worker", "--batch", "--no-startup-delay", "--no-reload", stdout=StringIO())


def _create(user: User, path: Path, **options: bool) -> UploadJob:
    defaults = {"blur_faces": True, "blur_plates": True, "denoise": False}
    return services.upload_create(
        user=user, upload=as_upload(path), title="", **{**defaults, **options}
    )


# -- services and selectors -------------------------------------------------------------


@pytest.mark.django_db
def test_upload_create_checks_content_and_queues_the_task(
    alice, clip, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        job = _create(alice, clip)
    assert (job.kind, job.status, job.title) == ("video", "queued", "clip")
    assert job.options == {
        "blur_faces": True,
        "blur_plates": True,
        "blur_text": False,
        "denoise": False,
    }
    assert job.duration_s == pytest.approx(0.5, abs=0.1)  # 6 frames at 12 fps
    stored = Path(services.settings.MEDIA_ROOT) / job.source
    assert stored.read_bytes() == clip.read_bytes()
    task = DBTaskResult.objects.get()
    assert task.task_path == "streams.tasks.upload_process_task"
    assert task.args_kwargs == {"args": [], "kwargs": {"job_id": job.id}}


@pytest.mark.django_db
def test_upload_create_refuses_what_is_not_media(alice, tmp_path: Path, settings):
    fake = tmp_path / "holiday.mp4"  # the name says video; the bytes do not
    fake.write_bytes(b"<html>not a video at all</html>" * 40)
    with pytest.raises(services.UploadRefused, match="not an audio or video file"):
        _create(alice, fake)
    with pytest.raises(services.UploadRefused, match="empty"):
        services.upload_create(
            user=alice,
            upload=SimpleUploadedFile("e.mp4", b""),
            title="",
            blur_faces=True,
            blur_plates=True,
            denoise=True,
        )
    settings.HEARTH = {**settings.HEARTH, "UPLOAD_MAX_BYTES": 1024}
    fake.write_bytes(b"x" * 1025)
    with pytest.raises(services.UploadRefused, match="too large"):
        _create(alice, fake)
    assert not UploadJob.objects.exists()
    assert list((Path(settings.MEDIA_ROOT) / "uploads").glob("*")) == []  # nothing left


@pytest.mark.django_db
def test_upload_create_refuses_a_file_over_the_length_limit(alice, clip, settings):
    settings.HEARTH = {**settings.HEARTH, "UPLOAD_MAX_DURATION_S": 0.2}
    with pytest.raises(services.UploadRefused, match="too long"):
        _create(alice, clip)


@pytest.mark.django_db
def test_upload_selectors(alice, bob, clip):
    job = _create(alice, clip)
    assert selectors.upload_own_get(user=alice, job_id=job.id) == job
    assert selectors.upload_own_get(user=bob, job_id=job.id) is None
    before = timezone.now() - timedelta(seconds=1)
    assert selectors.upload_list_changed(since=before) == [job]
    assert selectors.upload_list_changed(since=job.updated_at) == []


@pytest.mark.django_db(transaction=True)
def test_the_worker_turns_a_video_upload_into_a_redacted_mp4_recording(alice, bob, clip):
    befriend(alice, bob)
    job = _create(alice, clip)
    run_worker()
    job.refresh_from_db()
    assert job.status == "done", job.error
    assert job.progress == 1.0
    recording = Recording.objects.get(id=job.recording_id)
    assert recording.kind == "video" and recording.file.name.endswith(".mp4")
    assert (recording.blur_faces, recording.blur_plates) == (True, True)
    assert recording.frames_processed == 6
    assert recording.faces_blurred >= 6  # city.jpg's crowd: faces in every frame
    assert recording.frames_failed_closed == 0
    assert recording.duration_s == pytest.approx(0.5)
    path = services.recording_path(recording)
    assert recording.size_bytes == path.stat().st_size
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 320, 240)
        assert sum(1 for _ in container.decode(stream)) == 6
    assert not (Path(services.settings.MEDIA_ROOT) / job.source).exists()  # upload removed
    # The owner's friend sees it (and no stranger: recording_visible_get's rules).
    assert selectors.recording_visible_get(user=bob, recording_id=recording.id) == recording


@pytest.mark.django_db(transaction=True)
def test_an_upload_with_text_blurring_counts_text_regions_and_shows_them(alice, tmp_path):
    screen = write_pan_video(
        tmp_path / "screen.mp4", frames=4, width=640, height=480, audio=False, screen=True
    ).path
    job = _create(alice, screen, blur_faces=False, blur_text=True)
    run_worker()
    job.refresh_from_db()
    assert job.status == "done", job.error
    recording = Recording.objects.get(id=job.recording_id)
    assert (recording.blur_faces, recording.blur_plates, recording.blur_text) == (
        False,
        True,
        True,
    )
    assert recording.text_blurred >= 3 * 4  # three personal lines in every frame
    assert recording.frames_failed_closed == 0
    html = login(alice).get(f"/recordings/{recording.id}/").content.decode()
    assert "on-screen personal text blurred" in html
    data = login(alice).get(f"/api/recordings/{recording.id}").json()
    assert data["video_redaction"]["blur_text"] is True
    assert data["video_redaction"]["text_blurred"] == recording.text_blurred


@pytest.mark.django_db(transaction=True)
def test_the_worker_keeps_an_audio_upload_in_the_audio_format(alice, tone_wav):
    job = _create(alice, tone_wav)
    assert job.kind == "audio"
    run_worker()
    job.refresh_from_db()
    assert job.status == "done", job.error
    recording = Recording.objects.get(id=job.recording_id)
    assert recording.kind == "audio" and recording.file.name.endswith(".wav")
    assert recording.blur_faces is None and recording.frames_processed == 0
    assert recording.duration_s == pytest.approx(0.5, abs=0.01)


@pytest.mark.django_db(transaction=True)
def test_a_job_whose_file_went_bad_fails_with_a_reason(alice, clip):
    job = _create(alice, clip)
    (Path(services.settings.MEDIA_ROOT) / job.source).write_bytes(b"garbage" * 100)
    run_worker()
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error.startswith("Processing failed:")
    assert str(services.settings.MEDIA_ROOT) not in job.error
    assert not Recording.objects.exists()


@pytest.mark.django_db
def test_a_job_already_taken_is_not_run_twice(alice, clip):
    job = _create(alice, clip)
    UploadJob.objects.filter(id=job.id).update(status="running")
    assert services.upload_process(job_id=job.id) is None
    assert not Recording.objects.exists()


# -- views -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_upload_api_needs_a_signed_in_user(clip):
    response = Client().post("/api/uploads", {"file": as_upload(clip)})
    assert response.status_code == 401
    assert Client().get("/upload/").status_code == 302  # to the log-in page


@pytest.mark.django_db
def test_upload_api_errors_are_400_with_a_message(alice, tmp_path: Path, settings):
    client = login(alice)
    response = client.post("/api/uploads", {})
    assert response.status_code == 400
    assert response.json() == {"error": "Choose a file to upload."}
    text = tmp_path / "notes.mp4"
    text.write_bytes(b"just some text, not a video\n" * 20)
    response = client.post("/api/uploads", {"file": as_upload(text)})
    assert response.status_code == 400
    assert "not an audio or video file" in response.json()["error"]
    settings.HEARTH = {**settings.HEARTH, "UPLOAD_MAX_BYTES": 100}
    response = client.post("/api/uploads", {"file": as_upload(text)})
    assert response.status_code == 400
    assert "too large" in response.json()["error"]
    assert not UploadJob.objects.exists()


@pytest.mark.django_db
def test_upload_api_queues_a_job_and_reports_it_to_its_owner_only(alice, bob, clip):
    client = login(alice)
    response = client.post(
        "/api/uploads",
        {
            "file": as_upload(clip),
            "title": "Walk",
            "blur_faces": "on",
            "blur_text": "on",
            "denoise": "on",
        },
    )
    assert response.status_code == 202
    upload = response.json()["upload"]
    assert (upload["status"], upload["title"], upload["progress"]) == ("queued", "Walk", 0.0)
    job = UploadJob.objects.get(id=upload["id"])
    assert job.options == {
        "blur_faces": True,
        "blur_plates": False,
        "blur_text": True,
        "denoise": True,
    }
    assert client.get(f"/api/uploads/{job.id}").json()["upload"]["id"] == job.id
    assert login(bob).get(f"/api/uploads/{job.id}").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_the_recording_page_plays_a_video_and_shows_its_redaction(alice, bob, clip):
    befriend(alice, bob)
    job = _create(alice, clip)
    run_worker()
    job.refresh_from_db()
    page = login(bob).get(f"/recordings/{job.recording_id}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert '<video id="recording-audio"' in html
    assert "6</span> frames processed" in html
    data = login(bob).get(f"/api/recordings/{job.recording_id}").json()
    assert data["kind"] == "video" and data["format"] == "mp4"
    assert data["video_redaction"]["frames_processed"] == 6
    media = login(bob).get(data["audio_url"], HTTP_RANGE="bytes=0-99")
    assert media.status_code == 206 and media["Content-Type"] == "video/mp4"


@pytest.mark.django_db
def test_a_file_run_reports_rising_progress_up_to_the_end(clip, tmp_path: Path):
    from streams.media_file import media_probe, video_file_process

    probe = media_probe(clip)
    seen: list[float] = []
    result = video_file_process(
        source=clip,
        target=tmp_path / "out.mp4",
        info=probe.video,
        blur_faces=False,
        blur_plates=False,
        denoise=False,
        on_progress=seen.append,
    )
    assert result.frames == 6
    assert seen == sorted(seen) and len(seen) >= 2  # lossy, but frame by frame here
    assert 0.0 <= seen[0] < 0.5 and seen[-1] == pytest.approx(5 / 6, abs=0.05)


@pytest.mark.django_db
def test_the_relay_sends_changed_jobs_to_the_owner_and_done_ones_to_friends(
    alice, bob, carol, clip, layer, django_capture_on_commit_callbacks
):
    # The web process's relay (streams/upload_relay.py): the worker is another process,
    # whose in-memory layer reaches no page.
    from streams.upload_relay import _relay_once, upload_relay_needed
    from tests.factories import Inbox

    def relay(since):
        # Outside a test transaction (as in daphne) the events go at once.
        with django_capture_on_commit_callbacks(execute=True):
            return _relay_once(since)

    assert upload_relay_needed() == ("InMemory" in layer.__class__.__name__)
    befriend(alice, bob)
    owner, friend, stranger = (Inbox(layer, f"user.{u.id}") for u in (alice, bob, carol))
    since = timezone.now() - timedelta(seconds=1)
    job = _create(alice, clip)
    since = relay(since)
    assert [e for e, _ in owner.events()] == ["upload.progress"]
    assert relay(since) == since and owner.events() == []  # nothing changed since
    UploadJob.objects.filter(id=job.id).update(status="done", progress=1.0)
    UploadJob.objects.get(id=job.id).save()  # moves updated_at
    relay(since)
    events = owner.events()
    assert events[0][0] == "upload.progress" and events[0][1]["status"] == "done"
    assert [e for e, _ in events[1:]] == ["recordings.changed"]
    assert [e for e, _ in friend.events()] == ["recordings.changed"]
    assert stranger.events() == []


@pytest.mark.django_db
def test_a_running_job_whose_worker_died_is_failed_and_its_file_removed(
    alice, clip, django_capture_on_commit_callbacks
):
    lost, alive = _create(alice, clip), _create(alice, clip)
    old = timezone.now() - timedelta(seconds=services.UPLOAD_STALE_S + 5)
    UploadJob.objects.filter(id=lost.id).update(status="running", updated_at=old)
    UploadJob.objects.filter(id=alive.id).update(status="running")  # stamped just now
    with django_capture_on_commit_callbacks(execute=True):
        assert services.upload_fail_stale() == 1
    lost.refresh_from_db()
    alive.refresh_from_db()
    assert lost.status == "failed" and "Upload the file again" in lost.error
    assert not (Path(services.settings.MEDIA_ROOT) / lost.source).exists()
    assert alive.status == "running"
    assert (Path(services.settings.MEDIA_ROOT) / alive.source).exists()
    assert services.upload_fail_stale() == 0


@pytest.mark.django_db
def test_the_upload_page_follows_an_unfinished_job_again(alice, bob, clip):
    import json
    import re

    assert selectors.upload_latest_unfinished(user=alice) is None
    first, second = _create(alice, clip), _create(alice, clip)
    UploadJob.objects.filter(id=second.id).update(status="done")
    assert selectors.upload_latest_unfinished(user=alice) == first
    assert selectors.upload_latest_unfinished(user=bob) is None

    def current(user: User) -> object:
        html = login(user).get("/upload/").content.decode()
        found = re.search(
            r'<script id="upload-current" type="application/json">(.*?)</script>', html
        )
        return json.loads(found.group(1))

    assert current(alice)["id"] == first.id
    assert current(bob) is None
