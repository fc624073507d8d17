"""Real py-libp2p hosts on loopback: gossip, DHT providers, verified block exchange with failover, the engine
serving a fetched adapter, noise-only security, persistent identity, and the asyncio side of the bridge."""

from __future__ import annotations

import asyncio
import json

import multiaddr
import pytest
import trio
from eth_account import Account

from openlora.inference.sources import AdapterSourceError
from openlora.content.cid import CID
from openlora.content.dag import walk
from openlora.node.ipfs.errors import FetchError
from openlora.node.ipfs.source import IpfsAdapterSource
from openlora.node.p2p import gossip
from openlora.node.p2p.exchange import BlockServer
from openlora.node.p2p.service import P2PFetcher

from p2p_waiting import wait_for

FILES = ("adapter_config.json", "adapter_model.safetensors", "manifest.json")


def test_three_nodes_gossip_fetch_failover_and_serve(make_node, tiny_model_and_adapter):
    base_dir, adapter_dir = tiny_model_and_adapter
    author = Account.create()
    a = make_node("a", account=author, base_model="openlora/tiny-llama-s0")
    b, c = make_node("b"), make_node("c")
    b.connect(a.addrs[0])
    c.connect(a.addrs[0])
    cid, manifest = a.store.add(adapter_dir, author=author.address)
    cid = str(cid)
    wait_for(lambda: len(a.connected_peers()) == 2, what="both peers connected to A")

    a.announce(cid)
    for n in (b, c):
        wait_for(lambda: cid in n.known_adapters() and "announcement" in n.known_adapters()[cid],
                 what="the announcement reaching B and C")
        ann = n.known_adapters()[cid]["announcement"]
        assert ann["author"] == author.address and ann["base_model"] == manifest["base_model"]
        assert ann["size"] == manifest["size"]
    wait_for(lambda: b.peers().get(a.peer_id, {}).get("adapters") == [cid], what="A's heartbeat listing the adapter")
    assert b.peers()[a.peer_id]["address"] == author.address

    # B fetches from A through the engine's source interface.
    path_b = IpfsAdapterSource(b.store, [P2PFetcher(b)]).fetch(cid)
    assert a.stats()["served_blocks"] > 0
    # B now holds the adapter and has put a provider record in the DHT; C (not connected to B) finds it there.
    wait_for(lambda: b.peer_id in [str(i.peer_id) for i in c.bridge.call(c.node.dht.find_providers, cid)],
             what="B's DHT provider record found by C")
    # A stops: C must find B (DHT provider record / B's heartbeat) and fetch from it.
    a.stop()
    path_c = IpfsAdapterSource(c.store, [P2PFetcher(c)]).fetch(cid)
    assert b.stats()["served_blocks"] > 0
    for name in FILES:
        assert (path_c / name).read_bytes() == (path_b / name).read_bytes()
    assert (path_b / "adapter_model.safetensors").read_bytes() == (adapter_dir / "adapter_model.safetensors").read_bytes()

    # The same request served with the adapter as A holds it and as B and C fetched it gives the same tokens.
    from openlora.inference import LLM, SamplingParams
    path_a = a.store.materialize(cid)
    llm = LLM(base_dir, dtype="float32", device="cpu")
    params = SamplingParams(max_tokens=8, temperature=0.0)
    outs = {}
    for name, path in (("a", path_a), ("b", path_b), ("c", path_c)):
        llm.load_adapter(name, path, identity=f"{name}-{cid}")
        [out] = llm.generate(["The quick brown fox"], params, adapters=[name])
        assert out.finish_reason != "error", out
        outs[name] = list(out.token_ids)
    assert outs["a"] == outs["b"] == outs["c"]
    assert len(outs["a"]) == 8


def _tamper_leaf(mode):
    def factory(store):
        def tamper(cid, data):
            if cid.codec != 0x55:
                return data
            return None if mode == "missing" else bytes([data[0] ^ 0xFF]) + data[1:]
        return BlockServer(store.blocks, tamper=tamper)
    return factory


def test_corrupt_and_missing_blocks_fail_over_or_fail_clearly(make_node, random_adapter):
    bad = make_node("bad", block_server_factory=_tamper_leaf("corrupt"))
    holey = make_node("holey", block_server_factory=_tamper_leaf("missing"))
    good = make_node("good")
    client = make_node("client")
    for n in (bad, holey, good):
        n.store.add(random_adapter)
        client.connect(n.addrs[0])
    cid = str(good.store.add(random_adapter)[0])
    leaves = [c for c, _ in walk(cid, good.store.blocks.get) if c.codec == 0x55]

    with pytest.raises(FetchError, match=f"{cid}.*failed verification"):
        client.fetch(cid, providers=[bad.peer_id])
    assert not any(client.store.blocks.has(c) for c in leaves)  # nothing corrupt stored
    with pytest.raises(FetchError, match="does not have it"):
        client.fetch(cid, providers=[holey.peer_id])
    with pytest.raises(AdapterSourceError, match=cid):
        IpfsAdapterSource(client.store, [_Fixed(client, [bad.peer_id, holey.peer_id])]).fetch(cid)

    path = IpfsAdapterSource(client.store, [_Fixed(client, [bad.peer_id, holey.peer_id, good.peer_id])]).fetch(cid)
    assert (path / "adapter_model.safetensors").read_bytes() == (random_adapter / "adapter_model.safetensors").read_bytes()
    for c in leaves:
        client.store.blocks.get(c)  # re-verifies: every stored block matches its CID


class _Fixed(P2PFetcher):
    """The p2p fetcher with a fixed provider order (to make the failover order deterministic)."""

    def __init__(self, service, providers):
        super().__init__(service)
        self.providers = providers

    def fetch(self, root, store):
        return self.service.fetch(str(root), providers=self.providers)


def test_plaintext_dialer_is_refused(make_node):
    from libp2p import create_yamux_muxer_option, new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    target = make_node("target")

    async def dial() -> str:
        kp = create_new_key_pair()
        host = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)},
                        muxer_opt=create_yamux_muxer_option(),
                        listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")])
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                with trio.fail_after(10):
                    await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(target.addrs[0])))
            except Exception as e:  # noqa: BLE001
                return f"refused: {type(e).__name__}"
            return "connected"

    assert trio.run(dial).startswith("refused")
    assert target.connected_peers() == []


def test_invalid_gossip_is_dropped_and_resends_deduplicated(make_node, random_adapter):
    author = Account.create()
    a = make_node("a", account=author, announce_interval_s=0.3)
    b = make_node("b")
    b.connect(a.addrs[0])
    wait_for(lambda: a.connected_peers(), what="connection")
    cid = str(a.store.add(random_adapter, author=author.address)[0])
    import time
    time.sleep(1.2)  # gossipsub needs a heartbeat (1 s) to graft the mesh; messages before that are lost
    forger = Account.create()
    good = json.loads(gossip.announcement(author, cid, "tiny", 5))
    unsigned = {k: v for k, v in good.items() if k != "sig"}
    forged = json.loads(gossip.announcement(forger, cid, "tiny", 5))
    forged["author"] = author.address

    async def no_validation():  # A plays a malicious peer: it publishes without checking its own messages
        a.node.pubsub.remove_topic_validator(gossip.TOPIC_ANNOUNCE)

    a.bridge.call(no_validation)
    for msg in (unsigned, forged):
        a.bridge.call(a.node.pubsub.publish, gossip.TOPIC_ANNOUNCE, json.dumps(msg).encode())
    wait_for(lambda: b.stats()["dropped"].get("unsigned") == 1 and b.stats()["dropped"].get("bad-signature") == 1,
             what="B dropping the unsigned and the forged announcement")
    assert cid not in b.known_adapters() or "announcement" not in b.known_adapters()[cid]

    a.bridge.call(_restore_validator, a)
    a.announce(cid)  # then re-sent every 0.3 s by A's announce loop
    wait_for(lambda: b.stats()["duplicates"] >= 2, what="re-sent announcements arriving and deduplicated")
    assert b.stats()["accepted"]["announce"] >= 3
    assert b.known_adapters()[cid]["announcement"]["author"] == author.address


async def _restore_validator(svc):
    svc.node.pubsub.set_topic_validator(gossip.TOPIC_ANNOUNCE, svc.node._validate, False)


def test_identity_persists_and_bridge_serves_asyncio(make_node, tmp_path, random_adapter):
    a = make_node("a")
    pid = a.peer_id
    a.stop()
    again = make_node("a")  # same home directory
    assert again.peer_id == pid
    assert (tmp_path / "a" / "p2p" / "identity.key").stat().st_mode & 0o777 == 0o600

    author = Account.create()
    pub = make_node("pub", account=author)
    cid = str(pub.store.add(random_adapter, author=author.address)[0])

    async def main():
        q = again.bridge.subscribe_asyncio("announce", maxsize=8)
        peer = await again.bridge.acall(again.node.connect, pub.addrs[0])
        assert peer == pub.peer_id
        await asyncio.sleep(1.2)  # mesh grafting (gossipsub heartbeat)
        await asyncio.to_thread(pub.announce, cid)
        msg = await asyncio.wait_for(q.get(), 10)
        return msg

    msg = asyncio.run(main())
    assert msg["cid"] == cid and msg["author"] == author.address
    assert CID.parse(msg["cid"])


def test_cli_pull_from_a_peer(make_node, random_adapter, tmp_path, capsys):
    from openlora.node.cli import main
    a = make_node("a")
    cid = str(a.store.add(random_adapter)[0])
    capsys.readouterr()
    main(["--home", str(tmp_path / "cli-home"), "adapters", "pull", cid, "--peer", a.addrs[0]])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    from pathlib import Path
    assert (Path(out) / "adapter_model.safetensors").read_bytes() == \
        (random_adapter / "adapter_model.safetensors").read_bytes()
    assert a.stats()["served_blocks"] > 0


class _Stalling:
    """A peer that accepts block requests and never answers."""
    served_blocks = 0

    def __init__(self, store):
        pass

    async def handle(self, stream):
        await trio.sleep_forever()


def test_a_stalling_provider_times_out_and_the_next_one_serves(make_node, random_adapter):
    stall = make_node("stall", block_server_factory=_Stalling)
    good = make_node("good")
    client = make_node("client", block_timeout_s=1.0)
    for n in (stall, good):
        client.connect(n.addrs[0])
    cid = str(good.store.add(random_adapter)[0])
    with pytest.raises(FetchError, match=f"{cid}.*timed out"):
        client.fetch(cid, providers=[stall.peer_id])
    assert client.fetch(cid, providers=[stall.peer_id, good.peer_id]) > 0
    assert client.store.complete(cid)


def test_a_dag_larger_than_the_adapter_limit_is_refused(make_node, random_adapter):
    holder = make_node("holder")
    client = make_node("client", max_adapter_bytes=500_000)  # the random adapter is 2 MB
    client.connect(holder.addrs[0])
    cid = str(holder.store.add(random_adapter)[0])
    with pytest.raises(FetchError, match="larger than the 500000-byte limit"):
        client.fetch(cid, providers=[holder.peer_id])
    assert not client.store.complete(cid)


def test_service_from_the_node_config(tmp_path, make_node):
    from openlora.node.config import DEFAULT_CONFIG_TOML, parse_config
    from openlora.node.ipfs.adapters import AdapterStore
    from openlora.node.p2p.service import from_config
    boot = make_node("boot")
    cfg = parse_config(DEFAULT_CONFIG_TOML, tmp_path / "home", environ={
        "OPENLORA_P2P_LISTEN": "/ip4/127.0.0.1/tcp/0", "OPENLORA_P2P_BOOTSTRAP": boot.addrs[0]})
    svc = from_config(cfg, Account.create(), AdapterStore(cfg.home / "ipfs"), base_model="tiny").start()
    try:
        wait_for(lambda: boot.peer_id in svc.connected_peers(), what="the bootstrap peer from config connected")
        assert svc.node.settings.max_adapter_bytes == 2**30
        assert (cfg.home / "p2p" / "identity.key").is_file()
    finally:
        svc.stop()
