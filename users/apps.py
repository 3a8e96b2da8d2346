from django.apps import AppConfig


class UsersConfig(AppConfig):
    """Accounts, friendships and presence."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "users"

    def ready(self) -> None:
        from users import signals  # noqa: F401  (connects the receivers)
