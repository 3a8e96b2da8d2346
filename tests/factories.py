"""Small builders shared by the tests: users, friendships, live sessions, a channel-layer
inbox."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import numpy as np
from asgiref.sync import async_to_sync
from django.utils import timezone

from streams.audio import write_wav
from streams.models import LiveSession, Recording
from streams.services import recording_path
from users.models import Friendship, User


def make_user(username: str, **fields) -> User:
    """A user with an unusable password."""
    return User.objects.create_user(username=username, password=None, **fields)


def befriend(a: User, b: User) -> Friendship:
    """Make ``a`` and ``b`` friends (stored with the lower id first)."""
    low, high = sorted((a, b), key=lambda u: u.id)
    return Friendship.objects.create(user_low=low, user_high=high)


def go_live(user: User, **fields) -> LiveSession:
    """A live session row for ``user`` (fresh heartbeat, no media server behind it)."""
    return LiveSession.objects.create(
        broadcaster=user, owner_channel="x", heartbeat_at=timezone.now(), **fields
    )


class Inbox:
    """A channel in the given groups; ``events()`` returns what arrived so far."""

    def __init__(self, layer, *groups: str) -> None:
        self.layer = layer
        self.channel = async_to_sync(layer.new_channel)()
        for group in groups:
            async_to_sync(layer.group_add)(group, self.channel)

    def events(self) -> list[tuple[str, dict]]:
        # A marker sent now comes after everything already queued for the channel.
        marker = uuid.uuid4().hex
        async_to_sync(self.layer.send)(self.channel, {"type": "test.marker", "marker": marker})
        received: list[dict] = []

        async def drain() -> None:
            while True:
                message = await asyncio.wait_for(self.layer.receive(self.channel), 5)
                if message.get("marker") == marker:
                    return
                received.append(message)

        async_to_sync(drain)()
        assert all(m["type"] == "hearth.event" for m in received), received
        return [(m["event"], m["data"]) for m in received]


def make_recording(
    owner: User, *, age_s: float = 0, ended: bool = True, frames: int = 1500
) -> Recording:
    """A recording row of ``owner`` and its WAV: ``frames`` samples of seeded noise."""
    started = timezone.now() - timedelta(seconds=age_s)
    recording = Recording.objects.create(
        owner=owner,
        title=f"{owner.username} rec",
        file=f"recordings/{owner.id}/{uuid.uuid4().hex}.wav",
        started_at=started,
        ended_at=started + timedelta(seconds=1) if ended else None,
        duration_s=frames / 48_000,
        size_bytes=44 + 2 * frames,
        processing={"denoise": True, "model": "DeepFilterNet3"},
    )
    path = recording_path(recording)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(recording.id)
    write_wav(path, rng.uniform(-0.5, 0.5, frames).astype(np.float32))
    return recording
