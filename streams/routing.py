from django.urls import path

from streams.consumers import HearthConsumer

websocket_urlpatterns = [path("ws/", HearthConsumer.as_asgi())]
