"""Real-time events to users' open pages, sent only after the database commit.

Every signed-in page's WebSocket consumer joins the group ``user_group(user.id)``;
``users_notify`` queues a message for those groups with
``transaction.on_commit`` so a page never learns of a row that was rolled back
(the pattern Zulip uses for presence events).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger("hearth.events")


def user_group(user_id: int) -> str:
    """Channel-layer group name of all open pages of user ``user_id``."""
    return f"user.{user_id}"


def _send_now(user_ids: list[int], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:  # pragma: no cover - settings always define one
        return
    send = async_to_sync(layer.group_send)
    for user_id in user_ids:
        try:
            send(user_group(user_id), message)
        except Exception:  # a broken layer must not break the request that committed
            logger.exception("could not send %s to user %s", message.get("type"), user_id)


def users_notify(*, user_ids: Iterable[int], event: str, data: dict[str, Any]) -> None:
    """After the current transaction commits, send ``event`` with ``data`` to users.

    The consumer handler ``hearth_event`` relays it to the browser as
    ``{"type": event, **data}``. Outside a transaction it is sent at once.
    """
    ids = sorted(set(user_ids))
    message = {"type": "hearth.event", "event": event, "data": data}
    transaction.on_commit(lambda: _send_now(ids, message))
