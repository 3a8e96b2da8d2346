"""Forms for accounts."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm


class SignupForm(UserCreationForm):
    """Create a Hearth account from a username and a password typed twice.

    Django's ``UserCreationForm`` already rejects a username that differs from an
    existing one only by case, and runs the password validators.
    """

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username",)
