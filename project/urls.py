"""Top-level URL configuration: pages, JSON API, recording audio, avatars, health, metrics,
admin."""

from django.contrib import admin
from django.urls import include, path

from project import api  # registers the <id:...> path converter first
from project.metrics import metrics_view
from project.views import health
from streams.urls import api_urlpatterns as streams_api
from users.views import avatar_file

handler404 = api.not_found

urlpatterns = [
    path("health", health, name="health"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/", include("users.urls")),
    path("api/", include(streams_api)),
    path("avatars/<id:user_id>/<slug:digest>.webp", avatar_file, name="avatar"),
    path("", include("streams.urls")),
    path("", include("frontend.urls")),
]
