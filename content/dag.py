"""Walking UnixFS DAGs: listing, fetching block by block, and assembling files from the root down.

What it does: `walk` yields every block of a DAG (depth-first, the order a CAR export and a fetch use);
`fetch_dag` pulls the blocks a store lacks from a `BlockGetter` in batches, each verified against its CID and
stored as it arrives (so memory is bounded by one batch, not the file); `export` writes a file or directory from
the store, checking every size a node declares against what its children hold. A missing or corrupt block is an
error naming its CID; a short or partial file is never produced (output goes to a temp name and is renamed only
when complete).
What it does not do: network access (a getter does that) or HAMT-sharded directories (rejected).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

from openlora.content.cid import CID, DAG_PB, RAW, as_cid
from openlora.content.errors import BlockNotFoundError, DagError
from openlora.content.unixfs import T_DIRECTORY, T_FILE, T_RAW, PBNode, decode_node, decode_unixfs

GetBlock = Callable[[CID], bytes]
# Kubo's balanced layout is 3 levels deep for a terabyte (174 links a node); deeper DAGs are refused (the readers
# below recurse once a level).
MAX_DEPTH = 64


class BlockGetter(Protocol):
    def get_many(self, cids: list[CID]) -> Iterable[tuple[CID, bytes]]:
        """Yield (cid, bytes) for as many of `cids` as it can, in any order; unverified (the caller verifies)."""
        ...


def children(cid: CID, data: bytes) -> tuple[CID, ...]:
    if cid.codec == RAW:
        return ()
    return tuple(ln.cid for ln in decode_node(data, cid).links)


def walk(root: CID | str, get: GetBlock) -> Iterator[tuple[CID, bytes]]:
    """Every block reachable from `root`, depth-first pre-order, each block once."""
    stack = [as_cid(root)]
    seen: set[CID] = set()
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        data = get(cid)
        yield cid, data
        stack.extend(reversed(children(cid, data)))


def fetch_dag(root: CID | str, getter: BlockGetter, store, batch: int = 32,
              on_block: Callable[[CID, int], None] | None = None) -> int:
    """Make every block of `root` present in `store`, fetching missing ones from `getter`.

    Blocks are requested `batch` at a time; each is verified by `store.put` before it is written. Returns the number of blocks
    fetched. Raises BlockNotFoundError naming the first CID the getter did not deliver, BlockVerificationError for
    a block whose bytes do not match.
    """
    pending = [as_cid(root)]
    fetched = 0
    seen: set[CID] = set()
    while pending:
        wave, pending = pending[:batch], pending[batch:]
        want = []
        for cid in wave:
            if cid in seen:
                continue
            seen.add(cid)
            if store.has(cid):
                pending[:0] = children(cid, store.get(cid)) if cid.codec == DAG_PB else ()
            else:
                want.append(cid)
        if not want:
            continue
        wanted = set(want)
        got_children: dict[CID, tuple[CID, ...]] = {}
        for cid, data in getter.get_many(want):
            if cid not in wanted:
                continue
            store.put(cid, data)  # verifies before writing (BlockVerificationError, nothing stored)
            wanted.discard(cid)
            fetched += 1
            got_children[cid] = children(cid, data)
            if on_block:
                on_block(cid, len(data))
        if wanted:
            missing = next(c for c in want if c in wanted)
            raise BlockNotFoundError(missing, f"block {missing} was not delivered (needed for {root})")
        new = [c for cid in want for c in got_children[cid]]
        pending[:0] = new
    return fetched


def missing_blocks(root: CID | str, store, limit: int = 1) -> list[CID]:
    """CIDs reachable from `root` that `store` lacks (stops after `limit`)."""
    out, stack, seen = [], [as_cid(root)], set()
    while stack and len(out) < limit:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        if not store.has(cid):
            out.append(cid)
            continue
        stack.extend(children(cid, store.get(cid)))
    return out


def _write_file(cid: CID, get: GetBlock, out, expected: int | None, depth: int = 0,
                budget: list[int] | None = None) -> int:
    if depth > MAX_DEPTH:
        raise DagError(cid, f"block {cid}: the file's DAG is deeper than {MAX_DEPTH} levels")
    _spend(budget, 0, cid)
    data = get(cid)
    if cid.codec == RAW:
        _spend(budget, len(data), cid)
        out.write(data)
        written = len(data)
    else:
        node = decode_node(data, cid)
        fs = _unixfs(node, cid)
        if fs.type not in (T_FILE, T_RAW):
            raise DagError(cid, f"block {cid}: expected a UnixFS file node, found type {fs.type}")
        if node.links and len(fs.blocksizes) != len(node.links):
            raise DagError(cid, f"block {cid}: {len(node.links)} links but {len(fs.blocksizes)} block sizes")
        _spend(budget, len(fs.data), cid)
        out.write(fs.data)
        written = len(fs.data)
        for link, bs in zip(node.links, fs.blocksizes):
            written += _write_file(link.cid, get, out, bs, depth + 1, budget)
        if fs.filesize is not None and written != fs.filesize:
            raise DagError(cid, f"block {cid}: declares {fs.filesize} bytes but its DAG holds {written}")
    if expected is not None and written != expected:
        raise DagError(cid, f"block {cid}: holds {written} bytes where its parent declares {expected}")
    return written


def _budget(max_bytes: int | None) -> list[int] | None:
    """[bytes left, bytes allowed, block reads left]: a DAG that links one block many times can expand far beyond
    its blocks' total size, in bytes and in block reads (1-byte leaves); on average a read must bring 1 KiB."""
    return None if max_bytes is None else [max_bytes, max_bytes, 1024 + max_bytes // 1024]


def _spend(budget: list[int] | None, n: int, cid: CID) -> None:
    """Count one block read (n == 0) or n bytes written against the budget."""
    if budget is None:
        return
    if n == 0:
        budget[2] -= 1
        if budget[2] < 0:
            raise DagError(cid, f"block {cid}: the DAG repeats small blocks past {budget[1]} bytes' worth of reads")
    budget[0] -= n
    if budget[0] < 0:
        raise DagError(cid, f"block {cid}: the file holds more than the {budget[1]} bytes accepted here")


def cat(cid: CID | str, get: GetBlock, out, max_bytes: int | None = None) -> int:
    """Write the file `cid` to the binary stream `out`, checking every declared size. Returns bytes written.
    With `max_bytes`, a file larger than that raises DagError once that many bytes are written."""
    return _write_file(as_cid(cid), get, out, None, budget=_budget(max_bytes))


def _unixfs(node: PBNode, cid: CID):
    if node.data is None:
        raise DagError(cid, f"block {cid}: a dag-pb node without UnixFS data")
    return decode_unixfs(node.data, cid)


def _safe_name(name: str, cid: CID) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise DagError(cid, f"directory {cid}: refusing unsafe entry name {name!r}")
    return name


def _export(cid: CID, dest: Path, get: GetBlock, depth: int = 0, budget: list[int] | None = None) -> None:
    if depth > MAX_DEPTH:
        raise DagError(cid, f"directory {cid}: nested deeper than {MAX_DEPTH} levels")
    data = get(cid)
    if cid.codec == DAG_PB:
        node = decode_node(data, cid)
        fs = _unixfs(node, cid)
        if fs.type == T_DIRECTORY:
            dest.mkdir()
            for link in node.links:
                _export(link.cid, dest / _safe_name(link.name, cid), get, depth + 1, budget)
            return
        if fs.type not in (T_FILE, T_RAW):
            raise DagError(cid, f"block {cid}: UnixFS type {fs.type} is not supported (only files and directories)")
    with open(dest, "wb") as out:
        _write_file(cid, get, out, None, depth, budget)


def export(root: CID | str, dest: Path, get: GetBlock, max_bytes: int | None = None) -> Path:
    """Write the file or directory `root` to `dest` (must not exist); all-or-nothing. With `max_bytes`, a DAG whose
    files hold more than that in total raises DagError once that many bytes are written (a DAG may link one block
    many times: a few small blocks can expand to any size)."""
    root = as_cid(root)
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    try:
        _export(root, tmp, get, budget=_budget(max_bytes))
        os.replace(tmp, dest)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    return dest
