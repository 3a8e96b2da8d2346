"""Signal handlers of the users app."""

from __future__ import annotations

import logging
from typing import Any

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_out, user_login_failed
from django.db import transaction
from django.dispatch import receiver
from django.http import HttpRequest

from project.metrics import login_failure_count, login_lockout_count
from users.events import group_send_from_sync, user_group

logger = logging.getLogger("hearth.events")


@receiver(user_logged_out)
def close_sockets_of_logged_out_session(
    sender: object, request: HttpRequest | None, user: Any, **kwargs: Any
) -> None:
    """Close the WebSockets opened with the session that just logged out.

    A consumer resolves its user once, at connect; without this a socket of a
    logged-out session would keep broadcasting and listening. Other sessions of the
    same user (other devices) stay connected.
    """
    if user is None or request is None or not request.session.session_key:
        return
    message = {"type": "hearth.logout", "session_key": request.session.session_key}

    def send() -> None:
        try:
            group_send_from_sync(user_group(user.id), message)
        except Exception:
            logger.exception("could not close the sockets of a logged-out session")

    transaction.on_commit(send)


@receiver(user_login_failed)
def count_login_failure(sender: object, **kwargs: Any) -> None:
    """Count a failed log-in (``hearth_login_failures_total``)."""
    login_failure_count()


@receiver(user_locked_out)
def count_login_lockout(sender: object, **kwargs: Any) -> None:
    """Count a log-in answered with django-axes' lockout (``hearth_login_lockouts_total``):
    the attempt that reaches the limit and each one refused while locked out."""
    login_lockout_count()
