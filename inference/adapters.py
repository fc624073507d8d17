"""The adapter manager: adapters move through tiers just in time and are evicted least-recently-used by bytes.

    device pool (LoRAPool rows, byte budget)  <-  host memory (validated tensors, byte budget)
        <-  disk store (DiskStore, byte budget)  <-  an AdapterSource (local directory; IPFS/p2p from node/)

What it does: `register` makes an adapter known by name (nothing is read yet); `prefetch` starts loading it on a
loader thread (source -> disk -> parse + validate -> host memory) as soon as a request names it, so the request
waits in the queue while the batch keeps running; `acquire` puts a host-resident adapter into the device pool when
its sequence is admitted and takes a reference; `release` drops it. Adapters referenced by running sequences and
operator-pinned adapters are never evicted from any tier. A bad adapter is remembered with its reason (never
retried in a loop) until it is registered again. Counters and a load-latency histogram feed the node's metrics.
What it does not do: decide admission order (scheduler.py) or fetch from the network (the source does).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from openlora.inference.adapter_store import DiskStore
from openlora.inference.errors import AdapterError
from openlora.inference.lora import LoRAPool, LoRAWeights, read_peft_adapter
from openlora.inference.model_config import ModelSpec
from openlora.inference.sources import AdapterSourceError, LocalDirSource

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class AdapterInfo:
    name: str
    ref: str
    identity: str | None
    rank: int
    bytes: int
    tier: str               # device | host | loading | disk | failed
    slot: int | None
    refs: int
    pinned: bool
    last_used: float | None
    hits: int
    misses: int
    loads: int
    evictions: int
    error: str | None


@dataclass
class _Entry:
    name: str
    ref: str
    identity: str | None = None
    weights: LoRAWeights | None = None
    future: Future | None = None
    error: str | None = None
    slot: int | None = None
    refs: int = 0
    pinned: bool = False
    last_used: float | None = None
    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0
    generation: int = 0


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, v: float) -> None:
        i = next((k for k, b in enumerate(self.buckets) if v <= b), len(self.buckets))
        self.counts[i] += 1
        self.total += v
        self.n += 1


class AdapterManager:
    def __init__(self, spec: ModelSpec, pool: LoRAPool, *, max_rank: int = 256, max_bytes: int | None = None,
                 host_budget_bytes: int = 4 * 2**30, disk_store: DiskStore | None = None, loader_threads: int = 2,
                 pin_memory: bool = False):
        self.spec, self.pool = spec, pool
        self.max_rank, self.max_bytes = max_rank, max_bytes
        self.host_budget = host_budget_bytes
        self.disk = disk_store or DiskStore(None, 0, LocalDirSource(), copy=False)
        self.pin_memory = pin_memory
        self._entries: dict[str, _Entry] = {}
        self._device_lru: OrderedDict[str, None] = OrderedDict()
        self._host_lru: OrderedDict[str, None] = OrderedDict()
        # Guards the tables: loader threads finish loads, the engine thread acquires/releases, the node's HTTP
        # thread lists, registers and reads metrics. Re-entrant: acquire evicts under the same lock.
        self._lock = threading.RLock()
        self._wanted: set[str] = set()         # adapters named by queued requests: kept in host memory
        self.max_inflight = 2 * loader_threads
        self._loader = ThreadPoolExecutor(max_workers=loader_threads, thread_name_prefix="openlora-adapter-load")
        self.load_latency = Histogram()
        self.load_wait = Histogram()           # time requests spent queued because their adapter was loading
        self.counters = {"device_loads": 0, "device_evictions": 0, "host_loads": 0, "host_evictions": 0,
                         "load_failures": 0, "hits": 0, "misses": 0}

    # ---- registry ----
    def register(self, name: str, ref: str | Path, identity: str | None = None) -> None:
        """Make `name` known; nothing is read until a request (or `load`) needs it."""
        if not name or not isinstance(name, str):
            raise AdapterError(f"adapter name {name!r}: must be a non-empty string")
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old.refs > 0:
                raise AdapterError(f"adapter {name!r} is in use by running requests; unload it when they finish")
            if old is not None:
                self._drop_device(old)
                self._drop_host(old)
            gen = old.generation + 1 if old else 0
            self._entries[name] = _Entry(name=name, ref=str(ref), identity=identity, generation=gen)

    def load(self, name: str) -> LoRAWeights:
        """Load `name` into host memory now (blocking); raises AdapterError with the reason if it is bad."""
        self.prefetch(name)
        e = self._entry(name)
        fut = e.future
        if fut is not None:
            fut.result()
        self.poll()
        if e.error:
            raise AdapterError(e.error)
        return e.weights

    def unregister(self, name: str) -> None:
        with self._lock:
            e = self._entries.get(name)
            if e is None:
                raise AdapterError(f"adapter {name!r} is not registered")
            if e.refs > 0:
                raise AdapterError(f"adapter {name!r} is in use by {e.refs} running request(s)")
            self._drop_device(e)
            self._drop_host(e)
            del self._entries[name]
        self.disk.remove(e.ref)

    def pin(self, name: str, pinned: bool = True) -> None:
        with self._lock:
            self._entry(name).pinned = pinned

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def _entry(self, name: str) -> _Entry:
        e = self._entries.get(name)
        if e is None:
            raise AdapterError(f"unknown adapter {name!r}; register or load it first "
                               f"(known: {', '.join(sorted(self._entries)[:10]) or 'none'})")
        return e

    def check(self, name: str) -> None:
        """Raise AdapterError if `name` is unknown or known to be bad."""
        e = self._entry(name)
        if e.error:
            raise AdapterError(e.error)

    def find(self, model: str) -> tuple[str, str | None] | None:
        """(name, identity) of the adapter registered as `model`, or whose identity (CID) is `model`; else None."""
        with self._lock:
            e = self._entries.get(model)
            if e is not None:
                return e.name, e.identity
            for e in self._entries.values():
                if e.identity == model:
                    return e.name, e.identity
        return None

    def identity(self, name: str) -> str | None:
        e = self._entries.get(name)
        return None if e is None else e.identity

    # ---- loading (host tier) ----
    def status(self, name: str) -> str:
        """ready (in host or device memory) | loading | failed | unknown | registered."""
        e = self._entries.get(name)
        if e is None:
            return "unknown"
        if e.error:
            return "failed"
        if e.weights is not None:
            return "ready"
        return "loading" if e.future is not None else "registered"

    def error(self, name: str) -> str | None:
        e = self._entries.get(name)
        return None if e is None else e.error

    def set_wanted(self, names: set[str]) -> None:
        """Adapters that queued requests wait for: host eviction skips them (else a small host tier thrashes)."""
        self._wanted = set(names)

    def prefetch(self, name: str) -> None:
        """Start loading into host memory unless it is there, loading, or known bad. Loads are throttled: at most
        `max_inflight` at once, and none while the host tier is over budget with loads already running."""
        with self._lock:
            e = self._entries.get(name)
            if e is None or e.weights is not None or e.future is not None or e.error:
                return
            inflight = sum(1 for x in self._entries.values() if x.future is not None)
            if inflight >= self.max_inflight or (inflight and self._host_used() >= self.host_budget):
                return                            # the scheduler asks again next step
            e.future = self._loader.submit(self._load, e.name, e.ref, e.identity, e.generation, time.monotonic())

    def _load(self, name: str, ref: str, identity: str | None, generation: int, t0: float):
        try:
            with self.disk.checkout(ref) as path:
                w = read_peft_adapter(path, name, self.spec, max_rank=self.max_rank, max_bytes=self.max_bytes,
                                      identity=identity)
            if w.max_rank > self.pool.num_rows:
                raise AdapterError(f"adapter {name!r}: rank {w.max_rank} exceeds the device LoRA pool "
                                   f"({self.pool.num_rows} rows)")
            if self.pin_memory:
                w.tensors = {k: (a.pin_memory(), b.pin_memory(), s) for k, (a, b, s) in w.tensors.items()}
            return generation, w, None, time.monotonic() - t0
        except (AdapterError, AdapterSourceError) as err:
            return generation, None, str(err), time.monotonic() - t0
        except Exception as err:  # a loader bug must fail this adapter, never the engine
            return generation, None, f"adapter {name!r}: loading failed: {type(err).__name__}: {err}", 0.0

    def poll(self) -> None:
        """Collect finished loads into the host tier (called by the engine thread every step)."""
        with self._lock:
            for e in self._entries.values():
                if e.future is None or not e.future.done():
                    continue
                generation, w, err, dt = e.future.result()
                e.future = None
                if generation != e.generation:
                    continue                      # re-registered meanwhile: this result is stale
                if err:
                    e.error = err
                    self.counters["load_failures"] += 1
                    continue
                e.weights, e.identity = w, w.identity
                e.loads += 1
                self.counters["host_loads"] += 1
                self.load_latency.observe(dt)
                self._host_lru[e.name] = None
                self._host_lru.move_to_end(e.name)
            self._evict_host()

    def _host_used(self) -> int:
        return sum(self._entries[n].weights.nbytes for n in self._host_lru)

    def _evict_host(self) -> None:
        used = self._host_used()
        for name in list(self._host_lru):
            if used <= self.host_budget:
                break
            e = self._entries[name]
            if e.slot is not None or e.refs > 0 or e.pinned or name in self._wanted:
                continue          # tiers are inclusive: a device-resident adapter keeps its host copy
            used -= e.weights.nbytes
            self._drop_host(e)
            e.evictions += 1
            self.counters["host_evictions"] += 1

    def _drop_host(self, e: _Entry) -> None:
        e.weights = None
        self._host_lru.pop(e.name, None)

    # ---- residency (device tier) ----
    def acquire(self, name: str) -> int | None:
        """Put a host-ready adapter in the device pool and take a reference: its slot, or None if no room now."""
        with self._lock:
            return self._acquire(name)

    def _acquire(self, name: str) -> int | None:
        e = self._entries[name]
        if e.weights is None:
            return None
        if e.slot is None:
            e.misses += 1
            self.counters["misses"] += 1
            slot = self.pool.insert(e.weights)
            while slot is None and self._evict_device_one():
                slot = self.pool.insert(e.weights)
            if slot is None:
                return None
            e.slot = slot
            self.counters["device_loads"] += 1
        else:
            e.hits += 1
            self.counters["hits"] += 1
        e.refs += 1
        e.last_used = time.monotonic()
        self._device_lru[name] = None
        self._device_lru.move_to_end(name)
        self._host_lru.move_to_end(name)
        return e.slot

    def release(self, name: str) -> None:
        with self._lock:
            e = self._entries.get(name)
            if e is not None and e.refs > 0:
                e.refs -= 1
                e.last_used = time.monotonic()

    def _evict_device_one(self) -> bool:
        for victim in self._device_lru:
            v = self._entries[victim]
            if v.refs == 0 and not v.pinned:
                self._drop_device(v)
                v.evictions += 1
                self.counters["device_evictions"] += 1
                return True
        return False

    def _drop_device(self, e: _Entry) -> None:
        if e.slot is not None:
            if e.refs > 0:
                raise RuntimeError(f"adapter {e.name!r} would be evicted while {e.refs} sequence(s) use it")
            self.pool.remove(e.slot)
            e.slot = None
        self._device_lru.pop(e.name, None)

    # ---- introspection ----
    def list(self) -> list[AdapterInfo]:
        with self._lock:
            return self._list()

    def _list(self) -> list[AdapterInfo]:
        out = []
        for n, e in self._entries.items():
            tier = ("failed" if e.error else "device" if e.slot is not None else "host" if e.weights is not None
                    else "loading" if e.future is not None else "disk")
            w = e.weights
            out.append(AdapterInfo(name=n, ref=e.ref, identity=e.identity, rank=w.max_rank if w else 0,
                                   bytes=w.nbytes if w else 0, tier=tier, slot=e.slot, refs=e.refs, pinned=e.pinned,
                                   last_used=e.last_used, hits=e.hits, misses=e.misses, loads=e.loads,
                                   evictions=e.evictions, error=e.error))
        return out

    def metrics(self) -> dict:
        with self._lock:
            return self._metrics()

    def _metrics(self) -> dict:
        row_bytes = LoRAPool.bytes_per_row(self.spec, self.pool.dtype)
        hits, misses = self.counters["hits"], self.counters["misses"]
        return {
            "tiers": {
                "device": {"used_bytes": self.pool.used_rows * row_bytes, "budget_bytes": self.pool.num_rows * row_bytes,
                           "adapters": len(self._device_lru)},
                "host": {"used_bytes": self._host_used(), "budget_bytes": self.host_budget,
                         "adapters": len(self._host_lru)},
                "disk": {"used_bytes": self.disk.used_bytes, "budget_bytes": self.disk.budget,
                         "fetches": self.disk.fetches, "evictions": self.disk.evictions},
            },
            **self.counters,
            "hit_ratio": hits / (hits + misses) if hits + misses else None,
            "load_latency_s": {"buckets": list(self.load_latency.buckets), "counts": list(self.load_latency.counts),
                               "sum": self.load_latency.total, "count": self.load_latency.n},
            "load_wait_s": {"buckets": list(self.load_wait.buckets), "counts": list(self.load_wait.counts),
                            "sum": self.load_wait.total, "count": self.load_wait.n},
        }

    def loading(self) -> bool:
        with self._lock:
            return any(e.future is not None for e in self._entries.values())

    def wait_any(self, timeout: float) -> None:
        """Block until some load finishes (or `timeout`): the engine has nothing else to do meanwhile."""
        from concurrent.futures import FIRST_COMPLETED, wait
        with self._lock:
            futs = [e.future for e in self._entries.values() if e.future is not None]
        if futs:
            wait(futs, timeout=timeout, return_when=FIRST_COMPLETED)

    def shutdown(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
