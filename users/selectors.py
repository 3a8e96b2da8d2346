"""Read-only queries about users, friendships and presence (HackSoftware style)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from users.models import Block, FriendRequest, Friendship, PresenceConnection, User

SEARCH_MIN_CHARS = 2


def friend_ids(*, user: User | int) -> set[int]:
    """Ids of the accepted friends of ``user`` (a user or a user id)."""
    user_id = user if isinstance(user, int) else user.id
    pairs = Friendship.objects.filter(Q(user_low_id=user_id) | Q(user_high_id=user_id)).values_list(
        "user_low_id", "user_high_id"
    )
    return {high if low == user_id else low for low, high in pairs}


def friend_list(*, user: User) -> QuerySet[User]:
    """``user``'s friends ordered by username."""
    return User.objects.filter(id__in=friend_ids(user=user)).order_by("username")


def friendship_exists(*, user_a: User | int, user_b: User | int) -> bool:
    """Whether the two users are friends (order does not matter; a user is no self-friend)."""
    a = user_a if isinstance(user_a, int) else user_a.id
    b = user_b if isinstance(user_b, int) else user_b.id
    if a == b:
        return False
    low, high = sorted((a, b))
    return Friendship.objects.filter(user_low_id=low, user_high_id=high).exists()


def friend_request_incoming_list(*, user: User) -> QuerySet[FriendRequest]:
    """Pending requests sent to ``user``, newest first."""
    return FriendRequest.objects.filter(to_user=user).select_related("from_user")


def friend_request_outgoing_list(*, user: User) -> QuerySet[FriendRequest]:
    """Pending requests ``user`` sent, newest first."""
    return FriendRequest.objects.filter(from_user=user).select_related("to_user")


def user_search(*, user: User, query: str, limit: int = 10) -> list[User]:
    """Active users whose username contains ``query`` (case-insensitive), not ``user``.

    A query shorter than ``SEARCH_MIN_CHARS`` after trimming returns no one: there is
    no browsable user directory, and one letter would list most users.
    """
    query = query.strip()
    if len(query) < SEARCH_MIN_CHARS:
        return []
    return list(
        User.objects.filter(username__icontains=query, is_active=True)
        .exclude(id=user.id)
        .exclude(id__in=block_related_ids(user=user))
        .order_by("username")[:limit]
    )


def avatar_url(*, user_id: int, avatar: str) -> str | None:
    """The URL of the avatar stored as ``avatar`` (``User.avatar``'s name) of user
    ``user_id``, or None when there is none. The URL names the file's digest, so it
    changes with the picture and may be cached long."""
    if not avatar:
        return None
    digest = avatar.removeprefix("avatars/").removesuffix(".webp")
    return reverse("avatar", args=[user_id, digest])


def user_avatar_url(*, user: User) -> str | None:
    """``user``'s avatar URL, or None when they have none (pages show initials)."""
    return avatar_url(user_id=user.id, avatar=user.avatar.name or "")


def avatar_visible_get(*, viewer: User, user_id: int) -> User | None:
    """User ``user_id`` if ``viewer`` may see their avatar, else None.

    The rule of recordings: the user themself and their friends; nobody else (not
    strangers, not a user blocked either way, not a deactivated account).
    """
    if user_id == viewer.id:
        return User.objects.filter(id=user_id, is_active=True).first()
    if not friendship_exists(user_a=viewer, user_b=user_id) or block_exists_between(
        user_a=viewer, user_b=user_id
    ):
        return None
    return User.objects.filter(id=user_id, is_active=True).first()


def block_exists_between(*, user_a: User | int, user_b: User | int) -> bool:
    """Whether either of the two users blocked the other."""
    a = user_a if isinstance(user_a, int) else user_a.id
    b = user_b if isinstance(user_b, int) else user_b.id
    return Block.objects.filter(
        Q(blocker_id=a, blocked_id=b) | Q(blocker_id=b, blocked_id=a)
    ).exists()


def block_related_ids(*, user: User | int) -> set[int]:
    """Ids of the users ``user`` blocked and of those who blocked ``user``."""
    user_id = user if isinstance(user, int) else user.id
    pairs = Block.objects.filter(Q(blocker_id=user_id) | Q(blocked_id=user_id)).values_list(
        "blocker_id", "blocked_id"
    )
    return {blocked if blocker == user_id else blocker for blocker, blocked in pairs}


def block_list(*, user: User) -> QuerySet[Block]:
    """The blocks ``user`` made (not those against them), newest first."""
    return Block.objects.filter(blocker=user).select_related("blocked")


# ASCII look-alikes, applied in this order by ``username_skeleton``. Capital I is
# mapped before lower-casing so that "aIice" meets "alice" but "ali" does not meet "all".
_SKELETON_STEPS = (("I", "l"), ("0", "o"), ("1", "l"), ("rn", "m"), ("vv", "w"))
# For a skeleton character, a regex of the username text that can produce it.
_SKELETON_SOURCES = {"l": "[lLI1]", "o": "[oO0]", "m": "([mM]|[rR][nN])", "w": "([wW]|[vV][vV])"}


def username_skeleton(*, username: str) -> str:
    """What an ASCII username looks like, for look-alike checks.

    Capital I, digit 1 and l all read as ``l``, digit 0 as ``o``, ``rn`` as ``m``,
    ``vv`` as ``w``, and case is ignored: "AIice", "a1ice" and "alice" share the
    skeleton "alice". (Usernames are ASCII-only, see ``users.forms``, so this short
    table covers the look-alikes left; Unicode's confusables table is not needed.)
    """
    skeleton = username.replace("I", "l").lower()
    for text, looks_like in _SKELETON_STEPS[1:]:
        skeleton = skeleton.replace(text, looks_like)
    return skeleton


def user_lookalike_exists(*, username: str) -> bool:
    """Whether some user's username has the same :func:`username_skeleton` as ``username``.

    A regex built from the skeleton narrows the candidates in the database (no scan of
    all users); the skeletons of those few are then compared exactly.
    """
    skeleton = username_skeleton(username=username)
    parts = []
    for char in skeleton:
        if char in _SKELETON_SOURCES:
            parts.append(_SKELETON_SOURCES[char])
        elif char.isalpha():
            parts.append(f"[{char}{char.upper()}]" if char != "i" else "i")
        else:
            parts.append(re.escape(char))
    candidates = User.objects.filter(username__regex=f"^{''.join(parts)}$")
    return any(
        username_skeleton(username=other) == skeleton
        for other in candidates.values_list("username", flat=True)
    )


def presence_stale_cutoff() -> datetime:
    """Connections not seen since this (now − ``HEARTH["PRESENCE_STALE_S"]``) are gone."""
    return timezone.now() - timedelta(seconds=settings.HEARTH["PRESENCE_STALE_S"])


def _fresh_connections() -> QuerySet[PresenceConnection]:
    return PresenceConnection.objects.filter(last_seen__gte=presence_stale_cutoff())


def user_is_online(*, user_id: int) -> bool:
    """Whether the user has at least one fresh page connection."""
    return _fresh_connections().filter(user_id=user_id).exists()


def online_user_ids(*, user_ids: set[int]) -> set[int]:
    """The subset of ``user_ids`` with at least one fresh page connection."""
    return set(_fresh_connections().filter(user_id__in=user_ids).values_list("user_id", flat=True))
