"""Forms for accounts."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.core.files.uploadedfile import UploadedFile

from users.avatars import AVATAR_MAX_BYTES
from users.models import DISPLAY_NAME_MAX_LENGTH
from users.selectors import user_lookalike_exists


class SignupForm(UserCreationForm):
    """Create a Hearth account from a username and a password typed twice.

    Django's ``UserCreationForm`` already normalises the username with NFKC (so
    fullwidth "ａｌｉｃｅ" becomes "alice"), rejects one that differs from an existing
    one only by case, and runs the password validators.

    On top of that, usernames must be ASCII and must not look like an existing one
    (see :meth:`clean_username`).
    """

    def clean_username(self) -> str | None:
        """The username, refused if it is not ASCII or looks like an existing one.

        Rule: ASCII letters, digits and ``_ . @ + -`` only. Django's own validator
        allows any Unicode letter, so "аlice" with a Cyrillic а could pose as "alice".
        Allowing one script per name would still let a whole-Cyrillic "аре" pose as the
        Latin "ape", and catching that needs Unicode's confusables data (a dependency).
        ASCII-only removes cross-script look-alikes entirely, and friends find each other
        by typing usernames, which ASCII keeps possible on every keyboard. The look-alikes
        left inside ASCII (I/l/1, O/0, rn/m, vv/w) are compared by skeleton
        (:func:`users.selectors.username_skeleton`) with every existing username.
        Existing accounts with non-ASCII names keep working; only new names are checked.
        """
        username = super().clean_username()
        if not username:  # Django already recorded an error (e.g. taken, ignoring case)
            return username
        if not username.isascii():
            raise forms.ValidationError(
                "Use only ASCII letters, digits and _ . @ + - in a username.", code="ascii"
            )
        if user_lookalike_exists(username=username):
            raise forms.ValidationError(
                "That username looks too much like someone else's. Choose another.",
                code="lookalike",
            )
        return username

    def validate_password_for_user(self, user: object, **kwargs: object) -> None:
        """Run the password validators on the first password field, so that "too short"
        or "too common" shows under "Password" (Django puts it under the confirmation);
        a mismatch still shows under "Password confirmation"."""
        super().validate_password_for_user(user, password_field_name="password1")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username",)


class ProfileForm(forms.Form):
    """The account page's profile: display name and e-mail address, both optional.

    Only shape is checked here; ``users.services.user_profile_update`` cleans and
    stores them (its ``AccountError`` is shown on the form).
    """

    display_name = forms.CharField(
        max_length=DISPLAY_NAME_MAX_LENGTH,
        required=False,
        strip=False,
        help_text="Shown to your friends next to your username. Leave empty to show the username.",
    )
    email = forms.EmailField(
        label="E-mail address",
        required=False,
        help_text="Only used to send you a link if you forget your password.",
    )


AVATAR_ACCEPT = ("image/jpeg", "image/png", "image/webp", "image/gif")
"""What the file picker offers (``accept``); the server checks the content itself."""


class AvatarForm(forms.Form):
    """The account page's picture upload: one image file, at most ``AVATAR_MAX_BYTES``.

    Only the size is checked here; ``users.services.user_avatar_set`` decides whether
    it is an image Hearth takes (its ``AccountError`` is shown on the form).
    """

    avatar = forms.FileField(
        label="New picture",
        help_text="A JPEG, PNG, WebP or GIF of up to 5 MB. It is cropped to a square from "
        "the middle; only you and your friends see it.",
        widget=forms.FileInput(attrs={"accept": ", ".join(AVATAR_ACCEPT)}),
    )

    def clean_avatar(self) -> UploadedFile:
        """The upload, refused when it is over ``AVATAR_MAX_BYTES``."""
        upload: UploadedFile = self.cleaned_data["avatar"]
        if upload.size is not None and upload.size > AVATAR_MAX_BYTES:
            raise forms.ValidationError(
                f"That file is too big (at most {AVATAR_MAX_BYTES // (1024 * 1024)} MB).",
                code="too_big",
            )
        return upload


class AccountDeleteForm(forms.Form):
    """The delete-account confirmation: the user's current password, typed again."""

    password = forms.CharField(
        label="Your password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
        help_text="Type it to confirm. This cannot be undone.",
    )
