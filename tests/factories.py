"""Small builders shared by the tests: users, friendships, live sessions, a channel-layer
inbox."""

from __future__ import annotations

import asyncio
import uuid

from asgiref.sync import async_to_sync
from django.utils import timezone

from streams.models import LiveSession
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
