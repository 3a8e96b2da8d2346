from django.urls import path

import project.api  # noqa: F401  registers the <id:...> path converter
from streams import views

api_urlpatterns = [
    path("live", views.live_list, name="api_live_list"),
    path("recordings", views.recording_list, name="api_recording_list"),
    path("recordings/search", views.recording_search, name="api_recording_search"),
    path("recordings/<id:recording_id>", views.recording_detail, name="api_recording_detail"),
    path("uploads", views.upload_create, name="api_upload_create"),
    path("uploads/<id:job_id>", views.upload_detail, name="api_upload_detail"),
]

urlpatterns = [
    path("recordings/<id:recording_id>/audio", views.recording_audio, name="recording_audio"),
    path(
        "recordings/<id:recording_id>/captions.vtt",
        views.recording_captions,
        name="recording_captions",
    ),
    path(
        "recordings/<id:recording_id>/download",
        views.recording_download,
        name="recording_download",
    ),
]
