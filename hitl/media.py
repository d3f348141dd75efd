"""Files under MEDIA_ROOT: item images (content-addressed or referenced under the storage root)
and model artifacts. Paths stored in the database are relative to MEDIA_ROOT."""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404
from PIL import Image

from hitl.files import atomic_write

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
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
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
        raise ImageRejected(
            f"image is corrupt or not in an accepted format ({', '.join(ALLOWED_FORMATS)}): {type(exc).__name__}: {exc}"
        ) from None
    return ImageInfo(format=fmt, width=width, height=height)


class StorageReader:
    """Reads image files under the storage root, refusing any path that escapes it.

    Each distinct directory is resolved (symlinks included) once per reader, and the file itself
    is opened with O_NOFOLLOW, so a symlink can point nowhere outside the root. A reader lives for
    one request: resolving per directory, not per file, is what keeps bulk ingestion fast.
    """

    def __init__(self) -> None:
        self.root = os.path.realpath(settings.STORAGE_ROOT)
        self.media_root = os.path.realpath(settings.MEDIA_ROOT)
        self._directories: dict[str, str] = {}

    def _directory(self, directory: str) -> str:
        resolved = self._directories.get(directory)
        if resolved is None:
            resolved = os.path.realpath(os.path.join(self.root, directory))
            self._directories[directory] = resolved
        return resolved

    def read(self, user_path: str) -> tuple[bytes, str]:
        """The file's bytes and its path relative to MEDIA_ROOT."""
        if not user_path or "\x00" in user_path:
            raise ImageRejected("path is empty or contains a NUL byte")
        if os.path.isabs(user_path):
            raise ImageRejected("path must be relative to the storage root, not absolute")
        directory, name = os.path.split(user_path)
        resolved_dir = self._directory(directory)
        if name in ("", ".", "..") or not (resolved_dir == self.root or resolved_dir.startswith(self.root + os.sep)):
            raise ImageRejected("path leaves the storage root")
        path = os.path.join(resolved_dir, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ImageRejected(f"no file at {user_path!r} under the storage root") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ImageRejected("path is a symbolic link; give the file itself") from None
            raise ImageRejected(f"cannot read {user_path!r}: {exc.strerror}") from None
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise ImageRejected(f"{user_path!r} is not a regular file (a directory?)")
            if status.st_size > settings.HITL_MAX_IMAGE_BYTES:
                raise ImageRejected(f"image is {status.st_size} bytes, more than the limit of {settings.HITL_MAX_IMAGE_BYTES}")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read()
        finally:
            os.close(fd)
        return data, os.path.relpath(path, self.media_root)


def content_addressed_path(sha256: str, fmt: str) -> str:
    return f"items/{sha256[:2]}/{sha256}.{ALLOWED_FORMATS[fmt]}"


def write_once(relative: str, data: bytes) -> None:
    """Write ``data`` to MEDIA_ROOT/relative unless it exists (the name is the content's hash)."""
    target = media_path(relative)
    if not target.exists():
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))


def model_directory(project_slug: str, version_name: str) -> str:
    return f"models/{project_slug}/{version_name}"


def image_response(item: object) -> FileResponse:
    """The item's image file, or a 404 when it is gone from storage."""
    try:
        return FileResponse(open(media_path(item.image), "rb"))
    except FileNotFoundError:
        raise Http404(f"the image of item {item.pk} is missing from storage") from None
