"""Files under MEDIA_ROOT: item images (content-addressed or referenced under the storage root)
and model artifacts. Paths stored in the database are relative to MEDIA_ROOT."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from PIL import Image

ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


class ImageRejected(ValueError):
    """The bytes are not an image hitl accepts; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def media_path(relative: str) -> Path:
    return Path(settings.MEDIA_ROOT) / relative


def inspect_image(data: bytes) -> ImageInfo:
    """Check that ``data`` is a complete image of an allowed format and size."""
    if len(data) > settings.HITL_MAX_IMAGE_BYTES:
        raise ImageRejected(f"image is {len(data)} bytes, more than the limit of {settings.HITL_MAX_IMAGE_BYTES}")
    if not data:
        raise ImageRejected("image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format
            width, height = image.size
            if fmt not in ALLOWED_FORMATS:
                raise ImageRejected(f"image format {fmt} is not accepted; use one of {', '.join(ALLOWED_FORMATS)}")
            if width * height > settings.HITL_MAX_IMAGE_PIXELS:
                raise ImageRejected(
                    f"image is {width}x{height} pixels, more than the limit of {settings.HITL_MAX_IMAGE_PIXELS}"
                )
            image.verify()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("image is too large to decode safely") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageRejected(f"image is corrupt or not an image ({type(exc).__name__}: {exc})") from None
    return ImageInfo(format=fmt, width=width, height=height)


def resolve_storage_path(user_path: str) -> Path:
    """The absolute file for a path under the storage root; refuses anything that escapes it."""
    if not user_path or "\x00" in user_path:
        raise ImageRejected("path is empty or contains a NUL byte")
    if os.path.isabs(user_path):
        raise ImageRejected("path must be relative to the storage root, not absolute")
    root = str(settings.STORAGE_ROOT)
    resolved = os.path.realpath(os.path.join(root, user_path))
    if not resolved.startswith(root + os.sep):
        raise ImageRejected("path leaves the storage root")
    return Path(resolved)


def read_storage_file(user_path: str) -> tuple[bytes, str]:
    """Bytes of a file under the storage root and its path relative to MEDIA_ROOT."""
    path = resolve_storage_path(user_path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > settings.HITL_MAX_IMAGE_BYTES:
                raise ImageRejected(f"image is {size} bytes, more than the limit of {settings.HITL_MAX_IMAGE_BYTES}")
            data = handle.read()
    except FileNotFoundError:
        raise ImageRejected(f"no file at {user_path!r} under the storage root") from None
    except IsADirectoryError:
        raise ImageRejected(f"{user_path!r} is a directory, not an image file") from None
    return data, os.path.relpath(path, settings.MEDIA_ROOT)


def content_addressed_path(sha256: str, fmt: str) -> str:
    return f"items/{sha256[:2]}/{sha256}.{ALLOWED_FORMATS[fmt]}"


def write_once(relative: str, data: bytes) -> None:
    """Write ``data`` to MEDIA_ROOT/relative unless it exists; write-then-rename, never half a file."""
    target = media_path(relative)
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_directory(project_slug: str, version_name: str) -> str:
    return f"models/{project_slug}/{version_name}"
