"""Server-rendered pages (included at the site root, no namespace)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

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
    path("live/", views.go_live, name="go_live"),
    path("listen/<id:session_id>/", views.listen, name="listen"),
    path("recordings/", views.recordings, name="recordings"),
    path("recordings/<id:recording_id>/", views.recording_page, name="recording_page"),
]
