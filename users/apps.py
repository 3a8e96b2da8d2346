from django.apps import AppConfig


class UsersConfig(AppConfig):
    """Accounts, friendships and presence."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "users"
