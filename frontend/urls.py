"""Server-rendered pages (included at the site root, no namespace)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

import project.api  # noqa: F401  registers the <id:...> path converter
from frontend import views

urlpatterns = [
    path("", views.home, name="home"),
    path("signup/", views.signup, name="signup"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="registration/login.html", redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/", views.account, name="account"),
    path("account/unblock/<id:user_id>/", views.account_unblock, name="account_unblock"),
    path("account/avatar/", views.account_avatar, name="account_avatar"),
    path("account/avatar/remove/", views.account_avatar_remove, name="account_avatar_remove"),
    path("account/delete/", views.account_delete, name="account_delete"),
    path(
        "account/password/",
        auth_views.PasswordChangeView.as_view(
            template_name="frontend/password_change.html",
            success_url=reverse_lazy("password_change_done"),
        ),
        name="password_change",
    ),
    path(
        "account/password/done/",
        auth_views.PasswordChangeDoneView.as_view(
            template_name="frontend/password_change_done.html"
        ),
        name="password_change_done",
    ),
    path("password-reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="frontend/password_reset_sent.html"),
        name="password_reset_done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="frontend/password_reset_confirm.html",
            success_url=reverse_lazy("password_reset_complete"),
        ),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/done/",
        auth_views.PasswordResetCompleteView.as_view(
            template_name="frontend/password_reset_complete.html"
        ),
        name="password_reset_complete",
    ),
    path("live/", views.go_live, name="go_live"),
    path("listen/<id:session_id>/", views.listen, name="listen"),
    path("recordings/", views.recordings, name="recordings"),
    path("upload/", views.upload, name="upload"),
    path("recordings/<id:recording_id>/", views.recording_page, name="recording_page"),
]
