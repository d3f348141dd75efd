"""Files under MEDIA_ROOT: item images and model artifacts. Paths stored in the database are
relative to MEDIA_ROOT.

Every item image lives in the content-addressed store ``MEDIA_ROOT/items/ab/<sha256>.<ext>``:
images referenced by path under the storage root are copied in at ingestion, so a file swapped
on the storage volume afterwards changes nothing hitl serves or trains on, and an item's hash
stays true. Every image read, at ingestion and afterwards, goes through ``read_beneath``."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from PIL import Image

from hitl.files import atomic_write

ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
                 "BMP": "image/bmp", "TIFF": "image/tiff"}
STORE_FOLDER = "items"
MODELS_FOLDER = "models"


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
    """Check that ``data`` is a complete image of an allowed format, area and frame count.

    Only headers are read to size the image and count its frames (up to the limit), so a small
    file that declares a huge area or thousands of frames is refused before anything is decoded.
    """
    if len(data) > settings.HITL_MAX_IMAGE_BYTES:
        raise ImageRejected(f"image is {len(data)} bytes, more than the limit of {settings.HITL_MAX_IMAGE_BYTES}")
    if not data:
        raise ImageRejected("image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as image:
                fmt = image.format
                width, height = image.size
                if fmt not in ALLOWED_FORMATS:
                    raise ImageRejected(f"image format {fmt} is not accepted; use one of {', '.join(ALLOWED_FORMATS)}")
                _check_area(width, height)
                _check_frames(image)
            with Image.open(io.BytesIO(data), formats=[fmt]) as image:
                image.verify()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("image is too large to decode safely") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise ImageRejected(
            f"image is corrupt or not in an accepted format ({', '.join(ALLOWED_FORMATS)}): {type(exc).__name__}: {exc}"
        ) from None
    return ImageInfo(format=fmt, width=width, height=height)


def _check_area(width: int, height: int) -> None:
    if width * height > settings.HITL_MAX_IMAGE_PIXELS:
        raise ImageRejected(
            f"image is {width}x{height} pixels, more than the limit of {settings.HITL_MAX_IMAGE_PIXELS}"
        )


def _check_frames(image: Image.Image) -> None:
    """Refuse more than HITL_MAX_IMAGE_FRAMES frames, seeking no further than one past the limit."""
    limit = settings.HITL_MAX_IMAGE_FRAMES
    for frame in range(1, limit + 1):
        try:
            image.seek(frame)
        except EOFError:
            return
        _check_area(*image.size)  # a later frame may declare a larger area than the first
    raise ImageRejected(
        f"image has more than {limit} frame{'s' if limit > 1 else ''} (animated or multi-page); "
        f"send {'a single frame' if limit == 1 else f'at most {limit} frames'}"
    )


def _no_follow_fd(root: str | os.PathLike, relative: str) -> int:
    """Open ``root/relative`` for reading without following a symbolic link in any component of
    ``relative`` (each folder is opened with O_NOFOLLOW relative to the one above it), and with
    O_NONBLOCK so a FIFO or device answers at once instead of blocking. ``relative`` must already
    be normalised. Raises ImageRejected for a link, FileNotFoundError for a missing file."""
    parts = relative.split("/")
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=directory)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ImageRejected(
                        f"{part!r} on the path is a symbolic link or not a folder"
                    ) from None
                raise
            os.close(directory)
            directory = inner
        try:
            return os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ImageRejected("path is a symbolic link; give the file itself") from None
            raise
    finally:
        os.close(directory)


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def read_beneath(root: str | os.PathLike, relative: str) -> bytes:
    """The bytes of the regular file ``root/relative``: the one way hitl reads an image file.

    No symbolic link anywhere below ``root``, never a FIFO, device, socket or folder, at most
    HITL_MAX_IMAGE_BYTES. ``relative`` must be normalised (see ``storage_relative``).
    """
    fd = _no_follow_fd(root, relative)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ImageRejected("not a regular file (a folder, FIFO, device or socket)")
        limit = settings.HITL_MAX_IMAGE_BYTES
        if status.st_size > limit:
            raise ImageRejected(f"image is {status.st_size} bytes, more than the limit of {limit}")
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):  # the file may grow meanwhile
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ImageRejected(f"image is more than the limit of {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_beneath(root: str | os.PathLike, relative: str) -> BinaryIO:
    """The regular file ``root/relative`` opened for reading, with the checks of ``read_beneath``
    (no symbolic link below ``root``, never a FIFO, device, socket or folder) and no size limit:
    for model artifacts, which are streamed. ``relative`` must be normalised."""
    fd = _no_follow_fd(root, relative)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageRejected("not a regular file (a folder, FIFO, device or socket)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def model_artifact_file(relative: str) -> BinaryIO:
    """A model artifact (``ModelArtifact.path``), opened only inside MEDIA_ROOT/models through
    ``open_beneath``. Raises ImageRejected for a path outside that folder or unsafe to read,
    FileNotFoundError for a file that is gone."""
    normalised = posixpath.normpath(relative) if relative else ""
    if normalised != relative or not relative.startswith(MODELS_FOLDER + "/"):
        raise ImageRejected(f"model artifact path {relative!r} lies outside {MODELS_FOLDER}/")
    return open_beneath(settings.MEDIA_ROOT, relative)


def storage_relative(user_path: str) -> str:
    """A user's path under the storage root, normalised; ImageRejected if it leaves the root."""
    if not user_path or "\x00" in user_path:
        raise ImageRejected("path is empty or contains a NUL byte")
    try:
        user_path.encode()
    except UnicodeEncodeError:
        raise ImageRejected("path is not valid text (a lone surrogate?)") from None
    if user_path.startswith("/"):
        raise ImageRejected("path must be relative to the storage root, not absolute")
    relative = posixpath.normpath(user_path)
    if relative in (".", "..") or relative.startswith("../"):
        raise ImageRejected("path leaves the storage root")
    return relative


def validate_storage_prefix(prefix: str) -> None:
    """A deployment's storage prefix: a normalised relative folder under the storage root."""
    try:
        relative = storage_relative(prefix)
    except ImageRejected as exc:
        raise ValidationError(f"storage prefix: {exc}") from None
    if relative != prefix.rstrip("/"):
        raise ValidationError(f"storage prefix must be written plainly, e.g. {relative!r}")


class StorageReader:
    """Reads image files under the storage root (or under a deployment's prefix of it).

    Every component below the root is opened without following symbolic links, so nothing outside
    the root can be read, and a FIFO or device is refused without blocking (``read_beneath``).
    """

    def __init__(self, prefix: str | None = None) -> None:
        """``prefix``: a deployment's storage prefix; None (operators' paths) for the whole root."""
        self.root = settings.STORAGE_ROOT
        self.prefix = None if prefix is None else prefix.strip("/")

    def read(self, user_path: str) -> bytes:
        relative = storage_relative(user_path)
        if self.prefix == "":
            raise ImageRejected("this deployment has no storage prefix: an operator must set one")
        if self.prefix is not None and not (relative == self.prefix or relative.startswith(self.prefix + "/")):
            raise ImageRejected(
                f"path must lie under this deployment's storage prefix {self.prefix + '/'!r}"
            )
        try:
            return read_beneath(self.root, relative)
        except FileNotFoundError:
            raise ImageRejected(f"no file at {user_path!r} under the storage root") from None
        except ImageRejected as exc:
            raise ImageRejected(f"{user_path!r}: {exc}") from None
        except OSError as exc:
            raise ImageRejected(f"cannot read {user_path!r}: {exc.strerror}") from None


def content_addressed_path(sha256: str, fmt: str) -> str:
    return f"{STORE_FOLDER}/{sha256[:2]}/{sha256}.{ALLOWED_FORMATS[fmt]}"


def write_once(relative: str, data: bytes) -> None:
    """Write ``data`` to MEDIA_ROOT/relative unless it exists (the name is the content's hash)."""
    target = media_path(relative)
    if not target.exists():
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))


def item_image_bytes(relative: str) -> bytes:
    """An item's stored image (``Item.image``): read only inside the content store, through
    ``read_beneath``. Raises ImageRejected for an image outside the store or unsafe to read,
    FileNotFoundError for one that is gone."""
    normalised = posixpath.normpath(relative) if relative else ""
    if normalised != relative or not relative.startswith(STORE_FOLDER + "/"):
        raise ImageRejected(
            f"stored image path {relative!r} lies outside the content store {STORE_FOLDER}/ "
            "(an image migration 0004 could not copy: see its record under MEDIA_ROOT)"
        )
    return read_beneath(settings.MEDIA_ROOT, relative)


def model_directory(project_slug: str, version_name: str) -> str:
    return f"{MODELS_FOLDER}/{project_slug}/{version_name}"


def image_response(request: HttpRequest, item: Any) -> HttpResponse:
    """The item's image as hitl decoded it: Content-Type from its format (never a file name),
    sandboxed, cross-origin readable only by the listed origins (``_image_cors_origins``). A 404
    when the stored file is gone, unsafe, or no longer matches the item's hash."""
    try:
        data = item_image_bytes(item.image)
    except (ImageRejected, OSError) as exc:
        reason = "it is missing from storage" if isinstance(exc, FileNotFoundError) else str(exc)
        detail = f"the image of item {item.pk} cannot be served: {reason}"
        return JsonResponse({"detail": detail}, status=404)
    if hashlib.sha256(data).hexdigest() != item.sha256:
        return JsonResponse(
            {"detail": f"the image of item {item.pk} in storage no longer matches its sha256"}, status=404
        )
    response = HttpResponse(data, content_type=CONTENT_TYPES[item.format])
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["X-Content-Type-Options"] = "nosniff"
    name = f"item-{item.pk}.{ALLOWED_FORMATS[item.format]}"
    response["Content-Disposition"] = f'inline; filename="{name}"'
    origin = request.headers.get("Origin")
    if origin and origin in _image_cors_origins():
        response["Access-Control-Allow-Origin"] = origin
    response["Vary"] = "Origin"
    return response


def _image_cors_origins() -> set[str]:
    """HITL_IMAGE_CORS_ORIGINS, and the connected Label Studio's origin: its UI fetches the
    signed image URLs from script (CORS) to show them."""
    origins = set(settings.HITL_IMAGE_CORS_ORIGINS)
    if settings.LABEL_STUDIO_URL:
        parts = urlsplit(settings.LABEL_STUDIO_URL)
        origins.add(f"{parts.scheme}://{parts.netloc}")
    return origins
