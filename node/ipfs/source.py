"""The engine's adapter source for CIDs: local blockstore first, then peers, a Kubo RPC API, gateways.

What it does: implements `inference.sources.AdapterSource`. `fetch(cid)` returns a local directory with the
adapter's files; when the DAG is not complete locally it asks each configured fetcher in order (the p2p fetcher
first when the node runs one), every block verified before it is stored, then exports the directory and checks
the manifest's sha256 of each file. Concurrent requests for the same CID share one fetch. Each call is a load
by the engine, recorded as the adapter's last use (the disk tier's LRU order); after a fetch or an export the disk
tier is brought back within adapters.disk_store_bytes (node/ipfs/disk_tier.py), and an adapter larger than the
whole budget is refused (and removed again).
What it does not do: check the adapter against the node's base model (the engine's loader does that).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from openlora.inference.sources import AdapterSourceError
from openlora.node.ipfs.adapters import AdapterStore
from openlora.content.cid import CID
from openlora.node.ipfs.errors import FetchError, IpfsError
from openlora.node.ipfs.fetchers import fetch_from_any

log = logging.getLogger("openlora.ipfs")


class IpfsAdapterSource:
    name = "ipfs"

    def __init__(self, store: AdapterStore, fetchers: list | None = None):
        self.store = store
        self.fetchers = list(fetchers or [])
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def fetch(self, ref: str) -> Path:
        try:
            cid = CID.parse(ref)
        except IpfsError as e:
            raise AdapterSourceError(f"adapter {ref!r}: {e}") from None
        with self._lock(str(cid)):
            try:
                with self.store.tier.lock.shared():      # no eviction pass deletes blocks while this writes
                    wrote = not (self.store.exported / str(cid) / "manifest.json").is_file()
                    if not self.store.complete(cid):
                        self._fetch_remote(cid)
                        wrote = True
                    if not self.store.blocks.has_root(cid):
                        self.store.record(cid)
                    path = self.store.materialize(cid)
                    self.store.tier.touch(str(cid))          # the engine is loading it: its last use
                if wrote and self.store.tier.budget is not None:
                    self.store.check_fits(cid)
                    self.store.tier.enforce(protect=(str(cid),))
                return path
            except IpfsError as e:
                raise AdapterSourceError(f"adapter {cid}: {e}") from None

    def _fetch_remote(self, cid: CID) -> None:
        if not self.fetchers:
            raise AdapterSourceError(f"adapter {cid} is not in the local blockstore and no network source is "
                                     f"configured (enable [p2p], or set [ipfs] kubo_rpc / gateways)")
        try:
            name, n = fetch_from_any(cid, self.fetchers, self.store.blocks)
        except FetchError as e:
            raise AdapterSourceError(f"adapter {cid}: {e}") from None
        log.info("fetched adapter %s from %s (%d blocks)", cid, name, n)
