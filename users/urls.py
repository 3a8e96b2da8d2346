from django.urls import path

import project.api  # noqa: F401  registers the <id:...> path converter
from users import views

urlpatterns = [
    path("users/search", views.user_search, name="api_user_search"),
    path("friends", views.friend_list, name="api_friend_list"),
    path("friends/requests", views.friend_request_create, name="api_friend_request_create"),
    path(
        "friends/requests/<id:request_id>/<str:action>",
        views.friend_request_action,
        name="api_friend_request_action",
    ),
    path("friends/<id:user_id>/unfriend", views.friend_remove, name="api_friend_remove"),
    path("blocks", views.block_collection, name="api_block_collection"),
    path("blocks/<id:user_id>/unblock", views.block_remove, name="api_block_remove"),
]
