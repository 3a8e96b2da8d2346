from django.apps import AppConfig


class StreamsConfig(AppConfig):
    """Live sessions, signaling, the aiortc media server, processors and recordings."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "streams"

    def ready(self) -> None:
        from project.metrics import install

        install()  # the media engine's metrics (collector, stage histogram), once
