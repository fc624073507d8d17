"""The disk tier of the adapter manager: a local directory of adapter copies, evicted LRU by bytes.

What it does: `ensure(ref)` returns a local directory for an adapter reference, fetching it through the configured
`AdapterSource` when it is not on disk yet, copying it into the store (atomically: a half-copied adapter is never
visible), and evicting least-recently-used adapters beyond the byte budget (never one that is pinned or being
loaded). Sources whose files are already local and stable (`LocalDirSource`) can be used in place (`copy=False`).
What it does not do: parse or validate adapters (inference/lora.py does, when the host tier loads them).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from openlora.inference.sources import (ADAPTER_FILES, AdapterSource, AdapterSourceError, check_adapter_dir,
                                       copy_adapter_files)


def dir_bytes(path: Path) -> int:
    """Bytes of the adapter files in `path` (symlinks are not followed: an adapter directory holds none)."""
    total = 0
    for name in ADAPTER_FILES:
        try:
            total += (path / name).lstat().st_size
        except FileNotFoundError:
            pass
    return total


@dataclass
class _DiskEntry:
    path: Path
    bytes: int
    last_used: float
    in_place: bool          # the source's own directory: never deleted by the store


class DiskStore:
    def __init__(self, root: Path | None, budget_bytes: int, source: AdapterSource, copy: bool = True):
        self.root, self.budget, self.source, self.copy = root, budget_bytes, source, copy and root is not None
        if self.copy:
            root.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, _DiskEntry] = {}
        self._busy: dict[str, int] = {}        # refs whose files a loader is reading right now: never evicted
        self._lock = threading.Lock()
        self.evictions = 0
        self.fetches = 0

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.bytes for e in self._entries.values() if not e.in_place)

    @contextlib.contextmanager
    def checkout(self, ref: str):
        """`with store.checkout(ref) as path:` the adapter's directory, kept on disk until the block ends (another
        loader's eviction must not delete files this one is reading)."""
        with self._lock:
            self._busy[ref] = self._busy.get(ref, 0) + 1
        try:
            yield self.ensure(ref)
        finally:
            with self._lock:
                self._busy[ref] -= 1
                if not self._busy[ref]:
                    del self._busy[ref]

    def ensure(self, ref: str) -> Path:
        """A local directory holding adapter `ref`. Blocking (runs on a loader thread). Raises AdapterSourceError.
        Use `checkout` when the files are read afterwards: a concurrent eviction could remove them."""
        with self._lock:
            e = self._entries.get(ref)
            if e is not None and e.path.is_dir():
                e.last_used = time.monotonic()
                return e.path
        src = self.source.fetch(ref)
        self.fetches += 1
        if not self.copy:
            check_adapter_dir(src)              # read in place: no symlinked directory or files, regular files only
            with self._lock:
                self._entries[ref] = _DiskEntry(src, dir_bytes(src), time.monotonic(), in_place=True)
            return src
        dest = self.root / hashlib.sha256(ref.encode()).hexdigest()[:32]
        if not dest.is_dir():
            tmp = self.root / f".tmp-{dest.name}-{threading.get_ident()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                copy_adapter_files(src, tmp)    # no symlink followed, regular files only
                tmp.rename(dest)
            except AdapterSourceError:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            except OSError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                if not dest.is_dir():
                    raise AdapterSourceError(f"adapter {ref!r}: cannot copy into the disk store: {e}") from None
        with self._lock:
            self._entries[ref] = _DiskEntry(dest, dir_bytes(dest), time.monotonic(), in_place=False)
        self._evict({ref})
        return dest

    def _evict(self, protect: set[str]) -> None:
        with self._lock:
            victims = sorted((e.last_used, ref) for ref, e in self._entries.items()
                             if not e.in_place and ref not in protect and ref not in self._busy)
            used = sum(e.bytes for e in self._entries.values() if not e.in_place)
            for _, ref in victims:
                if used <= self.budget:
                    break
                e = self._entries.pop(ref)
                shutil.rmtree(e.path, ignore_errors=True)
                used -= e.bytes
                self.evictions += 1

    def remove(self, ref: str) -> None:
        with self._lock:
            e = self._entries.pop(ref, None)
        if e is not None and not e.in_place:
            shutil.rmtree(e.path, ignore_errors=True)
