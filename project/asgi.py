"""ASGI entry point: HTTP through Django, WebSockets through Channels.

WebSockets are behind ``SiteOriginValidator`` (Origin must be the site's own:
scheme, host and port, see ``project.origin``) and ``AuthMiddlewareStack``
(session cookie → ``scope["user"]``).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from project.origin import SiteOriginValidator  # noqa: E402
from streams.routing import websocket_urlpatterns  # noqa: E402
from streams.rtc import media_server_start_with_daphne  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SiteOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

# Housekeeping (ending sessions a crash left "live", repairing their recordings,
# pruning presence) starts with the server, not at the first go-live.
media_server_start_with_daphne()

from streams.upload_relay import upload_relay_start_with_daphne  # noqa: E402

# Upload jobs' progress, from the task worker process to this process's pages.
upload_relay_start_with_daphne()
