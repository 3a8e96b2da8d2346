"""Page views: each renders a template; the pages' scripts talk to the JSON API and
the WebSocket for everything dynamic."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.response import TemplateResponse
from django.urls import reverse_lazy
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from streams.selectors import (
    live_session_active_for,
    live_session_captioned,
    live_session_ended_visible_get,
    live_session_visible_get,
    recording_list_visible,
    recording_of_session,
    recording_visible_get,
    upload_latest_unfinished,
)
from streams.services import upload_json
from streams.views import live_session_json, recording_json
from streams.when import when_label
from users import services as user_services
from users.forms import AccountDeleteForm, AvatarForm, ProfileForm, SignupForm
from users.ratelimit import request_limited
from users.selectors import block_list, friend_list, user_avatar_url


def _page(request: HttpRequest, template: str, **context: Any) -> HttpResponse:
    """Render ``template`` with what every signed-in page's scripts need."""
    context.setdefault("ice_servers", settings.ICE_SERVERS)
    context["hearth_user"] = {"id": request.user.pk, "username": request.user.get_username()}
    return render(request, template, context)


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """Landing page for visitors; the friends-and-live dashboard once signed in."""
    if not request.user.is_authenticated:
        return render(request, "frontend/landing.html")
    return _page(request, "frontend/home.html")


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """Create an account, sign it in and go home.

    Sign-up POSTs are limited per IP address (``HEARTH["SIGNUP_RATE"]``); over the
    limit the form comes back with an error and HTTP 429, and no account is made.
    """
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and request_limited(
        request, group="signup", key="ip", rate_setting="SIGNUP_RATE"
    ):
        # A fresh form (nothing validated, no database work): only the reason shows.
        context = {
            "form": SignupForm(),
            "refusal": "Too many sign-ups from this address. Try again later.",
        }
        return render(request, "frontend/signup.html", context, status=429)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "frontend/signup.html", {"form": form})


PII_DELAY_CHOICES_S = (2.0, 3.0, 5.0, 10.0)
"""Broadcast delays the go-live page offers with bleeping (those within the server's
``PII_DELAY_MIN_S``..``PII_DELAY_MAX_S``, plus its default ``PII_DELAY_S``)."""


def _pii_choices() -> dict[str, object]:
    """Whether live bleeping is offered, the default delay and the delays to choose."""
    hearth = settings.HEARTH
    low, high, default = hearth["PII_DELAY_MIN_S"], hearth["PII_DELAY_MAX_S"], hearth["PII_DELAY_S"]
    delays = sorted({d for d in PII_DELAY_CHOICES_S if low <= d <= high} | {float(default)})
    return {"live": hearth["PII_LIVE"], "delay_s": float(default), "delays": delays}


@login_required
@require_safe
def go_live(request: HttpRequest) -> HttpResponse:
    """Broadcast the microphone; shows the user's session if another tab is live."""
    active = live_session_active_for(user=request.user)
    return _page(
        request,
        "frontend/go_live.html",
        active_session=live_session_json(active) if active else None,
        pii=_pii_choices(),
    )


@login_required
@require_safe
def listen(request: HttpRequest, session_id: int) -> HttpResponse:
    """Listen to a friend's live session.

    A session that has ended, for its broadcaster or a friend, gives a page saying so
    with a link to its recording ("alice's broadcast has ended — replay it"); one
    that left no recording, or that the user may not see, gives the 404 page.
    """
    session = live_session_visible_get(user=request.user, session_id=session_id)
    if session is None:
        ended = live_session_ended_visible_get(user=request.user, session_id=session_id)
        recording = None
        if ended is not None:
            recording = recording_of_session(session_id=ended.id)
        if recording is None:
            raise Http404("No such live broadcast.")
        return _page(
            request,
            "frontend/listen_ended.html",
            ended_session=ended,
            ended_label=when_label(ended.ended_at),
            recording=recording,
            is_own=ended.broadcaster_id == request.user.id,
        )
    return _page(
        request,
        "frontend/listen.html",
        live_session=session,
        live_session_json=live_session_json(session),
        captions=live_session_captioned(session_id=session.id),
    )


@login_required
@require_safe
def recordings(request: HttpRequest) -> HttpResponse:
    """The user's own and friends' recordings (listed by the page's script), with a
    filter by broadcaster: the user or one of their friends."""
    return _page(request, "frontend/recordings.html", friends=friend_list(user=request.user))


@login_required
@require_safe
def upload(request: HttpRequest) -> HttpResponse:
    """Upload & process: a form for a video or audio file and its options, then the
    job's live progress and a link to the recording it became (static/js/upload.js);
    a job still unfinished from an earlier visit is followed again."""
    unfinished = upload_latest_unfinished(user=request.user)
    return _page(
        request,
        "frontend/upload.html",
        max_mb=int(settings.HEARTH["UPLOAD_MAX_BYTES"]) // 1024**2,
        current_upload=upload_json(unfinished) if unfinished else None,
    )


@login_required
@require_safe
def recording_page(request: HttpRequest, recording_id: int) -> HttpResponse:
    """One recording: title, who, when, duration, processing, waveform, player,
    download, and rename/delete for its owner; 404 unless the user owns it or is the
    owner's friend."""
    recording = recording_visible_get(user=request.user, recording_id=recording_id)
    if recording is None:
        raise Http404("No such recording.")
    return _page(
        request,
        "frontend/recording.html",
        recording=recording,
        recording_json=recording_json(recording, viewer_id=request.user.id, peaks=True),
    )


def initials(name: str) -> str:
    """Up to two capital letters standing for ``name`` where there is no avatar:
    "Alice Liddell" → "AL", "bob_smith" → "BS", "carol" → "C" (words split at
    spaces, ``_ . - @ +``). Mirrors ``initials()`` in static/js/ui.js."""
    words = [w for w in re.split(r"[\s_.\-@+]+", name) if w]
    return "".join(w[0] for w in words[:2]).upper() or "?"


def _account_page(
    request: HttpRequest,
    *,
    form: ProfileForm | None = None,
    avatar_form: AvatarForm | None = None,
    avatar_refusal: str = "",
) -> HttpResponse:
    """The account page with the given forms (fresh ones otherwise); ``avatar_refusal``
    is shown on the picture form (an upload refused before its file was read).

    An invalid form comes back with 200, as Django's own form views do (browsers log
    a 4xx page load as a console error).
    """
    user = request.user
    if form is None:
        form = ProfileForm(initial={"display_name": user.display_name, "email": user.email})
    return _page(
        request,
        "frontend/account.html",
        form=form,
        avatar_form=avatar_form or AvatarForm(auto_id="avatar_%s"),
        avatar_url=user_avatar_url(user=user),
        avatar_initials=initials(user.shown_name),
        avatar_refusal=avatar_refusal,
        blocks=block_list(user=user),
    )


@login_required
@require_http_methods(["GET", "POST"])
def account(request: HttpRequest) -> HttpResponse:
    """Account settings: profile (display name, e-mail), picture, password, blocked
    people, deleting the account."""
    user = request.user
    initial = {"display_name": user.display_name, "email": user.email}
    form = ProfileForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            user_services.user_profile_update(
                user=user,
                display_name=form.cleaned_data["display_name"],
                email=form.cleaned_data["email"],
            )
        except user_services.AccountError as exc:
            form.add_error("display_name", str(exc))
        else:
            messages.success(request, "Profile saved.")
            return redirect("account")
    return _account_page(request, form=form)


@login_required
@require_POST
def account_avatar(request: HttpRequest) -> HttpResponse:
    """Upload a new picture (multipart form on the account page); a refused file comes
    back on the page with the reason under the field. Past
    ``HEARTH["AVATAR_UPLOAD_RATE"]`` uploads by the user, the page comes back with
    HTTP 429 and the file is not looked at."""
    if request_limited(request, group="avatar", key="user", rate_setting="AVATAR_UPLOAD_RATE"):
        response = _account_page(
            request, avatar_refusal="Too many new pictures. Try again in an hour."
        )
        response.status_code = 429
        return response
    avatar_form = AvatarForm(request.POST, request.FILES, auto_id="avatar_%s")
    if avatar_form.is_valid():
        upload = avatar_form.cleaned_data["avatar"]
        try:
            user_services.user_avatar_set(user=request.user, image=upload.read())
        except user_services.AccountError as exc:
            avatar_form.add_error("avatar", str(exc))
        else:
            messages.success(request, "Picture saved.")
            return redirect("account")
    return _account_page(request, avatar_form=avatar_form)


@login_required
@require_POST
def account_avatar_remove(request: HttpRequest) -> HttpResponse:
    """Remove the user's picture (friends see their initials again)."""
    user_services.user_avatar_clear(user=request.user)
    messages.success(request, "Picture removed.")
    return redirect("account")


@login_required
@require_http_methods(["GET", "POST"])
def account_delete(request: HttpRequest) -> HttpResponse:
    """Delete the account after the password is typed again: everything of the user
    goes (see ``users.services.user_delete``), every device is signed out, and the
    browser lands on the front page with a note saying so."""
    user = request.user
    form = AccountDeleteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user_services.user_delete(user=user, password=form.cleaned_data["password"])
        except user_services.AccountError as exc:
            form.add_error("password", str(exc))
        else:
            logout(request)
            messages.success(request, "Your account and your recordings were deleted.")
            return redirect("home")
    return _page(
        request,
        "frontend/account_delete.html",
        form=form,
        recording_count=recording_list_visible(user=user).filter(owner=user).count(),
    )


@login_required
@require_POST
def account_unblock(request: HttpRequest, user_id: int) -> HttpResponse:
    """Lift the user's block of ``user_id`` (a form on the account page)."""
    try:
        user_services.block_delete(user=request.user, blocked_id=user_id)
    except user_services.AccountError as exc:
        raise Http404(str(exc)) from exc
    messages.success(request, "Unblocked.")
    return redirect("account")


class PasswordResetView(auth_views.PasswordResetView):
    """Django's "forgot your password" form, in Hearth's templates, limited per IP.

    Past ``HEARTH["PASSWORD_RESET_RATE"]`` POSTs from one address the form comes back
    with HTTP 429 and no e-mail is sent (whether or not the address is known, the
    answer is the same "check your inbox" page otherwise, as in Django).
    """

    template_name = "frontend/password_reset.html"
    email_template_name = "frontend/email/password_reset.txt"
    subject_template_name = "frontend/email/password_reset_subject.txt"
    success_url = reverse_lazy("password_reset_done")

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """Refuse over the limit, else send the e-mail as Django does."""
        if request_limited(
            request, group="password_reset", key="ip", rate_setting="PASSWORD_RESET_RATE"
        ):
            context = self.get_context_data(
                refusal="Too many reset requests from this address. Try again later."
            )
            return TemplateResponse(request, self.template_name, context, status=429)
        return super().post(request, *args, **kwargs)
