from django.apps import AppConfig


class FrontendConfig(AppConfig):
    """Server-rendered pages and their templates."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "frontend"
