"""The adapter manager: which adapters the engine knows (host memory) and which are resident on the device.

What it does: registers validated adapters by name, makes an adapter resident in the `LoRAPool` when a sequence is
admitted (`acquire`), counts references so that an adapter used by a running sequence is never evicted, evicts the
least recently used idle adapter when the pool is full, honours operator pins, remembers bad adapters, and keeps
per-adapter counters (hits, misses, loads, evictions, last use).
What it does not do (yet): tiers below host memory and asynchronous loading; those arrive with the adapter-lifecycle
work behind the same `acquire`/`release` interface.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from inference.errors import AdapterError
from inference.lora import LoRAPool, LoRAWeights, read_peft_adapter
from inference.model_config import ModelSpec


@dataclass
class AdapterInfo:
    name: str
    identity: str
    path: str
    rank: int
    bytes: int
    tier: str               # device | host
    slot: int | None
    refs: int
    pinned: bool
    last_used: float | None
    hits: int
    misses: int
    loads: int
    evictions: int


@dataclass
class _Entry:
    weights: LoRAWeights
    slot: int | None = None
    refs: int = 0
    pinned: bool = False
    last_used: float | None = None
    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0


class AdapterManager:
    def __init__(self, spec: ModelSpec, pool: LoRAPool, *, max_rank: int = 256, max_bytes: int | None = None):
        self.spec, self.pool = spec, pool
        self.max_rank, self.max_bytes = max_rank, max_bytes
        self._entries: dict[str, _Entry] = {}
        self._bad: dict[str, str] = {}                        # name -> why it failed validation
        self._resident: OrderedDict[str, None] = OrderedDict()  # LRU order of resident adapters, oldest first
        self.total_loads = 0
        self.total_evictions = 0

    # ---- registry ----
    def register(self, name: str, path: Path | str, identity: str | None = None) -> LoRAWeights:
        if not name or not isinstance(name, str):
            raise AdapterError(f"adapter name {name!r}: must be a non-empty string")
        if name in self._entries and self._entries[name].refs > 0:
            raise AdapterError(f"adapter {name!r} is in use by running requests; unload it when they finish")
        try:
            w = read_peft_adapter(Path(path), name, self.spec, max_rank=self.max_rank, max_bytes=self.max_bytes,
                                  identity=identity)
        except AdapterError as e:
            self._bad[name] = str(e)
            raise
        if w.max_rank > self.pool.num_rows:
            msg = f"adapter {name!r}: rank {w.max_rank} exceeds the device LoRA pool ({self.pool.num_rows} rows)"
            self._bad[name] = msg
            raise AdapterError(msg)
        self._bad.pop(name, None)
        if name in self._entries:
            self._drop_residency(name)
        self._entries[name] = _Entry(w)
        return w

    def unregister(self, name: str) -> None:
        e = self._entries.get(name)
        if e is None:
            raise AdapterError(f"adapter {name!r} is not loaded")
        if e.refs > 0:
            raise AdapterError(f"adapter {name!r} is in use by {e.refs} running request(s)")
        self._drop_residency(name)
        del self._entries[name]

    def get(self, name: str) -> LoRAWeights:
        e = self._entries.get(name)
        if e is None:
            if name in self._bad:
                raise AdapterError(self._bad[name])
            raise AdapterError(f"unknown adapter {name!r}; load it first (known: {', '.join(self._entries) or 'none'})")
        return e.weights

    def pin(self, name: str, pinned: bool = True) -> None:
        self.get(name)
        self._entries[name].pinned = pinned

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    # ---- residency ----
    def acquire(self, name: str) -> int | None:
        """Make `name` resident and take a reference; its slot, or None if the pool cannot make room now."""
        e = self._entries[name]
        if e.slot is None:
            e.misses += 1
            slot = self.pool.insert(e.weights)
            while slot is None and self._evict_one(e.weights.max_rank):
                slot = self.pool.insert(e.weights)
            if slot is None:
                return None
            e.slot, e.loads = slot, e.loads + 1
            self.total_loads += 1
        else:
            e.hits += 1
        e.refs += 1
        e.last_used = time.monotonic()
        self._resident[name] = None
        self._resident.move_to_end(name)
        return e.slot

    def release(self, name: str) -> None:
        e = self._entries.get(name)
        if e is not None and e.refs > 0:
            e.refs -= 1
            e.last_used = time.monotonic()

    def _evict_one(self, rank: int) -> bool:
        for victim in self._resident:
            v = self._entries[victim]
            if v.refs == 0 and not v.pinned:
                self._drop_residency(victim)
                v.evictions += 1
                self.total_evictions += 1
                return True
        return False

    def _drop_residency(self, name: str) -> None:
        e = self._entries[name]
        if e.slot is not None:
            if e.refs > 0:  # pragma: no cover - guarded by callers; a bug if reached
                raise RuntimeError(f"adapter {name!r} evicted while in use")
            self.pool.remove(e.slot)
            e.slot = None
        self._resident.pop(name, None)

    def list(self) -> list[AdapterInfo]:
        return [AdapterInfo(name=n, identity=e.weights.identity, path=str(e.weights.path), rank=e.weights.max_rank,
                            bytes=e.weights.nbytes, tier="device" if e.slot is not None else "host", slot=e.slot,
                            refs=e.refs, pinned=e.pinned, last_used=e.last_used, hits=e.hits, misses=e.misses,
                            loads=e.loads, evictions=e.evictions)
                for n, e in self._entries.items()]
