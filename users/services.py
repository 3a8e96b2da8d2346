"""Writes for accounts, friendships and presence (HackSoftware style).

Every function takes keyword-only arguments, runs in one transaction and sends
its real-time events with ``users.events.users_notify`` (after commit).
Business-rule violations raise :class:`FriendshipError` with a message fit to
show the user.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from project.api import UNCLEAN_TEXT_MESSAGE, text_is_clean
from streams.models import Recording
from streams.services import live_session_stop_for_user, recording_path
from users.avatars import AvatarImageError, avatar_image_process
from users.events import group_send_from_sync, user_group, users_notify
from users.models import (
    DISPLAY_NAME_MAX_LENGTH,
    Block,
    FriendRequest,
    Friendship,
    PresenceConnection,
    User,
)
from users.selectors import (
    block_exists_between,
    friend_ids,
    friendship_exists,
    presence_stale_cutoff,
)

logger = logging.getLogger("hearth.accounts")

FRIEND_REQUEST_UNKNOWN_MESSAGE = "Could not send a friend request to that username."


class FriendshipError(Exception):
    """A friend action that breaks a rule; ``str(error)`` is a user-facing message."""


class AccountError(Exception):
    """An account change that breaks a rule; ``str(error)`` is a user-facing message."""


@dataclass(frozen=True, slots=True)
class FriendRequestResult:
    """Outcome of :func:`friend_request_send`.

    ``status`` is ``"requested"`` (a new pending request, in ``request``) or
    ``"accepted"`` (the other user had already asked, so a friendship was made).
    """

    status: str
    request: FriendRequest | None = None
    friendship: Friendship | None = None


def _notify_friends_changed(*user_ids: int) -> None:
    users_notify(user_ids=user_ids, event="friends.changed", data={})


def _friendship_create(*, a: User, b: User) -> Friendship:
    low, high = (a, b) if a.id < b.id else (b, a)
    friendship, _ = Friendship.objects.get_or_create(user_low=low, user_high=high)
    FriendRequest.objects.filter(from_user__in=[a, b], to_user__in=[a, b]).delete()
    _notify_friends_changed(a.id, b.id)
    return friendship


@transaction.atomic
def friend_request_send(*, from_user: User, to_username: str) -> FriendRequestResult:
    """Ask the user called ``to_username`` to be ``from_user``'s friend.

    A request to someone who already asked ``from_user`` accepts theirs instead.

    Raises:
        FriendshipError: unknown or deactivated user (one message for both that does
            not repeat the name, so answers do not tell which names exist; a block either
            way gets the same one, so nobody learns they were blocked), self-request,
            already friends, or a request already pending.
    """
    to_user = User.objects.filter(username__iexact=to_username.strip(), is_active=True).first()
    if to_user is None or block_exists_between(user_a=from_user, user_b=to_user):
        # One message for unknown, deactivated and blocked (either way) names alike.
        raise FriendshipError(FRIEND_REQUEST_UNKNOWN_MESSAGE)
    if to_user.id == from_user.id:
        raise FriendshipError("You can't send a friend request to yourself.")
    if friendship_exists(user_a=from_user, user_b=to_user):
        raise FriendshipError(f"You and {to_user.username} are already friends.")
    if FriendRequest.objects.filter(from_user=to_user, to_user=from_user).exists():
        return FriendRequestResult(
            status="accepted", friendship=_friendship_create(a=from_user, b=to_user)
        )
    if FriendRequest.objects.filter(from_user=from_user, to_user=to_user).exists():
        raise FriendshipError(f"You already asked {to_user.username}.")
    try:
        with transaction.atomic():
            request = FriendRequest.objects.create(from_user=from_user, to_user=to_user)
    except IntegrityError as exc:  # a concurrent duplicate
        raise FriendshipError(f"You already asked {to_user.username}.") from exc
    _notify_friends_changed(from_user.id, to_user.id)
    return FriendRequestResult(status="requested", request=request)


def _request_for(*, request_id: int, **owner: User) -> FriendRequest:
    request = FriendRequest.objects.select_for_update().filter(id=request_id, **owner).first()
    if request is None:
        raise FriendshipError("That friend request no longer exists.")
    return request


@transaction.atomic
def friend_request_accept(*, user: User, request_id: int) -> Friendship:
    """Accept the pending request ``request_id`` sent to ``user``.

    Raises:
        FriendshipError: no such pending request addressed to ``user``.
    """
    request = _request_for(request_id=request_id, to_user=user)
    return _friendship_create(a=request.from_user, b=user)


@transaction.atomic
def friend_request_decline(*, user: User, request_id: int) -> None:
    """Decline (delete) the pending request ``request_id`` sent to ``user``.

    Raises:
        FriendshipError: no such pending request addressed to ``user``.
    """
    request = _request_for(request_id=request_id, to_user=user)
    request.delete()
    _notify_friends_changed(request.from_user_id, user.id)


@transaction.atomic
def friend_request_cancel(*, user: User, request_id: int) -> None:
    """Withdraw the pending request ``request_id`` that ``user`` sent.

    Raises:
        FriendshipError: no such pending request sent by ``user``.
    """
    request = _request_for(request_id=request_id, from_user=user)
    request.delete()
    _notify_friends_changed(user.id, request.to_user_id)


@transaction.atomic
def friendship_delete(*, user: User, friend_id: int) -> None:
    """End the friendship between ``user`` and user ``friend_id`` (unfriend).

    Raises:
        FriendshipError: the two are not friends.
    """
    low, high = sorted((user.id, friend_id))
    deleted, _ = Friendship.objects.filter(user_low_id=low, user_high_id=high).delete()
    if not deleted:
        raise FriendshipError("You are not friends.")
    _notify_friends_changed(user.id, friend_id)


# --- Blocks --------------------------------------------------------------------


@transaction.atomic
def block_create(*, user: User, blocked_id: int) -> Block:
    """Block user ``blocked_id`` for ``user`` (blocking twice is a no-op).

    Ends their friendship and deletes pending requests both ways in the same
    transaction. With the friendship gone, presence and ``live`` events stop reaching
    either of them, and the media worker's ``access_check`` cuts a listener who is no
    longer a friend within ~2 s. Both users' pages get ``friends.changed``.

    Raises:
        AccountError: ``blocked_id`` is ``user`` or no user.
    """
    if blocked_id == user.id:
        raise AccountError("You can't block yourself.")
    other = User.objects.filter(id=blocked_id).first()
    if other is None:
        raise AccountError("No such user.")
    block, _ = Block.objects.get_or_create(blocker=user, blocked=other)
    low, high = sorted((user.id, other.id))
    Friendship.objects.filter(user_low_id=low, user_high_id=high).delete()
    FriendRequest.objects.filter(from_user_id__in=(low, high), to_user_id__in=(low, high)).delete()
    _notify_friends_changed(user.id, other.id)
    return block


@transaction.atomic
def block_delete(*, user: User, blocked_id: int) -> None:
    """Lift ``user``'s block of user ``blocked_id`` (friendship is not restored).

    Raises:
        AccountError: ``user`` has not blocked that user.
    """
    deleted, _ = Block.objects.filter(blocker=user, blocked_id=blocked_id).delete()
    if not deleted:
        raise AccountError("You have not blocked that user.")
    _notify_friends_changed(user.id)


# --- Profile ---------------------------------------------------------------------


def display_name_clean(*, display_name: str) -> str:
    """``display_name`` trimmed, with runs of spaces made one; empty clears it.

    Raises:
        AccountError: control characters or lone surrogates, or over
            ``DISPLAY_NAME_MAX_LENGTH`` characters.
    """
    if not text_is_clean(display_name):
        raise AccountError(f"Bad display name: {UNCLEAN_TEXT_MESSAGE}")
    cleaned = " ".join(display_name.split())
    if len(cleaned) > DISPLAY_NAME_MAX_LENGTH:
        raise AccountError(
            f"Keep your display name to {DISPLAY_NAME_MAX_LENGTH} characters or fewer."
        )
    return cleaned


@transaction.atomic
def user_profile_update(*, user: User, display_name: str, email: str) -> User:
    """Set ``user``'s display name and e-mail address ("" clears either).

    The e-mail address is only used for password resets. When the display name
    changes, the pages of ``user`` and their friends get ``friends.changed`` and
    reload their lists.

    Raises:
        AccountError: a bad display name (see :func:`display_name_clean`) or an
            invalid e-mail address.
    """
    cleaned = display_name_clean(display_name=display_name)
    email = email.strip()
    if email:
        try:
            validate_email(email)
        except ValidationError as exc:
            raise AccountError("Enter a valid e-mail address.") from exc
        email = User.objects.normalize_email(email)
    changed = cleaned != user.display_name
    user.display_name = cleaned
    user.email = email
    user.save(update_fields=["display_name", "email"])
    if changed:
        _notify_friends_changed(user.id, *friend_ids(user=user))
    return user


# --- Avatars -------------------------------------------------------------------------


def _avatar_path(name: str) -> Path:
    """Absolute path of the avatar file ``name`` (``User.avatar``'s) under ``MEDIA_ROOT``."""
    return Path(settings.MEDIA_ROOT) / name


def _avatar_write(*, user_id: int, data: bytes) -> str:
    """Store the avatar bytes ``data`` of user ``user_id``; returns the file's name.

    The name is ``avatars/<first 32 hex digits of SHA-256(user id, data)>.webp``: a new
    picture gets a new name (and URL), and the owner's id in the hash keeps two users
    who upload the same picture from sharing a file that one of them may delete. The
    file is written beside its final name and renamed into place, so a reader never
    sees half of it.
    """
    digest = hashlib.sha256(f"{user_id}:".encode() + data).hexdigest()[:32]
    name = f"avatars/{digest}.webp"
    path = _avatar_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return name


def _avatar_delete_after_commit(name: str) -> None:
    """Delete avatar file ``name`` once the current transaction commits (none: nothing)."""
    if name:
        path = _avatar_path(name)
        transaction.on_commit(lambda: path.unlink(missing_ok=True))


def user_avatar_set(*, user: User, image: bytes) -> User:
    """Make the uploaded file ``image`` (its bytes) ``user``'s avatar.

    The upload is checked and converted by :func:`users.avatars.avatar_image_process`
    (JPEG, PNG, WebP or GIF; at most 5 MB and 40 megapixels; turned upright by its
    EXIF orientation, stripped of all metadata, centre-cropped, 256 x 256 px WebP),
    stored under ``MEDIA_ROOT/avatars/`` with a content-hashed name, and the previous
    avatar's file is deleted once the row commits. ``user`` and their friends' pages
    get ``friends.changed`` (their lists reload with the new picture).

    Raises:
        AccountError: the file is refused (too big, not an image, damaged, too many
            pixels); the message says which.
    """
    try:
        data = avatar_image_process(image)
    except AvatarImageError as exc:
        raise AccountError(str(exc)) from exc
    name = _avatar_write(user_id=user.id, data=data)
    try:
        with transaction.atomic():
            locked = User.objects.select_for_update().get(id=user.id)
            previous = locked.avatar.name or ""
            locked.avatar.name = name
            locked.save(update_fields=["avatar"])
            if previous != name:
                _avatar_delete_after_commit(previous)
                _notify_friends_changed(user.id, *friend_ids(user=user))
    except BaseException:
        if not User.objects.filter(avatar=name).exists():  # the file nobody's avatar is
            _avatar_path(name).unlink(missing_ok=True)
        raise
    user.avatar.name = name
    return user


@transaction.atomic
def user_avatar_clear(*, user: User) -> None:
    """Remove ``user``'s avatar (pages show their initials again); the file is deleted
    once this commits. Removing none is a no-op. ``user`` and their friends' pages get
    ``friends.changed`` when there was one."""
    locked = User.objects.select_for_update().get(id=user.id)
    previous = locked.avatar.name or ""
    user.avatar.name = ""
    if not previous:
        return
    locked.avatar.name = ""
    locked.save(update_fields=["avatar"])
    _avatar_delete_after_commit(previous)
    _notify_friends_changed(user.id, *friend_ids(user=user))


# --- Deleting an account ------------------------------------------------------------

ACCOUNT_CLOSED_MESSAGE = "hearth.account.closed"
"""Channel-layer message type that closes every socket of a user whose account is
being deleted (``streams.consumers.HearthConsumer.hearth_account_closed``)."""


def _account_sockets_close(user_id: int) -> None:
    """Close every open page socket of user ``user_id`` (4401), ending at once any
    broadcast one of them holds (``account_deleted``)."""
    try:
        group_send_from_sync(user_group(user_id), {"type": ACCOUNT_CLOSED_MESSAGE})
    except Exception:  # the sockets also fail their next request; keep deleting
        logger.exception("could not close the sockets of user %s", user_id)


def _sessions_delete(user_id: int) -> int:
    """Delete every stored log-in session of user ``user_id``; returns how many.

    With the database session engine (Django's default; also ``cached_db``) the rows
    are found by decoding the unexpired ones; other engines cannot be searched, and
    there the sessions end because the user row is gone (Django then treats them as
    signed out). The cache copy of ``cached_db`` sessions expires with the row gone on
    the next write, and reads fall back to an anonymous user for the same reason.
    """
    engine = import_module(settings.SESSION_ENGINE)
    store = engine.SessionStore
    if not issubclass(store, DatabaseSessionStore):
        return 0
    model = store.get_model_class()
    keys = []
    for row in model.objects.filter(expire_date__gt=timezone.now()).iterator():
        try:
            data = store().decode(row.session_data)
        except Exception:  # a corrupt row is not this user's
            continue
        if str(data.get("_auth_user_id", "")) == str(user_id):
            keys.append(row.session_key)
    model.objects.filter(session_key__in=keys).delete()
    return len(keys)


def user_delete(*, user: User, password: str) -> None:
    """Delete ``user``'s account and everything of theirs, after checking ``password``.

    In order:

    1. The account is deactivated (committed): no new log-in, socket or go-live.
    2. Every open page socket of the user is closed (4401, the page says "signed
       out"); a page that was broadcasting asks its media worker to end the broadcast.
    3. Each live broadcast of theirs is ended through the media worker holding it
       (:func:`streams.services.live_session_stop_for_user`, reason
       ``account_deleted``), which waits for it: the recording is finalised, the
       listeners get ``session.ended`` and the friends ``live: false``.
    4. In one transaction: their log-in sessions (every device), recordings (rows,
       their redaction events), live session rows, friendships, friend requests both
       ways, blocks both ways, presence rows and the user row are deleted. After it
       commits, the recording files and the avatar file are deleted, friends get
       ``presence`` (offline), ``friends.changed`` (their lists drop the user) and
       ``recordings.changed`` with the deleted ids; those with a pending request to or
       from the user get ``friends.changed``.

    Blocking (step 3 waits up to ``HEARTH["BROADCAST_REPLY_TIMEOUT_S"]`` per broadcast):
    call it outside any transaction, from a request's thread, not from the one shared
    database thread the media worker's own database calls run in.

    Raises:
        AccountError: ``password`` is not the user's (nothing is changed).
    """
    if not password or not user.check_password(password):
        raise AccountError("That is not your password. Your account was not deleted.")
    with transaction.atomic():
        User.objects.select_for_update().filter(id=user.id).update(is_active=False)
        user_id = user.id
        transaction.on_commit(lambda: _account_sockets_close(user_id))
    user.is_active = False
    live_session_stop_for_user(user_id=user.id, reason="account_deleted")
    with transaction.atomic():
        if User.objects.select_for_update().filter(id=user.id).first() is None:
            return  # deleted meanwhile (another request of theirs)
        recordings = list(Recording.objects.select_for_update().filter(owner_id=user.id))
        files = [recording_path(r) for r in recordings]
        # A compression may be turning a WAV into Ogg right now: remove both names.
        files += [path.with_suffix(".ogg" if path.suffix == ".wav" else ".wav") for path in files]
        if user.avatar.name:
            files.append(_avatar_path(user.avatar.name))
        friends = friend_ids(user=user)
        requesters = set(
            FriendRequest.objects.filter(Q(from_user=user) | Q(to_user=user)).values_list(
                "from_user_id", "to_user_id"
            )
        )
        others = (friends | {uid for pair in requesters for uid in pair}) - {user.id}
        _presence_broadcast(user=user, online=False)
        if others:
            _notify_friends_changed(*others)
        if recordings and friends:
            users_notify(
                user_ids=friends,
                event="recordings.changed",
                data={"deleted": sorted(r.id for r in recordings)},
            )
        sessions = _sessions_delete(user.id)
        User.objects.filter(id=user.id).delete()

        def unlink() -> None:
            for path in files:
                path.unlink(missing_ok=True)

        transaction.on_commit(unlink)
    logger.info(
        "account %s deleted: %d recording(s), %d log-in session(s)",
        user.id,
        len(recordings),
        sessions,
    )


# --- Presence ------------------------------------------------------------------


def _presence_broadcast(*, user: User, online: bool) -> None:
    users_notify(
        user_ids=friend_ids(user=user),
        event="presence",
        data={
            "user_id": user.id,
            "username": user.username,
            "display_name": user.display_name,
            "online": online,
        },
    )


@transaction.atomic
def presence_connect(*, user: User, channel_name: str) -> bool:
    """Record a new page connection of ``user``; return True if they came online.

    Several tabs count as one presence: friends hear "online" only for the first.
    """
    User.objects.select_for_update().filter(id=user.id).first()  # serialise per user
    was_online = PresenceConnection.objects.filter(
        user=user, last_seen__gte=presence_stale_cutoff()
    ).exists()
    PresenceConnection.objects.update_or_create(
        channel_name=channel_name, defaults={"user": user, "last_seen": timezone.now()}
    )
    if not was_online:
        _presence_broadcast(user=user, online=True)
    return not was_online


@transaction.atomic
def presence_disconnect(*, user: User, channel_name: str) -> bool:
    """Forget a closed page connection; return True if ``user`` went offline."""
    User.objects.select_for_update().filter(id=user.id).first()
    PresenceConnection.objects.filter(channel_name=channel_name).delete()
    still_online = PresenceConnection.objects.filter(
        user=user, last_seen__gte=presence_stale_cutoff()
    ).exists()
    if not still_online:
        _presence_broadcast(user=user, online=False)
    return not still_online


def presence_touch(*, user: User, channel_name: str) -> None:
    """Mark a page connection as alive now (called on the page's heartbeat).

    A connection pruned meanwhile (its process looked dead) is recorded again, and
    friends hear that the user is back online.
    """
    updated = PresenceConnection.objects.filter(channel_name=channel_name).update(
        last_seen=timezone.now()
    )
    if not updated:
        presence_connect(user=user, channel_name=channel_name)


@transaction.atomic
def presence_prune() -> int:
    """Delete connections not seen for ``PRESENCE_STALE_S`` (a crashed process's).

    Friends of users who thereby went offline are told. Returns rows deleted.
    """
    stale = PresenceConnection.objects.filter(last_seen__lt=presence_stale_cutoff())
    user_ids = set(stale.values_list("user_id", flat=True))
    deleted, _ = stale.delete()
    for user in User.objects.filter(id__in=user_ids):
        if not PresenceConnection.objects.filter(user=user).exists():
            _presence_broadcast(user=user, online=False)
    return deleted
