"""The disk tier of adapters: the node's blockstore bounded by `adapters.disk_store_bytes`, evicted LRU.

What it does: counts what adapters hold on disk under <home>/ipfs (each block an adapter links, once however many
adapters link it, plus the exported directories the engine reads), and when an add or a fetch takes that past the
budget, evicts the least-recently-used adapters that are neither pinned (adapters.pinned, or pinned at runtime in
the engine) nor held by the engine (device or host tier, loading, or referenced by a running request). An adapter's
exported copy goes first (its next load rebuilds it from the blocks); then the adapter itself: its export, its root
record, and the blocks that no other root links. Blocks are content-addressed and shared, so reference counts come
from walking every remaining root's DAG, receipts and other kinds included (only dag-pb nodes are read; the walk of
a complete DAG is cached, a DAG never changes).
Crash safety: an eviction first writes a journal (<ipfs>/evicting/<cid>.json: the blocks it will delete), then
removes the export and the root record, then the blocks, then the journal. A block another root links is never
deleted, so every remaining root stays complete whatever the crash point; the next pass (or `start`) finishes a
journal whose root is gone (re-checking each block against the roots then stored) and drops one whose root is still
there (nothing was deleted yet). Blocks that no root links and no journal names are left alone: they may be
another writer's (datanet contributions, a receipts batch about to be recorded, a fetch to be resumed).
Concurrency: adds and fetches hold a shared flock on <ipfs>/.lock while they write; eviction and `remove` hold it
exclusively, across threads and processes (the CLI and a running node). An eviction pass that cannot take the lock
at once is skipped: the writer holding it runs its own pass when it finishes.
What it does not do: fetch anything back (the adapter source does, on the next request that names it) or unload
adapters from the engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from openlora.content.blockstore import Blockstore
from openlora.content.cid import RAW, as_cid
from openlora.content.dag import children
from openlora.content.errors import ContentError
from openlora.node.errors import NodeError
from openlora.node.ipfs.errors import IpfsError

log = logging.getLogger("openlora.ipfs")
LOCK_WAIT_S = 30.0          # how long `remove` waits for running adds/fetches
HELD_TIERS = ("device", "host", "loading")


class DiskTierError(IpfsError, NodeError, ValueError):
    """The disk tier refused: an adapter larger than the budget, a pinned adapter, or a busy store."""


@dataclass(frozen=True)
class EngineUse:
    tier: str | None = None     # device | host | loading while the engine holds the adapter, else None
    pinned: bool = False


Usage = Callable[[], dict[str, EngineUse]]


def engine_usage(manager) -> Usage:
    """The engine's view of adapters, by source ref (a CID): from inference's AdapterManager.list()."""
    def usage() -> dict[str, EngineUse]:
        out: dict[str, EngineUse] = {}
        for info in manager.list():
            held = info.tier in HELD_TIERS or info.refs > 0
            prev = out.get(info.ref, EngineUse())
            out[info.ref] = EngineUse(tier=prev.tier or ((info.tier if info.tier in HELD_TIERS else "in use")
                                                         if held else None),
                                      pinned=prev.pinned or info.pinned)
        return out
    return usage


@dataclass(frozen=True)
class AdapterUsage:
    cid: str
    bytes: int                  # its blocks on disk (a block shared with another adapter counts here too)
    export_bytes: int           # its exported directory (the files the engine reads), 0 when none
    last_used: float | None     # unix time the engine last loaded it (else when it was added or fetched)
    pinned: bool
    engine_tier: str | None     # device | host | loading when the engine holds it (None: not, or unknown)
    complete: bool


@dataclass(frozen=True)
class Removal:
    cid: str
    freed_bytes: int            # blocks deleted + exported copy
    blocks_deleted: int
    blocks_shared: int          # kept: another stored root links them


class StoreLock:
    """A flock on one file: shared for writers (adds, fetches), exclusive for deleters. Each acquisition opens its
    own descriptor, so threads of one process exclude each other as processes do."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @contextlib.contextmanager
    def shared(self):
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def exclusive(self, wait_s: float = 0.0):
        """Yields True when held, False when it could not be taken within `wait_s`."""
        fd = self._open()
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        held = False
                        break
                    time.sleep(0.05)
            yield held
        finally:
            os.close(fd)


def dir_bytes(path: Path) -> int:
    """Bytes of the regular files directly in `path` (an exported adapter holds three, no subdirectories)."""
    total = 0
    try:
        for f in os.scandir(path):
            try:
                total += f.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                pass
    except (FileNotFoundError, NotADirectoryError):
        pass
    return total


def _last_used(meta: dict) -> float:
    v = meta.get("last_used", meta.get("added"))
    return float(v) if isinstance(v, (int, float)) else 0.0


def normalize_cid(cid: str) -> str:
    """The canonical string of a CID (a string that is none is kept as it is)."""
    try:
        return str(as_cid(cid))
    except ContentError:
        return str(cid)


class DiskTier:
    def __init__(self, blocks: Blockstore, exported: Path, budget_bytes: int | None = None,
                 pinned: Iterable[str] = (), usage: Usage | None = None):
        self.blocks, self.exported = blocks, Path(exported)
        self.budget = budget_bytes          # None: unbounded (a store opened without a config)
        self.pinned = {normalize_cid(c) for c in pinned}
        self.usage_fn = usage
        self.lock = StoreLock(blocks.root / ".lock")
        self.journal_dir = blocks.root / "evicting"
        self._dags: dict[str, frozenset[str]] = {}      # complete DAGs: root -> its blocks' CIDs
        self._meta_lock = threading.Lock()
        self.evictions = 0
        self.evicted_bytes = 0

    # ---- bookkeeping ----
    def touch(self, cid: str, *, added: bool = False) -> None:
        """Record a use of `cid` now (the engine loaded it; or it was just added/fetched when `added`)."""
        now = time.time()
        with self._meta_lock:
            meta = self.blocks.root_meta(cid)
            if meta is None:
                return
            fields = {"last_used": now}
            if added and "added" not in meta:
                fields["added"] = now
            self.blocks.add_root(cid, {**meta, **fields})

    def dag(self, cid: str) -> tuple[frozenset[str], bool]:
        """The CIDs of `cid`'s blocks present on disk, and whether its DAG is complete (no block missing)."""
        cid = normalize_cid(cid)
        hit = self._dags.get(cid)
        if hit is not None:
            return hit, True
        present: set[str] = set()
        visited: set[str] = set()
        complete = True
        stack = [as_cid(cid)]
        while stack:
            c = stack.pop()
            s = str(c)
            if s in visited:
                continue
            visited.add(s)
            if not self.blocks.has(c):
                complete = False
                continue
            present.add(s)
            if c.codec == RAW:
                continue
            try:
                stack.extend(children(c, self.blocks.get(c)))
            except ContentError:            # corrupt on disk: its file still belongs to this root
                complete = False
        out = frozenset(present)
        if complete:
            self._dags[cid] = out
        return out, complete

    def _exports(self) -> dict[str, int]:
        if not self.exported.is_dir():
            return {}
        return {e.name: dir_bytes(Path(e.path)) for e in os.scandir(self.exported)
                if e.is_dir(follow_symlinks=False)}

    def _drop_export(self, cid: str) -> int:
        """Remove `cid`'s exported directory: renamed away first (one atomic step: `materialize` never sees a
        half-deleted copy), then deleted. Returns its bytes."""
        path = self.exported / cid
        if not path.is_dir():
            return 0
        n = dir_bytes(path)
        trash = self.exported / f".trash-{cid}-{os.getpid()}-{threading.get_ident()}"
        try:
            os.replace(path, trash)
        except FileNotFoundError:
            return 0
        shutil.rmtree(trash, ignore_errors=True)
        return n

    # ---- reading ----
    def adapter_bytes(self, cid: str) -> int:
        return sum(self.blocks_sizes(self.dag(cid)[0]).values())

    def blocks_sizes(self, cids: Iterable[str]) -> dict[str, int]:
        out = {}
        for c in cids:
            try:
                out[c] = self.blocks.size(c)
            except ContentError:
                pass
        return out

    def usage(self, engine: dict[str, EngineUse] | None = None) -> tuple[list[AdapterUsage], int]:
        """Every stored adapter with its bytes, last use, pin and engine tier; and the bytes adapters use now."""
        if engine is None:
            engine = self._engine()
        roots = {c: m for c, m in self.blocks.roots().items() if m.get("kind") == "adapter"}
        dags = {c: self.dag(c) for c in roots}
        files = self.blocks_sizes(set().union(*(d[0] for d in dags.values())))
        exports = self._exports()
        out = []
        for cid, meta in roots.items():
            blocks, complete = dags[cid]
            use = engine.get(cid, EngineUse())
            out.append(AdapterUsage(
                cid=cid, bytes=sum(files.get(b, 0) for b in blocks), export_bytes=exports.get(cid, 0),
                last_used=_last_used(meta) or None, pinned=cid in self.pinned or use.pinned, engine_tier=use.tier,
                complete=complete and all(b in files for b in blocks)))
        return out, sum(files.values()) + sum(exports.values())

    def _engine(self) -> dict[str, EngineUse]:
        if self.usage_fn is None:
            return {}
        try:
            return {normalize_cid(k): v for k, v in self.usage_fn().items()}
        except Exception as e:  # noqa: BLE001 - unknown engine state: evict nothing rather than guess
            raise DiskTierError(f"cannot ask the engine which adapters it holds ({type(e).__name__}: {e}); "
                                f"nothing evicted") from None

    # ---- evicting ----
    def enforce(self, protect: Iterable[str] = ()) -> list[Removal]:
        """Bring the store within the budget (after an add or a fetch); returns what was evicted. Skipped when
        another thread or process holds the store lock (it runs its own pass when done)."""
        if self.budget is None:
            return []
        with self.lock.exclusive(0.0) as held:
            if not held:
                log.debug("disk tier: store busy, eviction pass skipped")
                return []
            return self._enforce({normalize_cid(c) for c in protect})

    def _enforce(self, protect: set[str]) -> list[Removal]:
        now = time.time()
        self._recover()
        roots = self.blocks.roots()
        dags = {c: self.dag(c)[0] for c in roots}
        refcount = Counter(b for blocks in dags.values() for b in blocks)
        files = self.blocks_sizes(set().union(*(dags[c] for c, m in roots.items() if m.get("kind") == "adapter")))
        exports = self._exports()
        for name in list(exports):               # leftovers: a crashed export or removal, or a forgotten root
            if name.startswith(".") or name not in roots:
                shutil.rmtree(self.exported / name, ignore_errors=True)
                del exports[name]
        used = sum(files.values()) + sum(exports.values())
        if used <= self.budget:
            return []
        try:
            engine = self._engine()
        except DiskTierError as e:
            log.warning(f"disk tier over budget ({used} bytes of {self.budget}) but {e}")
            return []
        for c, use in engine.items():            # held by the engine now: used now
            if use.tier and c in roots:
                roots[c] = {**roots[c], "last_used": now}
                self.touch(c)
        victims = sorted((c for c, m in roots.items()
                          if m.get("kind") == "adapter" and c not in protect and c not in self.pinned
                          and not engine.get(c, EngineUse()).pinned and not engine.get(c, EngineUse()).tier),
                         key=lambda c: (_last_used(roots[c]), c))
        for c in victims:                        # first the exported copies: rebuilt locally on the next load
            if used <= self.budget:
                return []
            if c in exports:
                n = self._drop_export(c)
                used -= n
                log.info(f"disk tier: dropped the exported copy of adapter {c} ({n} bytes; rebuilt from its "
                         f"blocks on its next load)", extra={"fields": {"cid": c, "bytes": n}})
        removals = []
        for c in victims:
            if used <= self.budget:
                break
            r = self._evict(c, dags, refcount, files)
            used -= r.freed_bytes
            removals.append(r)
            log.info(f"disk tier: evicted adapter {c} ({r.freed_bytes} bytes freed, {r.blocks_deleted} blocks; "
                     f"last used {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(_last_used(roots[c])))})",
                     extra={"fields": {"cid": c, "bytes": r.freed_bytes, "blocks": r.blocks_deleted,
                                       "shared_blocks_kept": r.blocks_shared}})
        if used > self.budget:
            log.warning(f"disk tier over budget: {used} bytes used of adapters.disk_store_bytes = {self.budget}; "
                        f"what remains is pinned, in use by the engine or just added")
        return removals

    def _evict(self, cid: str, dags: dict[str, frozenset[str]], refcount: Counter,
               files: dict[str, int]) -> Removal:
        """Remove `cid` (the exclusive lock is held): journal, export, root record, the blocks only it links."""
        mine = dags.pop(cid, frozenset())
        for b in mine:
            refcount[b] -= 1
        unique = sorted(b for b in mine if refcount[b] <= 0)
        journal = self.journal_dir / f"{cid}.json"
        self.journal_dir.mkdir(exist_ok=True)
        tmp = self.journal_dir / f".{cid}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps({"cid": cid, "blocks": unique}))
        os.replace(tmp, journal)
        freed = self._drop_export(cid)
        self.blocks.remove_root(cid)             # from here on nothing believes `cid` is stored
        for b in unique:
            freed += files.pop(b, 0)
            self.blocks.delete(b)
        journal.unlink()
        self._dags.pop(cid, None)
        self.evictions += 1
        self.evicted_bytes += freed
        return Removal(cid, freed, len(unique), len(mine) - len(unique))

    def _recover(self) -> None:
        """Finish or drop the journals of evictions a crash interrupted (the exclusive lock is held)."""
        if not self.journal_dir.is_dir():
            return
        for f in sorted(self.journal_dir.iterdir()):
            if f.name.startswith("."):
                f.unlink(missing_ok=True)                # a journal never completed: nothing was deleted after it
                continue
            try:
                entry = json.loads(f.read_text())
                cid, blocks = str(entry["cid"]), [str(b) for b in entry["blocks"]]
            except (OSError, ValueError, KeyError, TypeError):
                log.warning(f"disk tier: unreadable eviction journal {f}; removed (its blocks stay)")
                f.unlink(missing_ok=True)
                continue
            if self.blocks.has_root(cid):                # crashed before the root was removed: nothing deleted
                f.unlink()
                continue
            linked = set().union(*(self.dag(c)[0] for c in self.blocks.roots()))
            gone = [b for b in blocks if b not in linked]
            freed = sum(self.blocks_sizes(gone).values())
            for b in gone:
                self.blocks.delete(b)
            f.unlink()
            shutil.rmtree(self.exported / cid, ignore_errors=True)
            log.info(f"disk tier: finished the interrupted eviction of adapter {cid} ({freed} bytes freed)",
                     extra={"fields": {"cid": cid, "bytes": freed}})

    def remove(self, cid: str, *, force: bool = False, wait_s: float = LOCK_WAIT_S) -> Removal:
        """Remove one adapter now (`adapters rm`). Refuses a pinned one unless `force`."""
        cid = normalize_cid(cid)
        if cid in self.pinned and not force:
            raise DiskTierError(f"adapter {cid} is pinned (adapters.pinned); pass --force to remove it anyway")
        with self.lock.exclusive(wait_s) as held:
            if not held:
                raise DiskTierError(f"the blockstore {self.blocks.root} is busy (an add or a fetch is running); "
                                    f"try again")
            self._recover()
            roots = self.blocks.roots()
            if roots.get(cid, {}).get("kind") != "adapter":
                raise DiskTierError(f"adapter {cid} is not in the local store ({self.blocks.root}); "
                                    f"`openlora-node adapters list` shows what is")
            dags = {c: self.dag(c)[0] for c in roots}
            refcount = Counter(b for blocks in dags.values() for b in blocks)
            files = self.blocks_sizes(dags[cid])
            return self._evict(cid, dags, refcount, files)
