"""Fetchers outside the peer network: an IPFS trustless gateway (CAR responses) and a Kubo RPC API.

What it does: each fetcher makes a whole DAG present in a blockstore, verifying every block against its CID before
it is stored (the store's `put` verifies too), and fails with an error naming the CID it could not get.
`GatewayFetcher` streams `GET <gateway>/ipfs/<cid>?format=car` into the store block by block (memory: one block);
`KuboRpcFetcher` walks the DAG with `block/get` through ipfshttpclient, constructed directly (its `connect()`
refuses current Kubo versions).
What it does not do: trust a gateway's or daemon's word for anything: content is checked, not the source.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import Iterable, Protocol

from openlora.content.car import CarError, import_car
from openlora.content.cid import CID, as_cid
from openlora.content.dag import fetch_dag, missing_blocks
from openlora.node.ipfs.errors import BlockNotFoundError, FetchError, IpfsError

log = logging.getLogger("openlora.ipfs")


class Fetcher(Protocol):
    name: str

    def fetch(self, root: CID, store) -> int:
        """Make every block of `root` present in `store`; return how many were fetched. Raises IpfsError."""
        ...


class GatewayFetcher:
    """A trustless gateway (https://specs.ipfs.tech/http-gateways/trustless-gateway/), CAR responses."""

    def __init__(self, url: str, timeout: float = 60.0, max_bytes: int = 4 << 30):
        self.url = url.rstrip("/")
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.name = f"gateway {self.url}"

    def fetch(self, root: CID | str, store) -> int:
        root = as_cid(root)
        req = urllib.request.Request(f"{self.url}/ipfs/{root}?format=car&dag-scope=all",
                                     headers={"Accept": "application/vnd.ipld.car;version=1;order=dfs;dups=n"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                _, n = import_car(resp, store, max_bytes=self.max_bytes)
        except urllib.error.HTTPError as e:
            raise FetchError(f"{self.name}: {root}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise FetchError(f"{self.name}: {root}: {getattr(e, 'reason', e)}") from None
        except CarError as e:
            raise FetchError(f"{self.name}: {root}: bad CAR response: {e}") from None
        missing = missing_blocks(root, store)
        if missing:
            raise BlockNotFoundError(missing[0], f"{self.name}: the CAR for {root} lacks block {missing[0]}")
        return n


class _KuboGetter:
    def __init__(self, client):
        self.client = client

    def get_many(self, cids: list[CID]) -> Iterable[tuple[CID, bytes]]:
        for cid in cids:
            try:
                yield cid, self.client.block.get(str(cid))
            except Exception as e:  # ipfshttpclient raises its own hierarchy and requests' errors
                log.debug("kubo block/get %s failed: %s", cid, e)
                return


class KuboRpcFetcher:
    """A Kubo RPC API (e.g. /ip4/127.0.0.1/tcp/5001/http), used only when the operator configures one."""

    def __init__(self, addr: str, timeout: float = 60.0):
        import ipfshttpclient
        self.addr = addr
        self.name = f"kubo rpc {addr}"
        self.client = ipfshttpclient.Client(addr, timeout=timeout)  # not connect(): it refuses Kubo >= 0.8

    def fetch(self, root: CID | str, store) -> int:
        try:
            return fetch_dag(as_cid(root), _KuboGetter(self.client), store, batch=16)
        except BlockNotFoundError as e:
            raise BlockNotFoundError(e.cid, f"{self.name}: could not get block {e.cid} (of {root})") from None

    def close(self) -> None:
        self.client.close()


def fetchers_from_config(cfg) -> list:
    """The fetchers an operator configured outside the peer network ([ipfs] kubo_rpc, then gateways, in order)."""
    return ([KuboRpcFetcher(cfg.ipfs.kubo_rpc)] if cfg.ipfs.kubo_rpc else []) + \
        [GatewayFetcher(u) for u in cfg.ipfs.gateways]


def fetch_from_any(cid: CID, fetchers: Iterable, store) -> tuple[str, int]:
    """Try each fetcher in order until one makes the DAG of `cid` present in `store`; returns (its name, blocks
    fetched). Raises FetchError listing every fetcher's failure."""
    errors = []
    for f in fetchers:
        try:
            return f.name, f.fetch(cid, store)
        except IpfsError as e:
            errors.append(f"{f.name}: {e}")
            log.warning("fetching %s from %s failed: %s", cid, f.name, e)
    raise FetchError("no source could provide it; " + "; ".join(errors))
