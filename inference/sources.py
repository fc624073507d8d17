"""Where adapter files come from: the pluggable source interface of the adapter manager's lowest tier.

What it does: defines `AdapterSource`, the one method a source implements (make an adapter directory available on
local disk), and `LocalDirSource`, which serves adapters already on disk. The IPFS/p2p fetchers in node/ implement
the same protocol and are handed to the engine by node's wiring; the engine never imports them.
Directories are read without following symbolic links: `check_adapter_dir` refuses an adapter directory that is
itself a symlink and adapter files that are symlinks or not regular files (FIFOs, devices, sockets), and
`copy_adapter_files` copies through O_NOFOLLOW descriptors checked by fstat (what is checked is what is copied).
What it does not do: validate adapters (the adapter loader does, before anything reaches memory).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Protocol, runtime_checkable


class AdapterSourceError(Exception):
    """A source could not provide the adapter; the message says which adapter and why."""


@runtime_checkable
class AdapterSource(Protocol):
    name: str

    def fetch(self, ref: str) -> Path:
        """Return a local directory holding the adapter `ref` (a CID, or a name the source knows).

        Blocking; called from a loader thread, never from the engine loop. Raises AdapterSourceError.
        The directory holds adapter_config.json and adapter_model.safetensors (and, from IPFS, manifest.json).
        """
        ...


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "manifest.json")
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, _NOFOLLOW | os.O_DIRECTORY)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):   # Linux says ENOTDIR for a symlink
            raise AdapterSourceError(f"adapter directory {path} is a symbolic link; give the real directory") from None
        if e.errno == errno.ENOTDIR:
            raise AdapterSourceError(f"adapter directory {path} is not a directory") from None
        raise AdapterSourceError(f"adapter directory {path}: {e.strerror}") from None


def _check_entries(dir_fd: int, path: Path) -> list[str]:
    """The adapter files present in the directory `dir_fd`; raises if one is a symlink or not a regular file."""
    present = []
    for name in ADAPTER_FILES:
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise AdapterSourceError(f"{path / name} is a symbolic link; adapter files are read only from regular "
                                     f"files (copy the file instead)")
        if not stat.S_ISREG(mode):
            raise AdapterSourceError(f"{path / name} is not a regular file (FIFOs, devices and sockets are refused)")
        present.append(name)
    return present


def check_adapter_dir(path: Path) -> list[str]:
    """Refuse an adapter directory that is a symlink, or whose adapter files are symlinks or not regular files.
    Returns the adapter files present."""
    dir_fd = _open_dir(Path(path))
    try:
        return _check_entries(dir_fd, Path(path))
    finally:
        os.close(dir_fd)


def copy_adapter_files(src: Path, dest: Path) -> None:
    """Copy the adapter files of `src` into the existing directory `dest`, each opened O_NOFOLLOW through the
    descriptor of `src` (itself opened O_NOFOLLOW) and checked regular by fstat on the descriptor it is read from."""
    src = Path(src)
    dir_fd = _open_dir(src)
    try:
        for name in _check_entries(dir_fd, src):
            try:
                fd = os.open(name, _NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError as e:       # replaced by a symlink (ELOOP) or removed since the check
                raise AdapterSourceError(f"{src / name}: {e.strerror}") from None
            with open(fd, "rb", buffering=0) as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise AdapterSourceError(f"{src / name} is not a regular file")
                os.set_blocking(fd, True)
                with open(dest / name, "xb") as out:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
    finally:
        os.close(dir_fd)


class LocalDirSource:
    """Adapters that are plain directories: `ref` is a path, or a name under `root`."""

    name = "local"

    def __init__(self, root: Path | None = None):
        self.root = root

    def fetch(self, ref: str) -> Path:
        path = Path(ref)
        if not path.is_absolute() and self.root is not None:
            path = self.root / ref
        if not os.path.lexists(path) or "adapter_config.json" not in check_adapter_dir(path):
            raise AdapterSourceError(f"adapter {ref!r}: no adapter_config.json in {path}")
        return path
