"""JSON API for friends: search, requests, unfriend, friend list with presence, blocks;
and the avatar image endpoint."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.http import parse_etags

from project.api import (
    UNCLEAN_TEXT_MESSAGE,
    ApiError,
    api_view,
    json_body,
    json_error,
    text_is_clean,
)
from streams.selectors import live_session_by_broadcaster
from users import selectors, services
from users.models import FriendRequest, User
from users.ratelimit import RATE_LIMITED_MESSAGE, request_limited


def _user_json(user: User, *, avatar: bool = False) -> dict[str, object]:
    """``{id, username, display_name, avatar_url}``; ``avatar_url`` is null unless
    ``avatar`` (the viewer may see it: a friend) and the user has one."""
    return {
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "avatar_url": selectors.user_avatar_url(user=user) if avatar else None,
    }


def _request_json(request: FriendRequest, other: User) -> dict[str, object]:
    return {
        "id": request.id,
        "user": _user_json(other),
        "created_at": request.created_at.isoformat(),
    }


@api_view(("GET",))
def user_search(request: HttpRequest) -> JsonResponse:
    """GET ``?q=`` → ``{"users": [{id, username, display_name, avatar_url, relation}]}``;
    relation is ``friend``, ``incoming``, ``outgoing`` or ``none``; ``avatar_url`` is
    given for friends only (the avatar rule: yourself and friends).

    An empty query finds no one; 400 for a query of one character or one holding
    control characters or lone surrogates (SQLite would match ``\\x00`` against names).
    Users blocked by ``request.user``, or who blocked them, are never listed.
    """
    me = request.user
    query = request.GET.get("q", "").strip()[:150]
    if not text_is_clean(query):
        raise ApiError(f"Bad search: {UNCLEAN_TEXT_MESSAGE}")
    if 0 < len(query) < selectors.SEARCH_MIN_CHARS:
        raise ApiError(f"Type at least {selectors.SEARCH_MIN_CHARS} characters to search.")
    found = selectors.user_search(user=me, query=query)
    friends = selectors.friend_ids(user=me)
    incoming = set(
        selectors.friend_request_incoming_list(user=me).values_list("from_user_id", flat=True)
    )
    outgoing = set(
        selectors.friend_request_outgoing_list(user=me).values_list("to_user_id", flat=True)
    )

    def relation(user_id: int) -> str:
        if user_id in friends:
            return "friend"
        if user_id in incoming:
            return "incoming"
        return "outgoing" if user_id in outgoing else "none"

    return JsonResponse(
        {
            "users": [
                {**_user_json(u, avatar=u.id in friends), "relation": relation(u.id)} for u in found
            ]
        }
    )


@api_view(("GET",))
def friend_list(request: HttpRequest) -> JsonResponse:
    """GET → friends (with ``avatar_url``, ``online`` and ``live`` state), and pending
    requests both ways (their users without avatars: not friends yet)."""
    me = request.user
    friends = list(selectors.friend_list(user=me))
    ids = {f.id for f in friends}
    online = selectors.online_user_ids(user_ids=ids)
    live = live_session_by_broadcaster(user_ids=ids)
    return JsonResponse(
        {
            "friends": [
                {
                    **_user_json(f, avatar=True),
                    "online": f.id in online,
                    "live": (
                        {
                            "session_id": live[f.id].id,
                            "started_at": live[f.id].started_at.isoformat(),
                        }
                        if f.id in live
                        else None
                    ),
                }
                for f in friends
            ],
            "incoming": [
                _request_json(r, r.from_user)
                for r in selectors.friend_request_incoming_list(user=me)
            ],
            "outgoing": [
                _request_json(r, r.to_user) for r in selectors.friend_request_outgoing_list(user=me)
            ],
        }
    )


@api_view(("POST",))
def friend_request_create(request: HttpRequest) -> JsonResponse:
    """POST ``{"username"}`` → 201 ``{"status": "requested"|"accepted", "message"}``.

    429 past ``HEARTH["FRIEND_REQUEST_RATE"]`` requests by this user (every attempt
    counts, so guessing usernames is slowed down too).
    """
    if request_limited(
        request, group="friend_request", key="user", rate_setting="FRIEND_REQUEST_RATE"
    ):
        raise ApiError(RATE_LIMITED_MESSAGE, status=429)
    username = json_body(request).get("username")
    if not isinstance(username, str) or not username.strip():
        raise ApiError("Give the username of the person to add.")
    if not text_is_clean(username):
        raise ApiError(f"Bad username: {UNCLEAN_TEXT_MESSAGE}")
    try:
        result = services.friend_request_send(from_user=request.user, to_username=username)
    except services.FriendshipError as exc:
        raise ApiError(str(exc)) from exc
    message = "Friend request sent." if result.status == "requested" else "You are now friends."
    return JsonResponse({"status": result.status, "message": message}, status=201)


_REQUEST_ACTIONS = {
    "accept": services.friend_request_accept,
    "decline": services.friend_request_decline,
    "cancel": services.friend_request_cancel,
}


@api_view(("POST",))
def friend_request_action(request: HttpRequest, request_id: int, action: str) -> JsonResponse:
    """POST → accept, decline (requests to me) or cancel (my requests)."""
    service = _REQUEST_ACTIONS.get(action)
    if service is None:
        raise ApiError("Unknown action.", status=404)
    try:
        service(user=request.user, request_id=request_id)
    except services.FriendshipError as exc:
        raise ApiError(str(exc), status=404) from exc
    return JsonResponse({"ok": True})


@api_view(("POST",))
def friend_remove(request: HttpRequest, user_id: int) -> JsonResponse:
    """POST → end the friendship with user ``user_id``."""
    try:
        services.friendship_delete(user=request.user, friend_id=user_id)
    except services.FriendshipError as exc:
        raise ApiError(str(exc), status=404) from exc
    return JsonResponse({"ok": True})


@api_view(("GET", "POST"))
def block_collection(request: HttpRequest) -> JsonResponse:
    """GET → ``{"blocked": [{id, username, display_name, created_at}]}`` (blocks I made);
    POST ``{"user_id"}`` → 201 ``{"ok": true}``: block that user (ends any friendship and
    pending requests both ways). 400 for a bad id or oneself, 404 for no such user.
    """
    if request.method == "GET":
        return JsonResponse(
            {
                "blocked": [
                    {**_user_json(b.blocked), "created_at": b.created_at.isoformat()}
                    for b in selectors.block_list(user=request.user)
                ]
            }
        )
    user_id = json_body(request).get("user_id")
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        raise ApiError("Give the id of the user to block.")
    if user_id == request.user.id:
        raise ApiError("You can't block yourself.")
    try:
        services.block_create(user=request.user, blocked_id=user_id)
    except services.AccountError as exc:
        raise ApiError(str(exc), status=404) from exc
    return JsonResponse({"ok": True}, status=201)


@api_view(("POST",))
def block_remove(request: HttpRequest, user_id: int) -> JsonResponse:
    """POST → lift my block of user ``user_id``; 404 when there is none."""
    try:
        services.block_delete(user=request.user, blocked_id=user_id)
    except services.AccountError as exc:
        raise ApiError(str(exc), status=404) from exc
    return JsonResponse({"ok": True})


AVATAR_CACHE_CONTROL = "private, max-age=86400, immutable"
"""Browsers may keep an avatar a day without asking again: its URL names the file's
digest, so a new picture has a new URL. ``private``: no shared cache may keep it (it
is for the owner and their friends only). An ex-friend's browser may show a cached
copy until it expires; the server refuses them from the moment the friendship ends."""


def avatar_file(request: HttpRequest, user_id: int, digest: str) -> HttpResponse:
    """GET (or HEAD) user ``user_id``'s avatar, a 256 px WebP, whose file digest is
    ``digest``.

    The rule of the recordings: only the user themself and their friends get it; a
    stranger, a user blocked either way, an old digest or a user without an avatar
    all get the same 404 (nothing leaks whether the user or the picture exists), a
    signed-out visitor 401. Answers carry ``ETag`` (the digest) and
    :data:`AVATAR_CACHE_CONTROL`; ``If-None-Match`` with that tag gets 304.
    """
    if not request.user.is_authenticated:
        return json_error("Sign in first.", status=401)
    if request.method not in ("GET", "HEAD"):
        return json_error("Method not allowed.", status=405)
    owner = selectors.avatar_visible_get(viewer=request.user, user_id=user_id)
    if owner is None or not owner.avatar_digest or owner.avatar_digest != digest:
        return json_error("No such avatar.", status=404)
    path = Path(settings.MEDIA_ROOT) / owner.avatar.name
    etag = f'"{digest}"'
    if etag in parse_etags(request.headers.get("If-None-Match", "")):
        response = HttpResponse(status=304)
    else:
        try:
            body = path.read_bytes()
        except OSError:
            return json_error("No such avatar.", status=404)
        response = HttpResponse(body if request.method == "GET" else b"", content_type="image/webp")
        response["Content-Length"] = str(len(body))
    response["ETag"] = etag
    response["Cache-Control"] = AVATAR_CACHE_CONTROL
    return response
