"""Avatars: the Pillow pipeline (users.avatars), the services that store and remove
them, the image endpoint's authorisation (the recordings' rule), the account page's
upload and remove forms, and where the API hands out avatar URLs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image, PngImagePlugin

from tests.factories import Inbox, befriend, make_user
from users import services
from users.avatars import (
    AVATAR_MAX_BYTES,
    AVATAR_SIZE,
    AvatarImageError,
    avatar_image_process,
)
from users.events import user_group
from users.models import Block, FriendRequest, Friendship, User
from users.selectors import user_avatar_url

pytestmark = pytest.mark.django_db

RED, BLUE = (220, 20, 20), (20, 20, 220)


# --- Test images -------------------------------------------------------------------


def halves_jpeg(*, orientation: int | None = None, gps: bool = False) -> bytes:
    """A 600 x 300 JPEG, top half red and bottom half blue, with EXIF tags."""
    image = Image.new("RGB", (600, 300), BLUE)
    image.paste(RED, (0, 0, 600, 150))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Model X"  # Model
    if orientation is not None:
        exif[0x0112] = orientation
    if gps:
        exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)}
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()


def png_bytes(image: Image.Image, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **params)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG (checksums right) that declares ``width`` x ``height`` pixels and
    holds a few bytes of data: the shape of a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def near(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(pixel[:3], colour, strict=True))


# --- The pipeline ------------------------------------------------------------------


def test_output_is_a_256_px_webp_without_metadata():
    out = avatar_image_process(halves_jpeg(gps=True))
    image = decoded(out)
    assert image.format == "WEBP" and image.size == (AVATAR_SIZE, AVATAR_SIZE)
    assert image.mode == "RGB"
    assert not image.getexif()
    assert not {"exif", "icc_profile", "xmp"} & set(image.info)
    assert b"PhoneMaker" not in out and b"Exif" not in out


def test_exif_orientation_is_applied_before_the_crop():
    # Orientation 6: "rotate 90° clockwise to display", so the stored top (red)
    # shows on the right and the bottom (blue) on the left.
    upright = decoded(avatar_image_process(halves_jpeg(orientation=6)))
    assert near(upright.getpixel((20, 20)), BLUE) and near(upright.getpixel((235, 235)), RED)
    # Without the tag the same pixels stay where they are stored.
    plain = decoded(avatar_image_process(halves_jpeg()))
    assert near(plain.getpixel((20, 20)), RED) and near(plain.getpixel((235, 235)), BLUE)


def test_wide_image_is_centre_cropped():
    image = Image.new("RGB", (900, 300), RED)
    image.paste(BLUE, (300, 0, 600, 300))  # the middle third
    out = decoded(avatar_image_process(png_bytes(image)))
    assert near(out.getpixel((5, 128)), BLUE) and near(out.getpixel((250, 128)), BLUE)


def test_png_text_and_icc_profile_are_dropped_and_transparency_kept():
    image = Image.new("RGBA", (40, 80), (0, 0, 0, 0))
    image.paste((200, 100, 0, 255), (0, 0, 40, 40))
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "secret-location")
    data = png_bytes(image, pnginfo=text, icc_profile=b"not-really-a-profile" * 8)
    out = avatar_image_process(data)
    small = decoded(out)
    assert small.size == (AVATAR_SIZE, AVATAR_SIZE) and small.mode == "RGBA"
    assert small.getpixel((128, 250))[3] == 0  # the transparent bottom stays so
    assert b"secret-location" not in out and "icc_profile" not in small.info


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (64, 64), colour) for colour in (RED, BLUE)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    image = decoded(avatar_image_process(out.getvalue()))
    assert near(image.getpixel((128, 128)), RED)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, this is text", "not a picture"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', "not a picture"),
        (b"", "empty"),
        (halves_jpeg()[:400], "damaged or incomplete"),
        (png_header_only(10_000, 5_000), "too large in pixels"),  # 50 MP: our limit
        (png_header_only(20_000, 20_000), "too large in pixels"),  # Pillow's bomb error
        (b"\x00" * (AVATAR_MAX_BYTES + 1), "too big"),
    ],
    ids=["text", "svg", "empty", "truncated", "50mp", "400mp", "over-5mb"],
)
def test_refusals_have_clear_messages(data, message):
    with pytest.raises(AvatarImageError, match=message):
        avatar_image_process(data)


def test_other_image_formats_are_refused():
    out = io.BytesIO()
    Image.new("RGB", (32, 32), RED).save(out, format="BMP")
    with pytest.raises(AvatarImageError, match="JPEG, PNG, WebP or GIF"):
        avatar_image_process(out.getvalue())


# --- Services ------------------------------------------------------------------------


def media(name: str) -> Path:
    return Path(settings.MEDIA_ROOT) / name


def test_avatar_set_stores_a_content_hashed_file_and_replaces_the_old_one(
    alice, bob, layer, django_capture_on_commit_callbacks
):
    befriend(alice, bob)
    inbox = Inbox(layer, user_group(alice.id), user_group(bob.id))
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_set(user=alice, image=halves_jpeg())
    first = User.objects.get(id=alice.id).avatar.name
    assert first.startswith("avatars/") and first.endswith(".webp") and len(first) == 45
    assert decoded(media(first).read_bytes()).size == (256, 256)
    assert alice.avatar.name == first
    assert [event for event, _ in inbox.events()] == ["friends.changed", "friends.changed"]
    # The same picture again: the same name, the file kept.
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_set(user=alice, image=halves_jpeg())
    assert media(first).is_file() and inbox.events() == []
    # A new picture: a new name; the old file goes once the change commits.
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_set(user=alice, image=halves_jpeg(orientation=3))
    second = User.objects.get(id=alice.id).avatar.name
    assert second != first and media(second).is_file() and not media(first).exists()
    assert [name for name in media("avatars").iterdir()] == [media(second)]  # no temp left


def test_two_users_with_the_same_picture_get_files_of_their_own(
    alice, bob, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_set(user=alice, image=halves_jpeg())
        services.user_avatar_set(user=bob, image=halves_jpeg())
        services.user_avatar_clear(user=bob)
    assert media(User.objects.get(id=alice.id).avatar.name).is_file()


def test_refused_upload_changes_nothing(alice, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_set(user=alice, image=halves_jpeg())
    before = User.objects.get(id=alice.id).avatar.name
    with pytest.raises(services.AccountError, match="not a picture"):
        services.user_avatar_set(user=alice, image=b"GIF89a but not really")
    assert User.objects.get(id=alice.id).avatar.name == before
    assert [p.name for p in media("avatars").iterdir()] == [Path(before).name]


def test_avatar_clear_removes_the_file(alice, bob, layer, django_capture_on_commit_callbacks):
    befriend(alice, bob)
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_set(user=alice, image=halves_jpeg())
    name = alice.avatar.name
    inbox = Inbox(layer, user_group(bob.id))
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_clear(user=alice)
    assert User.objects.get(id=alice.id).avatar.name == "" and alice.avatar.name == ""
    assert not media(name).exists()
    assert [event for event, _ in inbox.events()] == ["friends.changed"]
    # Clearing none is a no-op, with no event.
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_clear(user=alice)
    assert inbox.events() == []


# --- The image endpoint: who may fetch it --------------------------------------------


@pytest.fixture
def pictured(alice, django_capture_on_commit_callbacks) -> str:
    """Alice with an avatar; returns its URL."""
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_set(user=alice, image=halves_jpeg())
    return user_avatar_url(user=alice)


def client_of(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_avatar_endpoint_authorisation_matrix(pictured, alice, bob, carol):
    befriend(alice, bob)
    dave, erin = make_user("dave"), make_user("erin")
    befriend(alice, dave)
    services.block_create(user=dave, blocked_id=alice.id)  # ends the friendship
    FriendRequest.objects.create(from_user=erin, to_user=alice)  # asked, not a friend
    expected = {alice: 200, bob: 200, carol: 404, dave: 404, erin: 404}
    got = {user: client_of(user).get(pictured).status_code for user in expected}
    assert got == expected
    assert Client().get(pictured).status_code == 401
    # A friendship row beside a block (never made by the services) still gets 404.
    Friendship.objects.create(
        user_low=min(alice, carol, key=lambda u: u.id),
        user_high=max(alice, carol, key=lambda u: u.id),
    )
    Block.objects.create(blocker=alice, blocked=carol)
    assert client_of(carol).get(pictured).status_code == 404
    # An inactive account's picture is nobody's to see.
    User.objects.filter(id=alice.id).update(is_active=False)
    assert client_of(bob).get(pictured).status_code == 404


def test_avatar_response_and_caching(pictured, alice, bob):
    befriend(alice, bob)
    client = client_of(bob)
    response = client.get(pictured)
    assert response.status_code == 200 and response["Content-Type"] == "image/webp"
    assert decoded(response.content).size == (256, 256)
    digest = pictured.rsplit("/", 1)[1].removesuffix(".webp")
    assert response["ETag"] == f'"{digest}"'
    assert response["Cache-Control"] == "private, max-age=86400, immutable"
    again = client.get(pictured, headers={"If-None-Match": f'"{digest}"'})
    assert again.status_code == 304 and again.content == b""
    assert client.post(pictured).status_code == 405
    head = client.head(pictured)
    assert head.status_code == 200 and head.content == b""


def test_old_or_unknown_avatar_urls_are_404_like_strangers(
    pictured, alice, bob, django_capture_on_commit_callbacks
):
    befriend(alice, bob)
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_set(user=alice, image=halves_jpeg(orientation=8))
    client = client_of(bob)
    gone = client.get(pictured)
    assert gone.status_code == 404 and gone.json() == {"error": "No such avatar."}
    assert client.get(user_avatar_url(user=alice)).status_code == 200
    assert client.get(f"/avatars/{bob.id}/{'0' * 32}.webp").status_code == 404  # has none
    assert client.get(f"/avatars/999999/{'0' * 32}.webp").status_code == 404  # no such user


# --- The account page's forms ---------------------------------------------------------


def upload(name: str, data: bytes, content_type: str = "image/jpeg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


@pytest.fixture
def static_storage(settings) -> None:
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def test_account_page_uploads_and_removes_the_picture(
    alice, static_storage, django_capture_on_commit_callbacks
):
    client = client_of(alice)
    page = client.get("/account/").content.decode()
    assert 'id="avatar-form"' in page and 'enctype="multipart/form-data"' in page
    assert 'id="avatar-current" aria-hidden="true" data-initials="A"' in page
    response = client.post("/account/avatar/", {"avatar": upload("me.jpg", halves_jpeg())})
    assert response.status_code == 302 and response["Location"] == "/account/"
    alice.refresh_from_db()
    url = user_avatar_url(user=alice)
    page = client.get("/account/").content.decode()
    assert f'src="{url}" alt="Your picture"' in page and "Picture saved." in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/account/avatar/remove/")
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.avatar.name == "" and not list(media("avatars").iterdir())
    assert client.get("/account/avatar/remove/").status_code == 405


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"%PDF-1.4 not an image", "not a picture Hearth can use"),
        (b"\xff" * (AVATAR_MAX_BYTES + 1), "too big (at most 5 MB)"),
    ],
)
def test_refused_upload_shows_the_reason_on_the_form(alice, static_storage, data, message):
    response = client_of(alice).post("/account/avatar/", {"avatar": upload("x.jpg", data)})
    assert response.status_code == 200
    html = response.content.decode()
    assert message in html and 'aria-invalid="true"' in html
    assert User.objects.get(id=alice.id).avatar.name == ""


def test_upload_without_a_file_is_refused(alice, static_storage):
    response = client_of(alice).post("/account/avatar/", {})
    assert response.status_code == 200 and b"This field is required." in response.content


# --- Who gets avatar URLs from the API ------------------------------------------------


def test_api_gives_avatar_urls_to_friends_only(
    alice, bob, carol, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        for user in (bob, carol):
            services.user_avatar_set(user=user, image=halves_jpeg())
    befriend(alice, bob)
    FriendRequest.objects.create(from_user=carol, to_user=alice)
    client = client_of(alice)
    friends = client.get("/api/friends").json()
    assert friends["friends"][0]["avatar_url"] == user_avatar_url(user=bob)
    assert friends["incoming"][0]["user"]["avatar_url"] is None  # carol: not a friend yet
    bob_found = client.get("/api/users/search", {"q": "bob"}).json()["users"]
    carol_found = client.get("/api/users/search", {"q": "carol"}).json()["users"]
    assert bob_found[0]["avatar_url"] == user_avatar_url(user=bob)
    assert carol_found[0]["avatar_url"] is None


def test_live_event_and_live_list_carry_the_broadcasters_avatar(
    alice, bob, layer, django_capture_on_commit_callbacks
):
    from streams.services import live_session_start

    befriend(alice, bob)
    with django_capture_on_commit_callbacks(execute=True):
        services.user_avatar_set(user=alice, image=halves_jpeg())
    inbox = Inbox(layer, user_group(bob.id))
    with django_capture_on_commit_callbacks(execute=True):
        live_session_start(broadcaster=alice, denoise=False, owner_channel="w")
    [(event, data)] = inbox.events()
    assert event == "live" and data["avatar_url"] == user_avatar_url(user=alice)
    [session] = client_of(bob).get("/api/live").json()["sessions"]
    assert session["broadcaster"]["avatar_url"] == user_avatar_url(user=alice)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Alice Liddell", "AL"), ("bob_smith", "BS"), ("carol", "C"), ("émile zola", "ÉZ"), ("", "?")],
)
def test_initials_stand_in_for_a_missing_picture(name, expected):
    from frontend.views import initials

    assert initials(name) == expected


def test_uploads_are_rate_limited_per_user(alice, bob, static_storage, settings):
    settings.HEARTH = {**settings.HEARTH, "AVATAR_UPLOAD_RATE": "2/h"}
    client = client_of(alice)
    for _ in range(2):
        response = client.post("/account/avatar/", {"avatar": upload("x.jpg", halves_jpeg())})
        assert response.status_code == 302
    refused = client.post("/account/avatar/", {"avatar": upload("x.jpg", halves_jpeg())})
    assert refused.status_code == 429 and b"Too many new pictures" in refused.content
    other = client_of(bob).post("/account/avatar/", {"avatar": upload("x.jpg", halves_jpeg())})
    assert other.status_code == 302  # counted per user
