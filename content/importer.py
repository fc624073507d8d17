"""The UnixFS importer: files and directories to blocks with the CIDs of `ipfs add --cid-version=1 --raw-leaves`.

What it does: chunks a file into fixed 256 KiB raw leaves and builds Kubo's balanced dag-pb layout (at most 174
links per node, built bottom-up as the data streams, so memory stays O(depth * 174) whatever the file size);
a one-chunk file is its own raw leaf (the empty file included). Directories become UnixFS directory nodes with
links sorted by name. Hidden names (starting with '.') are skipped as Kubo skips them without --hidden. Every
block is handed to a `sink(cid, bytes)` (a blockstore's put, or nothing when only the CID is wanted).
Reading the file system never follows a symbolic link: every entry is opened with O_NOFOLLOW relative to its
parent directory's descriptor and checked with fstat on that descriptor (what is checked is what is read), and
anything but a regular file or a directory (a symlink, FIFO, socket or device) is refused with its path.
What it does not do: mode/mtime metadata, symlinks (refused), HAMT-sharded directories (refused: Kubo shards a
directory whose node would pass 256 KiB, i.e. thousands of entries), or rabin/trickle chunkers.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Union

from openlora.content.cid import CID, DAG_PB, RAW
from openlora.content.errors import ContentError
from openlora.content.unixfs import Link, directory_node, file_node

Sink = Callable[[CID, bytes], None]
# A virtual directory: name -> a path on disk (file or directory), bytes, or a nested mapping.
TreeEntry = Union[Path, bytes, "Mapping[str, TreeEntry]"]

CHUNK_SIZE = 262144
MAX_LINKS = 174
_SHARD_THRESHOLD = 262144  # Kubo's HAMTShardingSize: a directory node bigger than this would be sharded


@dataclass(frozen=True)
class ImportParams:
    chunk_size: int = CHUNK_SIZE
    max_links: int = MAX_LINKS
    include_hidden: bool = False

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.max_links < 2:
            raise ValueError("chunk_size must be >= 1 and max_links >= 2")


@dataclass(frozen=True)
class Entry:
    """A built DAG: its root CID, cumulative block size (Tsize) and file size (0 for directories)."""
    cid: CID
    tsize: int
    filesize: int


def _discard(cid: CID, data: bytes) -> None:
    pass


class FileBuilder:
    """Streams chunks in with `add_chunk`, emits blocks to `sink` as soon as they are complete."""

    def __init__(self, sink: Sink | None = None, params: ImportParams = ImportParams()):
        self.sink = sink or _discard
        self.params = params
        self.levels: list[list[Entry]] = [[]]
        self.leaves = 0

    def add_chunk(self, chunk: bytes) -> None:
        cid = CID.of(RAW, chunk)
        self.sink(cid, chunk)
        self.leaves += 1
        self._push(0, Entry(cid, len(chunk), len(chunk)))

    def _reduce(self, entries: list[Entry]) -> Entry:
        block = file_node([Link(e.cid, "", e.tsize) for e in entries], [e.filesize for e in entries])
        cid = CID.of(DAG_PB, block)
        self.sink(cid, block)
        return Entry(cid, len(block) + sum(e.tsize for e in entries), sum(e.filesize for e in entries))

    def _push(self, level: int, entry: Entry) -> None:
        while len(self.levels) <= level:
            self.levels.append([])
        self.levels[level].append(entry)
        if len(self.levels[level]) == self.params.max_links:
            full, self.levels[level] = self.levels[level], []
            self._push(level + 1, self._reduce(full))

    def finish(self) -> Entry:
        if self.leaves == 0:
            self.add_chunk(b"")
        if self.leaves == 1:
            return self.levels[0][0]  # reduceSingleLeafToSelf: a one-chunk file is its raw leaf
        i = 0
        while True:
            entries = self.levels[i]
            higher = any(self.levels[j] for j in range(i + 1, len(self.levels)))
            if not higher:
                return entries[0] if (len(entries) == 1 and i > 0) else self._reduce(entries)
            if entries:
                self.levels[i] = []
                self._push(i + 1, self._reduce(entries))
            i += 1


def add_stream(stream: BinaryIO, sink: Sink | None = None, params: ImportParams = ImportParams()) -> Entry:
    fb = FileBuilder(sink, params)
    size = params.chunk_size
    while True:
        chunk = stream.read(size)
        if not chunk:
            break
        while len(chunk) < size:  # short reads (pipes): fill the chunk before cutting it
            more = stream.read(size - len(chunk))
            if not more:
                break
            chunk += more
        fb.add_chunk(chunk)
        if len(chunk) < size:
            break
    return fb.finish()


def add_bytes(data: bytes, sink: Sink | None = None, params: ImportParams = ImportParams()) -> Entry:
    return add_stream(io.BytesIO(data), sink, params)


def add_file(path: Path, sink: Sink | None = None, params: ImportParams = ImportParams()) -> Entry:
    fd, st = open_entry(path)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ContentError(f"{path}: not a regular file")
    with open(fd, "rb", buffering=0) as f:
        return add_stream(f, sink, params)


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC   # NONBLOCK: a FIFO must not hang open()


def open_entry(name: str | Path, dir_fd: int | None = None, shown: str | Path | None = None
               ) -> tuple[int, os.stat_result]:
    """Open `name` (relative to `dir_fd` when given) without following a symlink in its last component; returns
    (fd, fstat of that fd). Refuses a symlink and anything but a regular file or a directory. The caller closes."""
    shown = shown if shown is not None else name
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ContentError(f"{shown}: is a symbolic link; symlinks are never imported (copy the file instead)"
                            ) from None
        if e.errno in (errno.ENXIO, errno.EOPNOTSUPP):           # a socket
            raise ContentError(f"{shown}: not a regular file or directory") from None
        raise ContentError(f"{shown}: cannot open ({e.strerror})") from None
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        os.close(fd)
        raise ContentError(f"{shown}: not a regular file or directory (FIFOs, sockets and devices are never imported)")
    if stat.S_ISREG(st.st_mode):
        os.set_blocking(fd, True)
    return fd, st


@dataclass(frozen=True)
class _Child:
    """An entry of a directory being walked: opened (no symlink followed) only when it is imported."""
    dir_fd: int
    name: str
    shown: Path


def _names(dir_fd: int, shown: Path, params: ImportParams) -> list[str]:
    try:
        names = sorted(os.listdir(dir_fd))
    except OSError as e:
        raise ContentError(f"{shown}: cannot list ({e.strerror})") from None
    return [n for n in names if params.include_hidden or not n.startswith(".")]


def _add_opened(fd: int, st: os.stat_result, shown: Path, sink: Sink, params: ImportParams) -> Entry:
    """Import an opened file or directory (`fd` is closed here)."""
    if stat.S_ISREG(st.st_mode):
        with open(fd, "rb", buffering=0) as f:
            return add_stream(f, sink, params)
    try:
        return add_tree({n: _Child(fd, n, shown / n) for n in _names(fd, shown, params)}, sink, params)
    finally:
        os.close(fd)


def add_tree(tree: Mapping[str, TreeEntry], sink: Sink | None = None,
             params: ImportParams = ImportParams()) -> Entry:
    """Import a (virtual) directory; returns the directory's entry."""
    sink = sink or _discard
    links = []
    for name, value in tree.items():
        if not name or "/" in name:
            raise ContentError(f"invalid entry name {name!r} in a directory")
        if isinstance(value, bytes):
            e = add_bytes(value, sink, params)
        elif isinstance(value, _Child):
            e = _add_opened(*open_entry(value.name, value.dir_fd, value.shown), value.shown, sink, params)
        elif isinstance(value, Path):
            e = _add_opened(*open_entry(value), value, sink, params)
        else:
            e = add_tree(value, sink, params)
        links.append(Link(e.cid, name, e.tsize))
    estimate = sum(len(ln.name.encode()) + len(ln.cid.to_bytes()) for ln in links)
    if estimate > _SHARD_THRESHOLD:
        raise ContentError(f"a directory with {len(links)} entries would be HAMT-sharded by Kubo; "
                        f"sharded directories are not supported (split it into subdirectories)")
    block = directory_node(links)
    cid = CID.of(DAG_PB, block)
    sink(cid, block)
    return Entry(cid, len(block) + sum(ln.tsize for ln in links), 0)


def add_path(path: Path, sink: Sink | None = None, params: ImportParams = ImportParams()) -> Entry:
    """The CID `ipfs add -r --cid-version=1 --raw-leaves PATH` prints for PATH itself (file or directory).
    PATH itself must not be a symlink; nothing below it is followed either."""
    path = Path(path)
    if not os.path.lexists(path):
        raise ContentError(f"{path}: no such file or directory")
    return _add_opened(*open_entry(path), path, sink or _discard, params)


def copy_regular_files(src: Path, dest: Path, names: tuple[str, ...]) -> list[str]:
    """Copy the files `names` of directory `src` into the existing directory `dest`, never following a symlink:
    `src` itself is opened O_NOFOLLOW, each file through that descriptor, checked regular by fstat and copied from
    the same descriptor (a symlink, FIFO, socket, device or directory under one of `names` is refused). Other
    entries are neither read nor copied. Returns every non-hidden name in `src`; names absent from `src` are
    simply not copied."""
    src = Path(src)
    if not os.path.lexists(src):
        raise ContentError(f"{src}: no such directory")
    dir_fd, st = open_entry(src)
    try:
        if not stat.S_ISDIR(st.st_mode):
            raise ContentError(f"{src}: not a directory")
        listed = _names(dir_fd, src, ImportParams())
        for name in names:
            if name not in listed:
                continue
            fd, fst = open_entry(name, dir_fd, src / name)
            if not stat.S_ISREG(fst.st_mode):
                os.close(fd)
                raise ContentError(f"{src / name}: not a regular file")
            with open(fd, "rb", buffering=0) as f:
                out = os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with open(out, "wb") as g:
                    while chunk := f.read(1 << 20):
                        g.write(chunk)
        return listed
    finally:
        os.close(dir_fd)
