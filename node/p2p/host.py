"""The libp2p side of a node, run entirely inside the bridge's trio thread.

What it does: builds a py-libp2p host with Noise as the ONLY security transport (a plaintext or secio dialer is
refused during negotiation) and yamux (both with the leaner byte paths of `node.p2p.wire`: same handshake and wire
format), from a persistent ed25519 identity in `<home>/p2p/identity.key`; listens,
dials bootstrap peers (and retries them), runs gossipsub (announcement and heartbeat topics, with a topic validator
that drops and counts invalid or unsigned messages before they are forwarded), a Kad-DHT in server mode (provider
records for every complete adapter held), and the block exchange server. It re-sends the announcements of the
adapters it holds on a period and publishes heartbeats; what it learns is kept in `adapters` and `peers` and
emitted through the bridge ("announce", "heartbeat").
What it does not do: anything blocking outside the trio thread; `node.p2p.service` is the thread-safe facade.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import multiaddr
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.tools.anyio_service.context import background_trio_service

from openlora.content.cid import CID
from openlora.node.p2p import gossip
from openlora.node.p2p.exchange import PROTOCOL as BLOCKS_PROTOCOL
from openlora.node.p2p.exchange import BlockServer, fetch_with_failover
from openlora.node.p2p.wire import BufferedNoiseTransport, use_fast_yamux
from openlora.safejson import loads as safe_loads

log = logging.getLogger("openlora.p2p")

#: Blockstore root kinds provided on the DHT besides adapters (Datanet content; node/commands/datanet.py).
PROVIDED_KINDS = ("datanet-version", "datanet-contribution")


@dataclass(frozen=True)
class P2PSettings:
    listen: str = "/ip4/127.0.0.1/tcp/0"
    bootstrap: tuple[str, ...] = ()
    base_model: str = ""
    price: int = 0
    announce_interval_s: float = 30.0
    heartbeat_interval_s: float = 10.0
    bootstrap_retry_s: float = 10.0
    block_timeout_s: float = 15.0
    provider_lookup_s: float = 5.0
    max_adapter_bytes: int = 1 << 30  # [adapters] max_adapter_bytes: a fetch of a bigger DAG is refused

    def __post_init__(self) -> None:
        if not self.listen.startswith("/"):
            raise ValueError(f"listen = {self.listen!r}: must be a multiaddr such as /ip4/127.0.0.1/tcp/4001")
        if self.announce_interval_s <= 0 or self.heartbeat_interval_s <= 0:
            raise ValueError("announce and heartbeat intervals must be positive")


def load_or_create_identity(path: Path):
    """The node's libp2p key pair: a 32-byte ed25519 seed in `path` (mode 0600), created on first use."""
    path = Path(path)
    if path.is_file():
        seed = bytes.fromhex(path.read_text().strip())
        if len(seed) != 32:
            raise ValueError(f"{path}: not a 32-byte ed25519 seed; delete it to create a new peer identity")
    else:
        seed = os.urandom(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(seed.hex() + "\n")
    return create_new_key_pair(seed)


def noise_only_host(key_pair, listen: str):
    """A host whose only security protocol is Noise (no plaintext, secio or TLS fallback) and whose muxer is yamux;
    Noise sessions are `BufferedNoiseSession`s and yamux connections `FastYamux` (node.p2p.wire)."""
    sec = {NOISE_PROTOCOL_ID: BufferedNoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)}
    host = new_host(key_pair=key_pair, sec_opt=sec, muxer_opt=create_yamux_muxer_option(),
                    listen_addrs=[multiaddr.Multiaddr(listen)])
    use_fast_yamux(host)
    return host


class P2PNode:
    def __init__(self, settings: P2PSettings, key_pair, adapter_store, account, validator: gossip.GossipValidator,
                 bridge, block_server: BlockServer | None = None):
        self.settings = settings
        self.store = adapter_store
        self.account = account
        self.validator = validator
        self.bridge = bridge
        self.host = noise_only_host(key_pair, settings.listen)
        self.peer_id = str(self.host.get_id())
        self.server = block_server or BlockServer(adapter_store.blocks)
        self.adapters: dict[str, dict] = {}   # cid -> {"announcement": msg, "raw": bytes, "providers": set[str]}
        self.peers: dict[str, dict] = {}      # peer id -> last heartbeat (+ "seen" monotonic time)
        self.announce_latency: list[float] = []
        # Hooks the wiring sets: the engine's load (running / max sequences) and the adapters resident on the device
        # (default: every adapter held on disk).
        self.load_fn = lambda: 0.0
        self.resident_fn = lambda: list(self.store.list())
        self._own_announcements: dict[str, bytes] = {}
        self._provided_content: set[str] = set()   # Datanet versions provided on the DHT (roots of other kinds)
        self.pubsub: Pubsub | None = None
        self.dht: KadDHT | None = None
        self.addrs: list[str] = []

    # ---- lifecycle (trio) -----------------------------------------------------------------------------------------

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        router = GossipSub(protocols=["/meshsub/1.0.0"], degree=6, degree_low=4, degree_high=12,
                           heartbeat_interval=1, max_messages_per_topic_per_second=50.0)
        self.pubsub = Pubsub(self.host, router, msg_id_constructor=lambda m: m.from_id + m.seqno)
        self.dht = KadDHT(self.host, DHTMode.SERVER)
        async with self.host.run([multiaddr.Multiaddr(s.listen)]), \
                background_trio_service(self.pubsub), background_trio_service(router), \
                background_trio_service(self.dht), trio.open_nursery() as nursery:
            await self.pubsub.wait_until_ready()
            self.host.set_stream_handler(BLOCKS_PROTOCOL, self.server.handle)
            for topic in (gossip.TOPIC_ANNOUNCE, gossip.TOPIC_HEARTBEAT):
                self.pubsub.set_topic_validator(topic, self._validate, False)
                sub = await self.pubsub.subscribe(topic)
                nursery.start_soon(self._read, sub)
            self.addrs = [str(a) for a in self.host.get_addrs()]
            nursery.start_soon(self._bootstrap_loop)
            nursery.start_soon(self._announce_loop)
            nursery.start_soon(self._heartbeat_loop)
            nursery.start_soon(self._provide_all)
            task_status.started()
            await trio.sleep_forever()

    # ---- peers ----------------------------------------------------------------------------------------------------

    async def connect(self, addr: str) -> str:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await self.host.connect(info)
        try:
            await self.dht.add_peer(info.peer_id)
        except Exception as e:  # noqa: BLE001 - the routing table is an optimisation, the connection is what counts
            log.debug("dht add_peer %s: %r", info.peer_id, e)
        return str(info.peer_id)

    def connected_peers(self) -> list[str]:
        return [str(p) for p in self.host.get_network().connections]

    async def _bootstrap_loop(self) -> None:
        while True:
            for addr in self.settings.bootstrap:
                if addr.rsplit("/p2p/", 1)[-1] in self.connected_peers():
                    continue
                try:
                    with trio.fail_after(10):
                        await self.connect(addr)
                    log.info("connected to bootstrap peer %s", addr)
                except Exception as e:  # noqa: BLE001
                    log.warning("bootstrap peer %s unreachable: %r (retrying)", addr, e)
            await trio.sleep(self.settings.bootstrap_retry_s)

    # ---- gossip ---------------------------------------------------------------------------------------------------

    def _validate(self, forwarder: ID, msg) -> bool:
        try:
            sender = str(ID(msg.from_id))
        except Exception:  # noqa: BLE001
            sender = None
        return self.validator.check(msg.data, sender) is not None

    async def _read(self, sub) -> None:
        while True:
            m = await sub.get()
            try:
                msg = safe_loads(m.data, max_bytes=gossip.MAX_MESSAGE_BYTES, max_depth=4)
                sender = str(ID(m.from_id))
            except Exception:  # noqa: BLE001 - our own messages are not validated by pubsub; be defensive
                continue
            if sender == self.peer_id:
                continue
            if msg.get("type") == "announce":
                entry = self.adapters.setdefault(msg["cid"], {"providers": set()})
                entry["providers"].add(sender)
                if self.validator.first_time(msg):
                    entry.update(announcement=msg, raw=bytes(m.data), learned=time.time())
                    self.announce_latency.append(time.time() - msg["ts"])
                    self.bridge.emit("announce", msg)
            elif msg.get("type") == "heartbeat":
                self.peers[msg["peer_id"]] = dict(msg, seen=time.monotonic())
                for cid in msg["adapters"]:
                    self.adapters.setdefault(cid, {"providers": set()})["providers"].add(msg["peer_id"])
                if self.validator.first_time(msg):
                    self.bridge.emit("heartbeat", msg)

    async def announce(self, cid: str, manifest: dict, registry: str = "") -> None:
        """Sign (as the author: this node's account must be the manifest's author) and publish an announcement."""
        author = (manifest.get("author") or "").lower()
        if author and author != self.account.address.lower():
            raise PermissionError(f"adapter {cid} is authored by {manifest['author']}; only its author can sign "
                                  f"its announcement (this node is {self.account.address})")
        raw = gossip.announcement(self.account, cid, manifest.get("base_model", ""), manifest.get("size", 0),
                                  registry)
        self._own_announcements[cid] = raw
        await self.pubsub.publish(gossip.TOPIC_ANNOUNCE, raw)
        await self.provide(cid)

    async def _announce_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.announce_interval_s)
            await self._provide_content()
            held = self.store.list()
            for cid in held:
                raw = self._own_announcements.get(cid) or self.adapters.get(cid, {}).get("raw")
                if raw is not None:  # re-send the author's signed bytes: anyone holding the adapter can
                    try:
                        await self.pubsub.publish(gossip.TOPIC_ANNOUNCE, raw)
                    except Exception as e:  # noqa: BLE001
                        log.debug("re-announce %s: %r", cid, e)

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                raw = gossip.heartbeat(self.account, self.peer_id, self.settings.base_model,
                                       list(self.resident_fn()), float(self.load_fn()), self.settings.price)
                await self.pubsub.publish(gossip.TOPIC_HEARTBEAT, raw)
            except Exception as e:  # noqa: BLE001
                log.debug("heartbeat: %r", e)
            await trio.sleep(self.settings.heartbeat_interval_s)

    # ---- DHT and block exchange -----------------------------------------------------------------------------------

    async def provide(self, cid: str) -> bool:
        try:
            with trio.move_on_after(10):
                return bool(await self.dht.provide(str(cid)))
        except Exception as e:  # noqa: BLE001
            log.warning("DHT provide %s failed: %r", cid, e)
        return False

    async def _provide_all(self) -> None:
        for cid in self.store.list():
            if self.store.complete(cid):
                await self.provide(cid)
        await self._provide_content()

    async def _provide_content(self) -> None:
        """Provide each Datanet version and contribution this home holds (blockstore roots of kind
        "datanet-version", recorded by `datanet publish` or `datanet pull`, and "datanet-contribution", recorded by
        `datanet contribute` and by a curator's `show`/`pending` that fetched one; possibly in another process) once;
        the block server already serves every block in the store."""
        for cid, meta in self.store.blocks.roots().items():
            if meta.get("kind") in PROVIDED_KINDS and cid not in self._provided_content:
                if await self.provide(cid):
                    self._provided_content.add(cid)

    async def find_providers(self, cid: str) -> list[str]:
        """Peers that may hold `cid`: DHT provider records and what gossip told us (connected ones first), then any
        other connected peer as a last resort (asking costs one round trip: a peer without it says so); never
        this node."""
        found: list[str] = []
        try:
            with trio.move_on_after(self.settings.provider_lookup_s):
                for info in await self.dht.find_providers(str(cid)):
                    if info.addrs:
                        self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, 3600)
                    found.append(str(info.peer_id))
        except Exception as e:  # noqa: BLE001
            log.debug("DHT find_providers %s: %r", cid, e)
        found += sorted(self.adapters.get(str(cid), {}).get("providers", ()))
        connected = self.connected_peers()
        out: list[str] = []
        for p in found:
            if p != self.peer_id and p not in out:
                out.append(p)
        out.sort(key=lambda p: p not in connected)  # connected peers first, order otherwise kept
        return out + [p for p in connected if p not in out and p != self.peer_id]

    async def fetch(self, cid: str, providers: list[str] | None = None) -> int:
        root = CID.parse(str(cid))
        providers = providers if providers is not None else await self.find_providers(str(root))

        async def open_stream(peer: str):
            with trio.fail_after(self.settings.block_timeout_s):
                return await self.host.new_stream(ID.from_base58(peer), [BLOCKS_PROTOCOL])

        n = await fetch_with_failover(root, self.store.blocks, providers, open_stream,
                                      block_timeout=self.settings.block_timeout_s,
                                      max_bytes=self.settings.max_adapter_bytes)
        return n

    async def fetch_many(self, roots: list[str], providers: list[str] | None = None, max_bytes: int | None = None,
                         on_block=None) -> int:
        """Fetch the DAGs of several roots together (providers of the first one unless given), every block verified;
        used for Datanet versions (node/commands/datanet.py `pull`)."""
        cids = [CID.parse(str(c)) for c in roots]
        providers = providers if providers is not None else await self.find_providers(str(cids[0]))

        async def open_stream(peer: str):
            with trio.fail_after(self.settings.block_timeout_s):
                return await self.host.new_stream(ID.from_base58(peer), [BLOCKS_PROTOCOL])

        return await fetch_with_failover(cids, self.store.blocks, providers, open_stream,
                                         block_timeout=self.settings.block_timeout_s, max_bytes=max_bytes,
                                         on_block=on_block)
