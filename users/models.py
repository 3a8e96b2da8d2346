"""Accounts, friend requests, friendships and presence connections."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import F, Q

DISPLAY_NAME_MAX_LENGTH = 50


class User(AbstractUser):
    """A Hearth account: Django's user plus an optional display name and avatar.

    ``display_name`` is what friends see next to the username (which stays the handle
    people search for and that cannot change); empty means "show the username".
    ``avatar`` is the stored picture relative to ``MEDIA_ROOT``:
    ``avatars/<digest>.webp``, 256 x 256 px (see ``users.avatars``), whose name is
    the SHA-256 of the owner's id and the file's bytes (so a new picture gets a new
    URL and two users never share a file); empty means "no avatar" (pages show the
    initials). Served only through ``users.views.avatar_file``.
    """

    display_name = models.CharField(max_length=DISPLAY_NAME_MAX_LENGTH, blank=True, default="")
    avatar = models.FileField(upload_to="avatars/", max_length=100, blank=True, default="")

    @property
    def shown_name(self) -> str:
        """The name to show others: the display name, or the username when none is set."""
        return self.display_name or self.username

    @property
    def avatar_digest(self) -> str:
        """The hex digest naming the avatar file ("" when there is none)."""
        name = self.avatar.name or ""
        return name.removeprefix("avatars/").removesuffix(".webp") if name else ""


class FriendRequest(models.Model):
    """A pending request from ``from_user`` to ``to_user``; deleted when answered."""

    from_user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="sent_requests")
    to_user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="received_requests")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["from_user", "to_user"], name="friend_request_unique"),
            models.CheckConstraint(
                condition=~Q(from_user=F("to_user")), name="friend_request_not_self"
            ),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.from_user} -> {self.to_user}"


class Friendship(models.Model):
    """An accepted friendship, stored once with ``user_low.id < user_high.id``."""

    user_low = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    user_high = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user_low", "user_high"], name="friendship_unique"),
            models.CheckConstraint(
                condition=Q(user_low__lt=F("user_high")), name="friendship_ordered"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_low} <-> {self.user_high}"


class PresenceConnection(models.Model):
    """One open WebSocket of a signed-in page; a user is online while one exists.

    ``channel_name`` is the consumer's channel-layer name. ``last_seen`` is bumped by
    the page's heartbeat so connections of a crashed process age out.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="presence_connections")
    channel_name = models.CharField(max_length=255, unique=True)
    connected_at = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.user} @ {self.channel_name}"


class Block(models.Model):
    """``blocker`` blocked ``blocked``: no friendship, requests, presence or listening
    between the two, either way, and neither finds the other in search."""

    blocker = models.ForeignKey(User, on_delete=models.CASCADE, related_name="blocks_made")
    blocked = models.ForeignKey(User, on_delete=models.CASCADE, related_name="blocks_received")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["blocker", "blocked"], name="block_unique"),
            models.CheckConstraint(condition=~Q(blocker=F("blocked")), name="block_not_self"),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.blocker} blocks {self.blocked}"
