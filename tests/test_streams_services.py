"""streams.services and streams.selectors: live sessions, recordings and their events."""

from __future__ import annotations

import os
import struct
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.utils import timezone

from streams import selectors, services
from streams.audio import write_wav
from streams.models import LiveSession, Recording
from streams.recording import RecordingInfo, WavRecorder
from streams.services import LiveSessionError, RecordingError
from streams.when import default_title, when_label
from tests.factories import Inbox, befriend, make_recording, make_user
from users.events import user_group
from users.models import User

pytestmark = pytest.mark.django_db

RATE = 48_000


# --- Helpers -------------------------------------------------------------------------


def tone(frames: int) -> np.ndarray:
    return (0.3 * np.sin(np.arange(frames) * 2 * np.pi * 440 / RATE)).astype(np.float32)


def write_recording_wav(recording: Recording, frames: int) -> None:
    path = services.recording_path(recording)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, tone(frames))


def age_file(path: Path) -> None:
    """Make ``path`` look untouched for longer than the stale window (a dead writer)."""
    old = time.time() - django_settings.HEARTH["SESSION_STALE_S"] - 5
    os.utime(path, (old, old))


def write_in_progress_wav(recording: Recording, frames: int) -> bytes:
    """A WAV as a writer leaves it mid-write: zero header sizes, half a sample at the end.

    Repairing it would rewrite the header and truncate the file. Returns its bytes.
    """
    path = services.recording_path(recording)
    with WavRecorder(path) as recorder:
        recorder.write(tone(frames))
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<L", 0)
    data[40:44] = struct.pack("<L", 0)
    data += b"\x01"
    path.write_bytes(bytes(data))
    return bytes(data)


def session_stale_time() -> timezone.datetime:
    return timezone.now() - timedelta(seconds=django_settings.HEARTH["SESSION_STALE_S"] + 5)


def start(user: User, **kwargs) -> tuple[LiveSession, Recording]:
    kwargs.setdefault("denoise", True)
    kwargs.setdefault("owner_channel", "specific.owner!1")
    return services.live_session_start(broadcaster=user, **kwargs)


# --- live_session_start --------------------------------------------------------------


def test_start_creates_session_and_recording(alice):
    session, recording = start(alice, denoise=True, title="Morning show")
    assert session.is_live
    assert session.broadcaster == alice
    assert session.owner_channel == "specific.owner!1"
    assert session.denoise is True
    assert session.heartbeat_at is not None
    assert recording.session == session
    assert recording.owner == alice
    assert recording.title == "Morning show"
    assert recording.file.name.startswith(f"recordings/{alice.id}/")
    assert recording.file.name.endswith(f"session{session.id}.wav")
    assert recording.processing["denoise"] is True
    assert recording.ended_at is None
    assert services.recording_path(recording) == (
        django_settings.MEDIA_ROOT
        / "recordings"
        / str(alice.id)
        / recording.file.name.split("/")[-1]
    )


def test_start_without_denoise_and_default_title(alice):
    _, recording = start(alice, denoise=False)
    assert recording.processing["denoise"] is False
    assert recording.title == default_title("alice", recording.started_at)
    assert len(recording.title) <= 120


def test_default_title_names_the_broadcaster_and_the_time(settings):
    # One format everywhere ("alice · Sat 21 Nov, 19:30"), in the site's time zone.
    settings.TIME_ZONE = "Europe/London"
    moment = datetime(2026, 11, 21, 19, 30, 59, tzinfo=UTC)
    assert when_label(moment) == "Sat 21 Nov, 19:30"
    assert default_title("alice", moment) == "alice · Sat 21 Nov, 19:30"
    settings.TIME_ZONE = "Europe/Paris"
    assert when_label(moment) == "Sat 21 Nov, 20:30"
    assert when_label(datetime(2026, 7, 1, 7, 5, tzinfo=UTC)) == "Wed 1 Jul, 09:05"


def test_long_title_is_truncated(alice):
    session, recording = start(alice, title="x" * 300)
    assert session.title == "x" * 120
    assert recording.title == "x" * 120


def test_default_title_fits_for_a_long_username():
    user = make_user("u" * 150)  # Django allows 150-character usernames
    _, recording = start(user)
    recording.refresh_from_db()  # SQLite does not enforce varchar lengths
    assert len(recording.title) <= 120


def test_second_start_while_live_is_refused(alice):
    first, _ = start(alice)
    with pytest.raises(LiveSessionError) as excinfo:
        start(alice)
    assert excinfo.value.code == "already_live"
    assert str(excinfo.value)
    assert LiveSession.objects.count() == 1
    assert Recording.objects.count() == 1
    first.refresh_from_db()
    assert first.is_live


def test_start_ends_a_stale_session_as_lost(alice):
    old, old_recording = start(alice)
    LiveSession.objects.filter(id=old.id).update(heartbeat_at=session_stale_time())
    write_recording_wav(old_recording, RATE // 2)
    age_file(services.recording_path(old_recording))
    new, _ = start(alice)
    assert new.id != old.id
    assert new.is_live
    old.refresh_from_db()
    assert old.ended_at is not None
    assert old.end_reason == "lost"
    old_recording.refresh_from_db()
    assert old_recording.ended_at is not None
    assert old_recording.duration_s == pytest.approx(0.5)
    assert old_recording.size_bytes == services.recording_path(old_recording).stat().st_size


# --- live_session_end ----------------------------------------------------------------


def test_end_with_recording_info(alice):
    session, recording = start(alice)
    info = RecordingInfo(frames=RATE * 3, sample_rate=RATE, duration_s=3.0, size_bytes=288_044)
    result = services.live_session_end(session_id=session.id, reason="stopped", info=info)
    assert result == recording
    session.refresh_from_db()
    recording.refresh_from_db()
    assert session.ended_at is not None
    assert session.end_reason == "stopped"
    assert not session.is_live
    assert recording.ended_at == session.ended_at
    assert recording.duration_s == 3.0
    assert recording.size_bytes == 288_044


def test_end_without_info_repairs_the_wav_on_disk(alice):
    session, recording = start(alice)
    path = services.recording_path(recording)
    with WavRecorder(path) as recorder:
        recorder.write(tone(RATE))
    # A writer killed before patching the header leaves zero sizes behind.
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<L", 0)
    data[40:44] = struct.pack("<L", 0)
    path.write_bytes(bytes(data))
    result = services.live_session_end(session_id=session.id, reason="lost")
    assert result == recording
    recording.refresh_from_db()
    assert recording.duration_s == pytest.approx(1.0)
    assert recording.size_bytes == 44 + 2 * RATE == path.stat().st_size
    assert struct.unpack("<L", path.read_bytes()[40:44])[0] == 2 * RATE


@pytest.mark.parametrize("case", ["empty_info", "header_only_file", "no_file"])
def test_recording_without_audio_is_deleted_its_file_after_commit(
    alice, case, django_capture_on_commit_callbacks
):
    session, recording = start(alice)
    path = services.recording_path(recording)
    info = None
    if case == "empty_info":
        WavRecorder(path).close()
        info = RecordingInfo(frames=0, sample_rate=RATE, duration_s=0.0, size_bytes=44)
    elif case == "header_only_file":
        WavRecorder(path).close()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = services.live_session_end(session_id=session.id, reason="stopped", info=info)
    assert result is None
    assert not Recording.objects.exists()
    assert path.exists() == (case != "no_file")  # not deleted before the commit
    for callback in callbacks:
        callback()
    assert not path.exists()
    session.refresh_from_db()
    assert session.ended_at is not None


@pytest.mark.parametrize(
    "info", [None, RecordingInfo(frames=0, sample_rate=RATE, duration_s=0.0, size_bytes=44)]
)
def test_empty_recording_file_survives_a_rolled_back_end(
    alice, info, django_capture_on_commit_callbacks
):
    session, recording = start(alice)
    path = services.recording_path(recording)
    WavRecorder(path).close()
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        services.live_session_end(session_id=session.id, reason="stopped", info=info)
        raise RuntimeError
    assert path.exists()
    assert Recording.objects.filter(id=recording.id).exists()


def test_stale_session_with_a_headerless_file_does_not_block_going_live(alice):
    stale, recording = start(alice)
    LiveSession.objects.filter(id=stale.id).update(heartbeat_at=session_stale_time())
    path = services.recording_path(recording)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # created, but the process died before the header was written
    age_file(path)
    new, _ = start(alice)
    assert new.is_live
    stale.refresh_from_db()
    assert stale.end_reason == "lost"


def test_ending_twice_is_a_no_op(alice):
    session, recording = start(alice)
    info = RecordingInfo(frames=RATE, sample_rate=RATE, duration_s=1.0, size_bytes=96_044)
    services.live_session_end(session_id=session.id, reason="stopped", info=info)
    session.refresh_from_db()
    ended_at = session.ended_at
    again = services.live_session_end(session_id=session.id, reason="other", info=None)
    assert again == recording
    session.refresh_from_db()
    recording.refresh_from_db()
    assert session.ended_at == ended_at
    assert session.end_reason == "stopped"
    assert recording.duration_s == 1.0


def test_end_stale(alice, bob, carol):
    fresh, _ = start(alice)
    stale, stale_recording = start(bob)
    LiveSession.objects.filter(id=stale.id).update(heartbeat_at=session_stale_time())
    write_recording_wav(stale_recording, RATE // 4)
    age_file(services.recording_path(stale_recording))
    ended, _ = start(carol)
    services.live_session_end(session_id=ended.id, reason="stopped")
    LiveSession.objects.filter(id=ended.id).update(heartbeat_at=session_stale_time())
    assert selectors.live_session_stale_list() == [stale]
    assert services.live_session_end_stale() == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.end_reason == "lost"
    assert fresh.is_live
    stale_recording.refresh_from_db()
    assert stale_recording.duration_s == pytest.approx(0.25)
    assert services.live_session_end_stale() == 0


def test_heartbeat(alice, bob):
    live, _ = start(alice)
    ended, _ = start(bob)
    services.live_session_end(session_id=ended.id, reason="stopped")
    old = session_stale_time()
    LiveSession.objects.update(heartbeat_at=old)
    assert services.live_session_heartbeat(session_ids=[]) == set()
    assert services.live_session_heartbeat(session_ids=[live.id, ended.id, 99999]) == {live.id}
    live.refresh_from_db()
    ended.refresh_from_db()
    assert live.heartbeat_at > old
    assert ended.heartbeat_at == old
    assert selectors.live_session_active_for(user=alice) == live


# --- Ending sessions: file work outside the row lock, busy files left alone ----------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["end", "end_stale", "go_live_again"])
def test_wav_is_repaired_outside_the_row_locking_transaction(alice, monkeypatch, path):
    session, recording = start(alice)
    write_in_progress_wav(recording, RATE)
    atomic_during_repair: list[bool] = []
    real_repair = services.wav_repair

    def spy(file: Path) -> RecordingInfo:
        atomic_during_repair.append(connection.in_atomic_block)
        return real_repair(file)

    monkeypatch.setattr(services, "wav_repair", spy)
    if path == "end":
        services.live_session_end(session_id=session.id, reason="lost")
    else:
        LiveSession.objects.filter(id=session.id).update(heartbeat_at=session_stale_time())
        age_file(services.recording_path(recording))
        if path == "end_stale":
            assert services.live_session_end_stale() == 1
        else:
            start(alice)
    assert atomic_during_repair == [False]
    recording.refresh_from_db()
    assert recording.duration_s == pytest.approx(1.0)
    assert recording.ended_at is not None


def test_stale_session_whose_recording_is_still_written_is_left_alone(alice):
    session, recording = start(alice)
    LiveSession.objects.filter(id=session.id).update(heartbeat_at=session_stale_time())
    written = write_in_progress_wav(recording, RATE)  # just now: the owner is alive, only slow
    path = services.recording_path(recording)
    assert selectors.live_session_stale_list() == [session]
    assert services.live_session_end_stale() == 0
    with pytest.raises(LiveSessionError) as excinfo:
        start(alice)
    assert excinfo.value.code == "already_live"
    assert path.read_bytes() == written  # neither repaired nor truncated
    session.refresh_from_db()
    recording.refresh_from_db()
    assert session.is_live and recording.ended_at is None
    # Once the file stops changing for the whole stale window, its owner counts as dead.
    age_file(path)
    assert services.live_session_end_stale() == 1
    recording.refresh_from_db()
    assert recording.duration_s == pytest.approx(1.0)
    assert path.stat().st_size == 44 + 2 * RATE


def test_stale_cleanup_spares_a_session_stamped_after_the_listing(alice, monkeypatch):
    session, recording = start(alice)
    write_recording_wav(recording, RATE // 4)
    age_file(services.recording_path(recording))
    # Listed as stale, but its owner stamped it before the row was locked.
    monkeypatch.setattr(services, "live_session_stale_list", lambda **kwargs: [session])
    assert services.live_session_end_stale() == 0
    session.refresh_from_db()
    assert session.is_live


def test_orphan_cleanup_measures_but_never_repairs_a_file_being_written(alice):
    session, recording = start(alice)
    written = write_in_progress_wav(recording, RATE)
    path = services.recording_path(recording)
    assert services.live_session_end_orphaned() == 1
    assert path.read_bytes() == written
    session.refresh_from_db()
    recording.refresh_from_db()
    assert session.end_reason == "lost"
    assert recording.ended_at is not None  # kept: its writer may still be at it
    # The owner, told its session ended elsewhere, closes the file and reports it.
    info = RecordingInfo(frames=2 * RATE, sample_rate=RATE, duration_s=2.0, size_bytes=192_044)
    assert services.live_session_end(session_id=session.id, reason="lost", info=info) == recording
    recording.refresh_from_db()
    assert (recording.duration_s, recording.size_bytes) == (2.0, 192_044)


def test_session_stale_window_outlasts_database_lock_waits():
    # A stamp may wait out the whole lock timeout, fail, and the next one wait again:
    # that must not make a live session look dead.
    hearth = django_settings.HEARTH
    lock_timeout_s = django_settings.DATABASES["default"].get("OPTIONS", {}).get("timeout", 0)
    assert hearth["SESSION_STALE_S"] > 2 * (hearth["SESSION_HEARTBEAT_S"] + lock_timeout_s)


# --- live_session_listeners_set ------------------------------------------------------


def test_listeners_set_updates_only_a_live_session(alice, bob):
    live, _ = start(alice)
    ended, _ = start(bob)
    services.live_session_listeners_set(session_id=ended.id, listeners=2)
    services.live_session_end(session_id=ended.id, reason="stopped")
    services.live_session_listeners_set(session_id=live.id, listeners=4)
    services.live_session_listeners_set(session_id=ended.id, listeners=7)  # ended: ignored
    services.live_session_listeners_set(session_id=99999, listeners=1)  # unknown: ignored
    live.refresh_from_db()
    ended.refresh_from_db()
    assert live.listeners == 4
    assert ended.listeners == 0  # reset when the session ended
    services.live_session_listeners_set(session_id=live.id, listeners=0)
    live.refresh_from_db()
    assert live.listeners == 0
    with pytest.raises(ValueError, match="negative"):
        services.live_session_listeners_set(session_id=live.id, listeners=-1)


def test_listeners_set_sends_no_events(alice, bob, layer, django_capture_on_commit_callbacks):
    befriend(alice, bob)
    session, _ = start(alice)
    inbox = Inbox(layer, user_group(alice.id), user_group(bob.id))
    listener = Inbox(layer, services.session_group(session.id))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.live_session_listeners_set(session_id=session.id, listeners=2)
    assert callbacks == []
    assert inbox.events() == [] and listener.events() == []


# --- Selectors -----------------------------------------------------------------------


def test_live_session_visibility(alice, bob, carol):
    befriend(alice, bob)
    session, _ = start(alice)
    assert selectors.live_session_visible_get(user=bob, session_id=session.id) == session
    assert selectors.live_session_visible_get(user=carol, session_id=session.id) is None
    assert selectors.live_session_visible_get(user=alice, session_id=session.id) is None
    assert selectors.live_session_visible_get(user=bob, session_id=99999) is None
    assert selectors.live_session_active_for(user=alice) == session
    assert selectors.live_session_active_for(user=bob) is None
    assert selectors.live_session_list_for_friends(user=bob) == [session]
    assert selectors.live_session_list_for_friends(user=carol) == []
    assert selectors.live_session_list_for_friends(user=alice) == []
    assert selectors.live_session_by_broadcaster(user_ids={alice.id, bob.id}) == {alice.id: session}

    LiveSession.objects.filter(id=session.id).update(heartbeat_at=session_stale_time())
    assert selectors.live_session_visible_get(user=bob, session_id=session.id) is None
    assert selectors.live_session_active_for(user=alice) is None
    assert selectors.live_session_list_for_friends(user=bob) == []
    assert selectors.live_session_by_broadcaster(user_ids={alice.id}) == {}
    assert selectors.live_session_stale_list() == [session]

    services.live_session_end(session_id=session.id, reason="stopped")
    assert selectors.live_session_stale_list() == []


def test_live_sessions_of_friends_newest_first(alice, bob, carol):
    befriend(alice, bob)
    befriend(alice, carol)
    older, _ = start(bob)
    newer, _ = start(carol)
    LiveSession.objects.filter(id=older.id).update(started_at=timezone.now() - timedelta(minutes=5))
    assert selectors.live_session_list_for_friends(user=alice) == [newer, older]


def test_recording_list_visible(alice, bob, carol):
    befriend(alice, bob)
    own_old = make_recording(alice, age_s=300)
    friends = make_recording(bob, age_s=100)
    own_new = make_recording(alice, age_s=10)
    strangers = make_recording(carol, age_s=0)
    assert list(selectors.recording_list_visible(user=alice)) == [own_new, friends, own_old]
    assert list(selectors.recording_list_visible(user=bob)) == [own_new, friends, own_old]
    assert list(selectors.recording_list_visible(user=carol)) == [strangers]
    assert selectors.recording_visible_get(user=bob, recording_id=own_old.id) == own_old
    assert selectors.recording_visible_get(user=carol, recording_id=own_old.id) is None
    assert selectors.recording_visible_get(user=alice, recording_id=strangers.id) is None


# --- Recordings ----------------------------------------------------------------------


def test_recording_rename(alice, bob):
    befriend(alice, bob)
    recording = make_recording(alice)
    renamed = services.recording_rename(user=alice, recording_id=recording.id, title="  New  ")
    assert renamed.title == "New"
    recording.refresh_from_db()
    assert recording.title == "New"
    services.recording_rename(user=alice, recording_id=recording.id, title="y" * 120)
    for bad in ("", "   ", "z" * 121):
        with pytest.raises(RecordingError, match="1 to 120"):
            services.recording_rename(user=alice, recording_id=recording.id, title=bad)
    with pytest.raises(RecordingError, match="No such recording"):
        services.recording_rename(user=bob, recording_id=recording.id, title="Mine now")
    with pytest.raises(RecordingError):
        services.recording_rename(user=alice, recording_id=99999, title="x")
    recording.refresh_from_db()
    assert recording.title == "y" * 120


def test_recording_delete_removes_the_file_after_commit(
    alice, bob, django_capture_on_commit_callbacks
):
    befriend(alice, bob)
    recording = make_recording(alice)
    path = services.recording_path(recording)
    with pytest.raises(RecordingError):
        services.recording_delete(user=bob, recording_id=recording.id)
    assert Recording.objects.filter(id=recording.id).exists()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.recording_delete(user=alice, recording_id=recording.id)
    assert not Recording.objects.filter(id=recording.id).exists()
    assert path.exists()  # not before the commit
    for callback in callbacks:
        callback()
    assert not path.exists()
    with pytest.raises(RecordingError):
        services.recording_delete(user=alice, recording_id=recording.id)


def test_recording_delete_keeps_the_file_on_rollback(alice, django_capture_on_commit_callbacks):
    recording = make_recording(alice)
    path = services.recording_path(recording)
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        services.recording_delete(user=alice, recording_id=recording.id)
        raise RuntimeError
    assert path.exists()
    assert Recording.objects.filter(id=recording.id).exists()


def test_recording_in_progress_cannot_be_deleted(alice):
    _, recording = start(alice)
    with pytest.raises(RecordingError, match="in progress"):
        services.recording_delete(user=alice, recording_id=recording.id)
    assert Recording.objects.filter(id=recording.id).exists()


# --- Events after commit -------------------------------------------------------------


def test_live_events_on_start_and_end(alice, bob, carol, layer, django_capture_on_commit_callbacks):
    befriend(alice, bob)
    alice_inbox = Inbox(layer, user_group(alice.id))
    bob_inbox = Inbox(layer, user_group(bob.id))
    carol_inbox = Inbox(layer, user_group(carol.id))
    with django_capture_on_commit_callbacks(execute=True):
        session, recording = start(alice)
    live = {
        "user_id": alice.id,
        "username": "alice",
        "display_name": "",
        "avatar_url": None,
        "live": True,
        "session_id": session.id,
        "started_at": session.started_at.isoformat(),
        "title": "",
    }
    assert bob_inbox.events() == [("live", live)]
    assert alice_inbox.events() == [("live", live)]

    listener = Inbox(layer, services.session_group(session.id))
    info = RecordingInfo(frames=RATE, sample_rate=RATE, duration_s=1.0, size_bytes=96_044)
    with django_capture_on_commit_callbacks(execute=True):
        services.live_session_end(session_id=session.id, reason="stopped", info=info)
    ended = [("live", {**live, "live": False}), ("recordings.changed", {})]
    assert bob_inbox.events() == ended
    assert alice_inbox.events() == ended
    assert listener.events() == [
        (
            "session.ended",
            {
                "session_id": session.id,
                "reason": "stopped",
                "recording_id": recording.id,
                "recording_discarded": None,
                "min_recording_s": 0.0,
            },
        )
    ]
    assert carol_inbox.events() == []


def test_session_ended_event_without_recording(alice, layer, django_capture_on_commit_callbacks):
    session, _ = start(alice)
    listener = Inbox(layer, services.session_group(session.id))
    with django_capture_on_commit_callbacks(execute=True):
        services.live_session_end(session_id=session.id, reason="failed")
    assert listener.events() == [
        (
            "session.ended",
            {
                "session_id": session.id,
                "reason": "failed",
                "recording_id": None,
                "recording_discarded": "empty",
                "min_recording_s": 0.0,
            },
        )
    ]


def test_recording_changes_notify_owner_and_friends(
    alice, bob, carol, layer, django_capture_on_commit_callbacks
):
    befriend(alice, bob)
    recording = make_recording(alice)
    inboxes = [Inbox(layer, user_group(u.id)) for u in (alice, bob, carol)]
    with django_capture_on_commit_callbacks(execute=True):
        services.recording_rename(user=alice, recording_id=recording.id, title="Renamed")
    with django_capture_on_commit_callbacks(execute=True):
        services.recording_delete(user=alice, recording_id=recording.id)
    deleted = {"deleted": [recording.id]}
    changed = [("recordings.changed", {}), ("recordings.changed", deleted)]
    assert [inbox.events() for inbox in inboxes] == [changed, changed, []]


def test_no_live_event_when_rolled_back(alice, bob, layer, django_capture_on_commit_callbacks):
    befriend(alice, bob)
    inbox = Inbox(layer, user_group(alice.id), user_group(bob.id))
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        start(alice)
        raise RuntimeError
    assert callbacks == []
    assert inbox.events() == []
    assert not LiveSession.objects.exists()


# --- Recording limits: quota, disk floor, retention ----------------------------------


def _limits(settings, **values) -> None:
    settings.HEARTH = {**settings.HEARTH, **values}


def _disk(free: int):
    import shutil

    return lambda path: shutil._ntuple_diskusage(10 * free, 9 * free, free)


def test_recording_bytes_used_counts_the_users_recordings(alice, bob):
    make_recording(alice, frames=1000)
    make_recording(alice, frames=500)
    make_recording(bob, frames=10)
    assert selectors.recording_bytes_used(user_id=alice.id) == 2 * 44 + 2 * 1500
    assert selectors.recording_bytes_used(user_id=make_user("dan").id) == 0


def test_go_live_over_the_quota_is_refused_before_anything_is_created(alice, settings):
    make_recording(alice, frames=1000)  # 2044 bytes
    _limits(settings, RECORDING_QUOTA_BYTES=2044)
    with pytest.raises(LiveSessionError, match="quota") as refused:
        start(alice)
    assert refused.value.code == "quota_exceeded"
    assert not LiveSession.objects.exists() and Recording.objects.count() == 1
    _limits(settings, RECORDING_QUOTA_BYTES=2045)
    start(alice)


def test_go_live_under_the_disk_floor_is_refused(alice, settings, monkeypatch):
    _limits(settings, MIN_FREE_DISK_BYTES=1000)
    monkeypatch.setattr("shutil.disk_usage", _disk(999))
    with pytest.raises(LiveSessionError, match="disk space") as refused:
        start(alice)
    assert refused.value.code == "disk_full"
    assert not LiveSession.objects.exists() and not Recording.objects.exists()
    monkeypatch.setattr("shutil.disk_usage", _disk(1000))
    start(alice)


def test_live_limit_exceeded(alice, settings, monkeypatch):
    make_recording(alice, frames=1000)  # 2044 bytes
    _limits(settings, RECORDING_QUOTA_BYTES=3000, MIN_FREE_DISK_BYTES=1000)
    monkeypatch.setattr("shutil.disk_usage", _disk(5000))
    assert selectors.live_session_limit_exceeded(broadcaster_id=alice.id, live_bytes=900) is None
    assert (
        selectors.live_session_limit_exceeded(broadcaster_id=alice.id, live_bytes=956)
        == "limit_quota"
    )
    monkeypatch.setattr("shutil.disk_usage", _disk(999))
    assert selectors.live_session_limit_exceeded(broadcaster_id=alice.id, live_bytes=0) == (
        "limit_disk"
    )


def test_expired_recordings_are_deleted_their_files_after_commit(
    alice, bob, settings, layer, django_capture_on_commit_callbacks
):
    old = make_recording(alice, age_s=3 * 86400)
    old_bobs = make_recording(bob, age_s=3 * 86400)
    recent = make_recording(alice, age_s=86400)
    _, live = start(alice)
    Recording.objects.filter(id=live.id).update(started_at=timezone.now() - timedelta(days=5))
    _limits(settings, RECORDING_RETENTION_DAYS=0)
    assert services.recording_delete_expired() == 0  # off by default
    _limits(settings, RECORDING_RETENTION_DAYS=2)
    inbox = Inbox(layer, user_group(alice.id))
    paths = [services.recording_path(r) for r in (old, old_bobs)]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert services.recording_delete_expired() == 2
    assert set(Recording.objects.values_list("id", flat=True)) == {recent.id, live.id}
    assert all(path.exists() for path in paths)  # not before the commit
    for callback in callbacks:
        callback()
    assert not any(path.exists() for path in paths)
    assert services.recording_path(recent).exists()
    assert ("recordings.changed", {"deleted": [old.id]}) in inbox.events()
