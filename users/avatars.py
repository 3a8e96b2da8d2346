"""Avatar images: check an upload with Pillow and turn it into a small, clean WebP.

Pure image work (no Django): :func:`avatar_image_process` takes the uploaded bytes
and returns the bytes to store, or raises :class:`AvatarImageError` with a message
fit to show on the account page's form.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

AVATAR_SIZE = 256
"""Stored avatars are ``AVATAR_SIZE`` x ``AVATAR_SIZE`` pixels (shown at 2-3 rem, so
sharp on 2x screens)."""

AVATAR_MAX_BYTES = 5 * 1024 * 1024
"""Largest upload accepted, in bytes (5 MiB: a phone photo fits)."""

AVATAR_MAX_PIXELS = 40_000_000
"""Most pixels (width x height) an upload may declare. A decompression bomb is a small
file that declares a huge canvas (a 5 MB PNG can say 50 000 x 50 000); refusing it on
its header, before any pixel is decoded, bounds memory (40 MP RGBA is 160 MB) and
CPU. 40 MP covers phone and camera photos; Pillow's own guard
(``Image.MAX_IMAGE_PIXELS``, 89 MP) is looser and only warns below twice that."""

AVATAR_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
"""Formats Pillow may read an upload as; anything else (SVG, TIFF, PSD, BMP, ...) is
refused. An animated GIF or WebP gives its first frame."""

AVATAR_WEBP_QUALITY = 85
"""Lossy WebP quality of the stored avatar (a 256 px photo is about 10-20 kB)."""


class AvatarImageError(ValueError):
    """The upload is not an image Hearth takes; ``str(error)`` is user-facing."""


def _opened(data: bytes) -> Image.Image:
    """``data`` opened lazily by Pillow (header read, no pixels decoded yet).

    Raises:
        AvatarImageError: not a JPEG, PNG, WebP or GIF, or a damaged one.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between MAX_IMAGE_PIXELS and twice that.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data), formats=AVATAR_FORMATS)
            probe.verify()  # structure and checksums; the object is unusable after
            return Image.open(io.BytesIO(data), formats=AVATAR_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise AvatarImageError(_too_many_pixels_message()) from exc
    except UnidentifiedImageError as exc:
        raise AvatarImageError(
            "That file is not a picture Hearth can use. Upload a JPEG, PNG, WebP or GIF image."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt (Pillow's kinds)
        raise AvatarImageError("That image is damaged or incomplete. Try another file.") from exc


def _too_many_pixels_message() -> str:
    return (
        f"That image is too large in pixels (at most {AVATAR_MAX_PIXELS // 1_000_000} "
        "megapixels). Use a smaller picture."
    )


def avatar_image_process(data: bytes) -> bytes:
    """The stored avatar made from the uploaded file ``data``: WebP bytes.

    Steps: refuse over :data:`AVATAR_MAX_BYTES`, formats other than
    :data:`AVATAR_FORMATS`, damaged files and canvases over :data:`AVATAR_MAX_PIXELS`
    (checked on the header, before decoding); decode (JPEGs at a reduced DCT scale
    when they are much larger than needed); turn the image upright by its EXIF
    ``Orientation`` tag; centre-crop to a square and resize to
    :data:`AVATAR_SIZE` px (Lanczos); copy the bare pixels into a new image, so no
    metadata (EXIF, GPS, ICC profile, XMP, comments) survives; encode as WebP
    (quality :data:`AVATAR_WEBP_QUALITY`; RGBA when the upload had transparency, else
    RGB).

    Blocking CPU work (tens of milliseconds; a few hundred for a 40 MP PNG).

    Raises:
        AvatarImageError: any refusal above, with a user-facing message.
    """
    if len(data) > AVATAR_MAX_BYTES:
        raise AvatarImageError(
            f"That file is too big (at most {AVATAR_MAX_BYTES // (1024 * 1024)} MB)."
        )
    if not data:
        raise AvatarImageError("That file is empty.")
    image = _opened(data)
    width, height = image.size
    if width < 1 or height < 1 or width * height > AVATAR_MAX_PIXELS:
        raise AvatarImageError(_too_many_pixels_message())
    try:
        if image.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale when that still leaves AVATAR_SIZE px.
            image.draft("RGB", (AVATAR_SIZE, AVATAR_SIZE))
        image.seek(0)  # the first frame of an animation
        image.load()
        upright = ImageOps.exif_transpose(image)
        has_alpha = upright.mode in ("RGBA", "LA", "PA") or (
            upright.mode == "P" and "transparency" in upright.info
        )
        mode = "RGBA" if has_alpha else "RGB"
        square = ImageOps.fit(
            upright.convert(mode), (AVATAR_SIZE, AVATAR_SIZE), Image.Resampling.LANCZOS
        )
    except (OSError, SyntaxError, ValueError) as exc:  # truncated data found while decoding
        raise AvatarImageError("That image is damaged or incomplete. Try another file.") from exc
    clean = Image.frombytes(mode, square.size, square.tobytes())  # pixels only, empty info
    out = io.BytesIO()
    clean.save(out, format="WEBP", quality=AVATAR_WEBP_QUALITY, method=4)
    return out.getvalue()
