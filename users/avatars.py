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


ORIENTATION_TAG = 0x0112
"""EXIF ``Orientation`` (TIFF/EXIF 2.32, tag 274): how the stored pixels must be turned
to show upright."""

_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""The turn for each ``Orientation`` value other than 1 (upright), as EXIF defines them
and ``PIL.ImageOps.exif_transpose`` applies them; done here on the reduced image,
after the conversions that do not keep EXIF."""


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
    when they are much larger than needed); bin large images down by a whole factor
    while they stay over twice :data:`AVATAR_SIZE`; turn the image upright by its EXIF
    ``Orientation`` tag; centre-crop to a square and resize to
    :data:`AVATAR_SIZE` px (Lanczos); copy the bare pixels into a new image, so no
    metadata (EXIF, GPS, ICC profile, XMP, comments) survives; encode as WebP
    (quality :data:`AVATAR_WEBP_QUALITY`; RGBA when the upload had transparency, else
    RGB).

    Blocking CPU work: about 0.15 s for a 12 MP JPEG, 0.5 s for a 40 MP PNG (its
    decoding) on the 2-core test machine.

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
        orientation = image.getexif().get(ORIENTATION_TAG, 1)  # before conversions drop it
        has_alpha = image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info
        )
        mode = "RGBA" if has_alpha else "RGB"
        if image.mode != mode:
            image = image.convert(mode)
        # Bin whole blocks of pixels first (cheap), keeping at least twice the final
        # size for Lanczos to work on: a 40 MP canvas then costs its decoding and
        # little more (Lanczos over the full image took most of a second).
        factor = min(image.size) // (2 * AVATAR_SIZE)
        if factor >= 2:
            image = image.reduce(factor)
        turn = _ORIENTATION_TRANSPOSE.get(orientation)
        if turn is not None:
            image = image.transpose(turn)
        square = ImageOps.fit(image, (AVATAR_SIZE, AVATAR_SIZE), Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError) as exc:  # truncated data found while decoding
        raise AvatarImageError("That image is damaged or incomplete. Try another file.") from exc
    clean = Image.frombytes(mode, square.size, square.tobytes())  # pixels only, empty info
    out = io.BytesIO()
    clean.save(out, format="WEBP", quality=AVATAR_WEBP_QUALITY, method=4)
    return out.getvalue()
