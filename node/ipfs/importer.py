"""The UnixFS importer: files and directories to blocks with the CIDs of `ipfs add --cid-version=1 --raw-leaves`.

What it does: chunks a file into fixed 256 KiB raw leaves and builds Kubo's balanced dag-pb layout (at most 174
links per node, built bottom-up as the data streams, so memory stays O(depth * 174) whatever the file size);
a one-chunk file is its own raw leaf (the empty file included). Directories become UnixFS directory nodes with
links sorted by name. Hidden names (starting with '.') are skipped as Kubo skips them without --hidden. Every
block is handed to a `sink(cid, bytes)` (a blockstore's put, or nothing when only the CID is wanted).
What it does not do: mode/mtime metadata, symlinks (refused), HAMT-sharded directories (refused: Kubo shards a
directory whose node would pass 256 KiB, i.e. thousands of entries), or rabin/trickle chunkers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Union

from openlora.node.ipfs.cid import CID, DAG_PB, RAW
from openlora.node.ipfs.errors import IpfsError
from openlora.node.ipfs.unixfs import Link, directory_node, file_node

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
    with open(path, "rb", buffering=0) as f:
        return add_stream(f, sink, params)


def _tree_of_dir(path: Path, params: ImportParams) -> dict[str, TreeEntry]:
    out: dict[str, TreeEntry] = {}
    for child in sorted(path.iterdir()):
        if child.name.startswith(".") and not params.include_hidden:
            continue
        if child.is_symlink():
            raise IpfsError(f"{child}: symlinks are not imported (copy the file instead)")
        if not (child.is_dir() or child.is_file()):
            raise IpfsError(f"{child}: not a regular file or directory")
        out[child.name] = child
    return out


def add_tree(tree: Mapping[str, TreeEntry], sink: Sink | None = None,
             params: ImportParams = ImportParams()) -> Entry:
    """Import a (virtual) directory; returns the directory's entry."""
    sink = sink or _discard
    links = []
    for name, value in tree.items():
        if not name or "/" in name:
            raise IpfsError(f"invalid entry name {name!r} in a directory")
        if isinstance(value, bytes):
            e = add_bytes(value, sink, params)
        elif isinstance(value, Path) and value.is_dir():
            e = add_tree(_tree_of_dir(value, params), sink, params)
        elif isinstance(value, Path):
            e = add_file(value, sink, params)
        else:
            e = add_tree(value, sink, params)
        links.append(Link(e.cid, name, e.tsize))
    estimate = sum(len(ln.name.encode()) + len(ln.cid.to_bytes()) for ln in links)
    if estimate > _SHARD_THRESHOLD:
        raise IpfsError(f"a directory with {len(links)} entries would be HAMT-sharded by Kubo; "
                        f"sharded directories are not supported (split it into subdirectories)")
    block = directory_node(links)
    cid = CID.of(DAG_PB, block)
    sink(cid, block)
    return Entry(cid, len(block) + sum(ln.tsize for ln in links), 0)


def add_path(path: Path, sink: Sink | None = None, params: ImportParams = ImportParams()) -> Entry:
    """The CID `ipfs add -r --cid-version=1 --raw-leaves PATH` prints for PATH itself (file or directory)."""
    path = Path(path)
    if path.is_symlink():
        raise IpfsError(f"{path}: symlinks are not imported")
    if path.is_dir():
        return add_tree(_tree_of_dir(path, params), sink, params)
    if path.is_file():
        return add_file(path, sink, params)
    raise IpfsError(f"{path}: no such file or directory")
