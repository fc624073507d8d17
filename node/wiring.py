"""The wiring of a serving node: the one module that connects engine, store, chain, pricing and the HTTP API.

What it does: opens the receipt store, reads the deployment and binds the chain (EIP-712 domain, lane balances,
adapter terms with a short cache), prices and attributes each served request, signs and commits its receipt, and
builds the `NodeService` the HTTP API runs on. With no deployment (or an unreachable chain) the node still serves
in free local mode, and says so.
What it does not do: run loops (node/runner.py starts the server and the settlement loop).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from eth_utils import to_checksum_address

from openlora.attribution import pricing
from openlora.attribution.receipts import Receipt, sign_receipt
from openlora.node.config import NodeConfig
from openlora.node.errors import ChainUnavailable, RequestRejected
from openlora.node.pipeline import NodeService, ServedRequest

log = logging.getLogger("openlora.node")
settlement_log = logging.getLogger("openlora.settlement")   # receipts publishing reports where settlement does
ZERO_ADDRESS = "0x" + "00" * 20
TERMS_TTL_S = 60.0


@dataclass
class Chain:
    w3: Any
    deployment: Any

    def lane_of(self, requester: str, node: str) -> tuple[int, int]:
        """(what the node can still count on from `requester`'s deposit, cumulative debited). An announced
        withdrawal counts as gone: it may be executed before the next batch settles (the contract lets it take
        min(announced, balance) once unlocked). Blocking; raises ChainUnavailable on any transport error."""
        try:
            s = self.deployment.contract(self.w3, "Settlement")
            balance = int(s.functions.balanceOf(requester, node).call())
            debited = int(s.functions.debited(requester, node).call())
            announced = int(s.functions.pendingWithdrawal(requester, node).call()[0])
        except Exception as e:  # requests/aiohttp/web3 transport errors: never echo them (the URL may hold a key)
            log.warning("chain read failed", extra={"fields": {"call": "lane_of", "error": type(e).__name__}})
            raise ChainUnavailable("reading the requester's deposit failed") from None
        return max(0, balance - announced), debited

    def reachable(self) -> bool:
        try:
            return self.w3.eth.chain_id == self.deployment.chain_id
        except Exception:  # any transport error means "not reachable now"
            return False


def connect_chain(cfg: NodeConfig) -> Chain | None:
    from openlora.attribution.chain import connect, redact
    from openlora.attribution.deployment import DeploymentError, read_deployment
    try:
        dep = read_deployment(cfg.path(cfg.chain.deployment_file))
        if dep.chain_id != cfg.chain.chain_id:
            raise DeploymentError(f"{cfg.chain.deployment_file} is a deployment on chain {dep.chain_id}, but "
                                  f"chain.chain_id is {cfg.chain.chain_id}: fix the config or the deployment file")
    except DeploymentError as e:
        log.warning(f"chain: {e}; serving in free local mode only" if cfg.api.free_local_mode
                    else f"chain: {e}; signed requests will be refused until a deployment exists")
        return None
    chain = Chain(connect(cfg.chain.rpc_url), dep)
    try:
        chain_id = chain.w3.eth.chain_id
    except Exception as e:  # any transport error: the node still starts, /readyz says the chain is down
        log.warning(f"chain: {redact(cfg.chain.rpc_url)} is not reachable ({type(e).__name__}); settlement waits "
                    "for it")
        return chain
    if chain_id != cfg.chain.chain_id:
        log.warning(f"chain: {redact(cfg.chain.rpc_url)} has chain id {chain_id}; the config's chain.chain_id is "
                    f"{cfg.chain.chain_id}")
    if chain_id != dep.chain_id:
        log.warning(f"chain: {redact(cfg.chain.rpc_url)} has chain id {chain_id}, the deployment file says "
                    f"{dep.chain_id}")
    else:
        log.info("chain reachable", extra={"fields": {"chain_id": chain_id, "settlement": dep.address("Settlement")}})
    return chain


class Pricer:
    """Adapter terms and Datanet contributor weights from the chain, cached for TERMS_TTL_S."""

    def __init__(self, chain: Chain | None, node_price_per_token: int, operator: str, shares: pricing.Shares):
        self.chain, self.node_price, self.operator, self.shares = chain, node_price_per_token, operator, shares
        self._cache: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def _cached(self, key, fn):
        with self._lock:
            hit = self._cache.get(key)
            if hit and time.monotonic() - hit[0] < TERMS_TTL_S:
                return hit[1]
        value = fn()
        with self._lock:
            self._cache[key] = (time.monotonic(), value)
        return value

    def terms(self, cid: str | None) -> pricing.AdapterTerms:
        if cid is None or self.chain is None:
            return pricing.BASE_MODEL if cid is None else pricing.AdapterTerms(cid, None, 0, ())
        try:
            return self._cached(("terms", cid), lambda: pricing.adapter_terms(self.chain.w3, self.chain.deployment,
                                                                              cid))
        except pricing.PricingError as e:
            raise RequestRejected(404, "adapter_not_registered", str(e)) from None
        except Exception as e:  # transport errors: 503, never their text (the RPC URL may carry an API key)
            log.warning("chain read failed", extra={"fields": {"call": "adapter_terms", "error": type(e).__name__}})
            raise ChainUnavailable("reading the adapter's terms failed") from None

    def price_per_token(self, cid: str | None) -> int:
        return self.terms(cid).price_per_token + self.node_price

    def price_and_attribution(self, cid: str | None, prompt_tokens: int, completion_tokens: int):
        terms = self.terms(cid)
        contributors = {}
        if self.chain is not None:
            for d, _ in terms.datanet_weights:
                try:
                    contributors[d] = self._cached(("datanet", d), lambda d=d: pricing.contributor_weights(
                        self.chain.w3, self.chain.deployment, d))
                except Exception as e:
                    log.warning("chain read failed", extra={"fields": {"call": "contributor_weights",
                                                                       "error": type(e).__name__}})
                    raise ChainUnavailable("reading the Datanet's contributors failed") from None
        price = pricing.price_of(terms, self.node_price, prompt_tokens, completion_tokens)
        return price, pricing.attribution_vector(terms, contributors, self.operator, self.shares)


class Network:
    """The adapter source of a node: its IPFS blockstore, plus libp2p peers, Kubo RPC and gateways as configured."""

    def __init__(self, cfg: NodeConfig, account, base_model: str):
        from openlora.node.ipfs.adapters import AdapterStore
        from openlora.node.ipfs.fetchers import fetchers_from_config
        from openlora.node.ipfs.source import IpfsAdapterSource
        self.store = AdapterStore(cfg.home / "ipfs", max_adapter_bytes=int(cfg.adapters.max_adapter_bytes))
        self.p2p = None
        fetchers: list = []
        if cfg.p2p.enabled:
            from openlora.node.p2p.service import P2PFetcher, from_config
            self.p2p = from_config(cfg, account, self.store, base_model=base_model).start()
            fetchers.append(P2PFetcher(self.p2p))
            log.info("p2p host up", extra={"fields": {"peer_id": self.p2p.peer_id, "addrs": self.p2p.addrs}})
        fetchers += fetchers_from_config(cfg)
        self.source = IpfsAdapterSource(self.store, fetchers)

    def ready(self) -> bool | str:
        return "disabled" if self.p2p is None else True

    def use_chain(self, chain: Chain | None, account) -> int:
        """With a chain: gossip announcements are accepted only for adapters registered in AdapterRegistry by
        their author for the announced base model (node/p2p/registry.py), and this node announces the held
        adapters its account authored and registered (the host re-sends them every announce period). Blocking
        (chain reads); returns how many it announces."""
        if self.p2p is None or chain is None:
            return 0
        from openlora.node.p2p.registry import AdapterRegistryCheck
        check = AdapterRegistryCheck.from_deployment(chain.w3, chain.deployment)
        self.p2p.validator.registry_check = check
        registry, me = chain.deployment.address("AdapterRegistry"), str(account.address)
        node = self.p2p.node

        async def announce(cid: str, manifest: dict) -> None:
            try:
                await node.announce(cid, manifest, registry)
            except Exception as e:  # noqa: BLE001 - a failed announcement must not take the p2p host down
                log.warning("announcing a held adapter failed", extra={"fields": {"cid": cid, "error": repr(e)}})
        n = 0
        for cid, meta in self.store.list().items():
            m = meta.get("manifest", {})
            if str(m.get("author") or "").lower() != me.lower():
                continue
            if check({"cid": cid, "author": me, "base_model": str(m.get("base_model") or "")}):
                self.p2p.bridge.spawn(announce, cid, m)
                n += 1
        if n:
            log.info(f"announcing {n} registered adapter(s) this node authored")
        return n

    async def register_all(self, client) -> int:
        """Every adapter in the local blockstore, registered lazily under its CID (the engine's adapter manager is
        the node's one registry of adapters). Returns how many."""
        cids = [str(cid) for cid in await asyncio.to_thread(self.store.list)]
        for cid in cids:
            await client.register_adapter(cid, cid, identity=cid)
        if cids:
            log.info(f"{len(cids)} adapter(s) in the local blockstore registered (loaded on first use)")
        return len(cids)

    def importer(self, engine) -> Callable[[str], str]:
        """path -> CID: a local adapter directory imported into the blockstore, validated by the engine's own
        loader for this node's base model (what the admin API's {name, path} load uses)."""
        from openlora.node.ipfs.adapters import engine_validator
        validate = engine_validator(engine.spec, max_rank=engine.adapters.max_rank, max_bytes=engine.adapters.max_bytes)
        return lambda path: str(self.store.add(path, validate=validate)[0])

    def follow_announcements(self, client) -> None:
        """Adapters announced over gossip for this base model become servable by CID (fetched on first use)."""
        if self.p2p is None:
            return
        queue = self.p2p.bridge.subscribe_asyncio("announce")

        async def follow():
            while True:
                ann = await queue.get()          # a validated announcement dict (node/p2p/gossip.py)
                cid = str(ann.get("cid", "")) if isinstance(ann, dict) else ""
                if cid and client.find_adapter(cid) is None:
                    await client.register_adapter(cid, cid, identity=cid)
                    log.info("adapter announced by a peer; servable on demand", extra={"fields": {"cid": cid}})
        self._follow = asyncio.get_running_loop().create_task(follow(), name="p2p-announcements")

    def publish_receipts(self, data: bytes, batch_id: str) -> str:
        """The settlement loop's `publish` (node.settlement.PublishReceipts): see `blockstore_publisher`."""
        provide = self.p2p.provide if self.p2p is not None else None
        return blockstore_publisher(self.store.blocks, provide)(data, batch_id)

    def stop(self) -> None:
        if self.p2p is not None:
            self.p2p.stop()


def blockstore_publisher(blocks, provide: Callable[[str], Any] | None = None) -> Callable[[bytes, str], str]:
    """(data, batch_id) -> ipfs://CID: a published receipts file added to the blockstore `blocks` (Kubo-identical
    CID: CIDv1, raw leaves; kept as a root of kind "receipts") and, with `provide`, announced to the DHT. The DHT
    record is best effort: a failed provide is logged, the blocks stay stored and peers can fetch them from here."""
    def publish(data: bytes, batch_id: str) -> str:
        from openlora.content.importer import add_bytes

        entry = add_bytes(data, sink=blocks.put_trusted)
        blocks.add_root(entry.cid, {"kind": "receipts", "batch_id": batch_id})
        if provide is not None:
            try:
                provide(str(entry.cid))
            except Exception as e:  # noqa: BLE001 - the DHT record is best effort; the blocks are stored
                settlement_log.warning("receipts of batch %s: DHT provide failed (%s); peers can still fetch them "
                                       "from this node", batch_id, e)
        return f"ipfs://{entry.cid}"
    return publish


def start_network(cfg: NodeConfig, account, base_model: str) -> Network:
    return Network(cfg, account, base_model)


def build_service(cfg: NodeConfig, account, client, store, chain: Chain | None, p2p_ready=lambda: "disabled",
                  import_adapter: Callable[[str], str] | None = None) -> NodeService:
    node = to_checksum_address(account.address)
    s = cfg.settlement
    shares = pricing.Shares(author_bps=s.author_share_bps, operator_bps=s.operator_share_bps,
                            contributors_bps=10_000 - s.author_share_bps - s.operator_share_bps)
    pricer = Pricer(chain, s.price_per_token_wei, node, shares)
    domain = None
    if chain is not None:
        from openlora.attribution.eip712 import Domain
        domain = Domain(chain_id=chain.deployment.chain_id,
                        verifying_contract=chain.deployment.address("Settlement"))

    def write_receipt(served: ServedRequest) -> str:
        price, vector = pricer.price_and_attribution(served.adapter_cid, served.prompt_tokens,
                                                     served.completion_tokens)
        if served.requester is None:          # free local mode: a receipt of a request nobody pays for
            price = 0
        elif served.max_price is not None:
            price = min(price, served.max_price)
        evidence = None
        if served.attributed is not None:     # span attribution (node/attribution_index.py): vector + evidence
            vector, evidence = served.attributed.vector, served.attributed.evidence
        r = Receipt(request_id=served.request_id, request_digest=served.request_digest or bytes(32),
                    requester=served.requester or ZERO_ADDRESS, node=node, adapter_cid=served.adapter_cid,
                    prompt_tokens=served.prompt_tokens, completion_tokens=served.completion_tokens, price=price,
                    attribution=vector, created_at=int(time.time()), evidence=evidence)
        store.add_receipt(sign_receipt(r, account))
        return served.request_id

    def readiness() -> dict[str, bool | str]:
        return {"chain": chain.reachable() if chain is not None else "disabled", "p2p": p2p_ready()}

    return NodeService(
        client=client, node_address=node, free_local_mode=cfg.api.free_local_mode, admin_token=cfg.api.admin_token,
        store=store, domain=domain,
        lane_of=(lambda requester: chain.lane_of(requester, node)) if chain is not None else None,
        price_per_token=pricer.price_per_token, write_receipt=write_receipt, readiness=readiness,
        name=cfg.node.name, import_adapter=import_adapter)

