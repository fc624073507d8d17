"""The thread-safe face of the node's libp2p side, and its adapter fetcher for the engine's source chain.

What it does: `P2PService` owns a `TrioBridge` and the `P2PNode` inside it; every public method is a plain call
from any thread other than the trio thread (asyncio code uses `bridge.acall`). `P2PFetcher` plugs the network into
`node.ipfs.source.IpfsAdapterSource`: find providers (DHT + gossip), fetch with failover, verify, then provide the
CID so that others can fetch from this node. `from_config` builds the service from the node's config.
What it does not do: touch libp2p objects outside the trio thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

from openlora.node.ipfs.adapters import AdapterStore
from openlora.content.cid import as_cid
from openlora.node.ipfs.errors import FetchError
from openlora.node.p2p.bridge import TrioBridge
from openlora.node.p2p.exchange import BlockServer
from openlora.node.p2p.gossip import GossipValidator
from openlora.node.p2p.host import P2PNode, P2PSettings, load_or_create_identity

log = logging.getLogger("openlora.p2p")


class P2PService:
    def __init__(self, home: Path, store: AdapterStore, account, settings: P2PSettings = P2PSettings(),
                 registry_check=None, block_server: BlockServer | None = None, ephemeral_identity: bool = False):
        self.home = Path(home)
        self.store = store
        self.bridge = TrioBridge("libp2p")
        self.validator = GossipValidator(registry_check=registry_check)
        if ephemeral_identity:  # a short-lived host (e.g. `adapters pull`) must not share the node's peer id
            from libp2p.crypto.ed25519 import create_new_key_pair
            key_pair = create_new_key_pair()
        else:
            key_pair = load_or_create_identity(self.home / "p2p" / "identity.key")
        self._args = (settings, key_pair, store, account, self.validator, self.bridge, block_server)
        self.node: P2PNode | None = None

    def start(self, timeout: float = 30.0) -> "P2PService":
        async def main(nursery):
            self.node = P2PNode(*self._args)
            await nursery.start(self.node.serve)
        self.bridge.start(main, timeout)
        log.info("libp2p host %s listening on %s", self.peer_id, ", ".join(self.addrs))
        return self

    def stop(self) -> None:
        self.bridge.stop()

    def __enter__(self) -> "P2PService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs (with /p2p/<id>) others can dial."""
        return [a if "/p2p/" in a else f"{a}/p2p/{self.peer_id}" for a in self.node.addrs]

    def connect(self, addr: str) -> str:
        return self.bridge.call(self.node.connect, addr)

    def connected_peers(self) -> list[str]:
        return self.bridge.call(self._async(self.node.connected_peers))

    def announce(self, cid: str, registry: str = "") -> None:
        """Publish a signed announcement of a held adapter (this node's account must be its author) and provide it."""
        meta = self.store.list().get(str(as_cid(cid)))
        if meta is None:
            raise FetchError(f"adapter {cid} is not held by this node; `adapters add` it first")
        self.bridge.call(self.node.announce, str(as_cid(cid)), meta.get("manifest", {}), registry)

    def provide(self, cid: str) -> bool:
        """Put a DHT provider record for a held CID (done for every held adapter at start and after each fetch)."""
        return self.bridge.call(self.node.provide, str(as_cid(cid)))

    def find_providers(self, cid: str) -> list[str]:
        return self.bridge.call(self.node.find_providers, str(as_cid(cid)))

    def fetch(self, cid: str, providers: list[str] | None = None) -> int:
        n = self.bridge.call(self.node.fetch, str(as_cid(cid)), providers)
        if self.store.complete(cid):
            self.store.record(cid)
            self.bridge.call(self.node.provide, str(as_cid(cid)))
        return n

    def fetch_many(self, cids: list[str], providers: list[str] | None = None, max_bytes: int | None = None,
                   on_block=None) -> int:
        """Fetch several DAGs into the node's blockstore at once (a Datanet version's waves); nothing is recorded."""
        return self.bridge.call(self.node.fetch_many, [str(as_cid(c)) for c in cids], providers, max_bytes, on_block)

    def known_adapters(self) -> dict[str, dict]:
        return self.bridge.call(self._async(lambda: {c: dict(v, providers=sorted(v["providers"]))
                                                      for c, v in self.node.adapters.items()}))

    def peers(self) -> dict[str, dict]:
        return self.bridge.call(self._async(lambda: dict(self.node.peers)))

    def stats(self) -> dict:
        return {"dropped": dict(self.validator.dropped), "accepted": dict(self.validator.accepted),
                "duplicates": self.validator.duplicates, "bridge_dropped": dict(self.bridge.dropped),
                "served_blocks": self.node.server.served_blocks}

    @staticmethod
    def _async(fn):
        async def run():
            return fn()
        return run


class P2PFetcher:
    """The network as a `node.ipfs.fetchers.Fetcher`: first in the adapter source's chain."""

    name = "p2p"

    def __init__(self, service: P2PService):
        self.service = service

    def fetch(self, root, store) -> int:
        if store is not self.service.store.blocks and store.root != self.service.store.blocks.root:
            raise FetchError("the p2p fetcher writes into the node's own blockstore only")
        return self.service.fetch(str(root))


def from_config(cfg, account, store: AdapterStore, base_model: str = "", registry_check=None) -> P2PService:
    """A P2PService from the node's config ([p2p] listen and bootstrap)."""
    settings = P2PSettings(listen=cfg.p2p.listen, bootstrap=tuple(cfg.p2p.bootstrap), base_model=base_model,
                           max_adapter_bytes=int(cfg.adapters.max_adapter_bytes))
    return P2PService(cfg.home, store, account, settings, registry_check=registry_check)
