"""Files written whole or not at all, and their digests.

``workers.ml.files`` has the same two functions for the checkpoints it writes: ``workers.ml``
runs on machines without hitl, and hitl must not import it (it is the torch side), so each
side keeps its own copy of these few lines.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """Write through ``write(tmp_path)`` in the target's folder, then rename over the target, so a
    reader never sees half a file and a crash leaves no partial one behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600: give the file the usual mode
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # and the rename survives a power cut
    finally:
        os.close(directory)


def _read_umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()  # read once, at import: os.umask cannot be read without setting it


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
