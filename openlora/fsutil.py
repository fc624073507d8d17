"""File writes that a crash cannot leave half done, for every package of the project (standard library only).

What it does: `atomic_write(path, data, mode=...)` writes to a temporary file in the same directory (created with
the final mode from the start, so a secret is never readable by others even for a moment), fsyncs it, renames it
over `path` (a reader sees the old file or the new one, never a mix) and fsyncs the directory so the rename itself
survives a power cut. `atomic_writer(path)` is the same for data written in pieces (a context manager yielding a
binary file object).
What it does not do: lock against concurrent writers (the last rename wins), or follow a symlink at `path` (the
rename replaces the link itself).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file; on a clean exit it replaces `path` durably, on an exception nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` with `data` (str is written as UTF-8), durably and all at once."""
    with atomic_writer(path, mode) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
