"""Any node fetches a Datanet version over the libp2p block exchange: real py-libp2p hosts on loopback, the real
blockstore, and (for the CLI) a real Anvil. Host A holds a published version; B pulls it by its manifest CID (every
block verified against its CID) and verifies it; a tampered block served by A is refused and never stored; A
provides the version on the DHT once it is recorded as held."""

from __future__ import annotations

import json
import time

import pytest
from eth_account import Account

from openlora.content.cid import RAW, as_cid
from openlora.datanets import contribution as contrib
from openlora.datanets import manifest as mf
from openlora.datanets.pull import pull
from openlora.node.config import DEFAULT_CONFIG_TOML
from openlora.node.ipfs.adapters import AdapterStore
from openlora.node.ipfs.errors import FetchError
from openlora.node.p2p.exchange import BlockServer
from openlora.node.p2p.host import P2PSettings
from openlora.node.p2p.service import P2PService
from tests.datanets.test_chain import TEXTS, Cli, home, jsonl  # noqa: F401  (home: a pytest fixture)

ROWS_A = [f"Row {i}: a LoRA adapter of rank {i % 16 + 1} adds two small matrices to layer {i % 24}."
          for i in range(300)]
ROWS_B = ["Content identifiers let anyone check what they fetched from a stranger.",
          "A curator accepts or rejects each contribution and says why."]


def wait_for(cond, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return value


@pytest.fixture
def make_host(tmp_path):
    started = []

    def make(home, tamper=None) -> P2PService:
        store = AdapterStore(home / "ipfs")
        server = BlockServer(store.blocks, tamper=tamper) if tamper else None
        svc = P2PService(home, store, Account.create(), P2PSettings(block_timeout_s=5.0, provider_lookup_s=3.0,
                                                                    announce_interval_s=0.5),
                         block_server=server, ephemeral_identity=True).start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()


def _version(store) -> str:
    """A two-contribution version (one multi-block file of 300 rows) in `store`, recorded as held."""
    accepted = []
    for i, (rows, name) in enumerate(((ROWS_A, "a.jsonl"), (ROWS_B, "b.txt")), 1):
        data = jsonl(*rows) if name.endswith(".jsonl") else "\n\n".join(rows).encode()
        cid = contrib.store(contrib.prepare(data, name), store, "CC0-1.0")
        accepted.append(mf.Accepted(i, "0x" + f"{i:040x}", cid))
    cid = mf.add(mf.build(1, 1, accepted, store.get), store)
    store.add_root(cid, {"kind": "datanet-version", "datanet_id": 1, "version": 1})
    return cid


def test_second_host_pulls_verifies_and_refuses_tampered_blocks(make_host, tmp_path):
    a = make_host(tmp_path / "a")
    cid = _version(a.store.blocks)
    b = make_host(tmp_path / "b")
    b.connect(a.addrs[0])
    wait_for(lambda: a.connected_peers(), what="B connected to A")

    # A provides the held version on the DHT (its announce loop picks up roots recorded after it started)
    wait_for(lambda: a.peer_id in [str(i.peer_id) for i in b.bridge.call(b.node.dht.find_providers, cid)],
             what="A's DHT provider record for the version")

    waves = []

    def fetch(roots, what):
        waves.append((len(roots), what))
        return b.fetch_many(roots)

    pulled = pull(cid, fetch, b.store.blocks)
    assert [n for n, _ in waves] == [1, 2, 2 + 302]          # manifest; records; files + rows
    assert pulled.rows == 302 and pulled.contributions == 2 and pulled.blocks_fetched > 304
    assert a.stats()["served_blocks"] >= pulled.blocks_fetched
    m = mf.verify(cid, b.store.blocks.get)                   # every weight recomputed from B's own blocks
    assert m == mf.read(cid, a.store.blocks.get)
    assert pull(cid, fetch, b.store.blocks).blocks_fetched == 0   # nothing left to fetch

    # a peer that serves one row corrupted: refused, the block never stored, the error names it
    row = m["contributions"][1]["rows"][1]["cid"]
    evil = make_host(tmp_path / "a", tamper=lambda c, d: d[:-2] + b"X}" if str(c) == row else d)
    c = make_host(tmp_path / "c")
    c.connect(evil.addrs[0])
    with pytest.raises(FetchError, match=f"{row}.*failed verification"):
        pull(cid, lambda roots, what: c.fetch_many(roots, providers=[evil.peer_id]), c.store.blocks)
    assert not c.store.blocks.has(row)
    assert c.store.blocks.has(as_cid(m["contributions"][1]["rows"][0]["cid"]))   # the good blocks are kept
    # the honest host completes it, then verify passes
    c.connect(a.addrs[0])
    pull(cid, lambda roots, what: c.fetch_many(roots, providers=[a.peer_id]), c.store.blocks)
    assert mf.verify(cid, c.store.blocks.get)["total_weight"] == m["total_weight"]


def _home(path, src):
    path.mkdir()
    (path / "config.toml").write_text((src / "config.toml").read_text())
    (path / "deployment.json").write_text((src / "deployment.json").read_text())
    return path


def test_cli_pull_from_a_peer_then_verify(home, capsys, tmp_path, make_host):  # noqa: F811
    cli = Cli(home, capsys)
    dn = cli.json("create", "--name", "pulled", key="curator0")["datanet_id"]
    (tmp_path / "a.jsonl").write_bytes(jsonl(*TEXTS))
    c = cli.json("contribute", str(dn), str(tmp_path / "a.jsonl"), key="contributors0")["contribution_id"]
    cli.json("review", str(dn), str(c), "--accept", "--reason", "ok", key="curator0")
    pub = cli.json("publish", str(dn), key="curator0")
    # publish recorded the version as held: a node on this home provides it and serves its blocks
    assert AdapterStore(home / "ipfs").blocks.root_meta(pub["manifest_cid"])["kind"] == "datanet-version"

    a = make_host(home)
    b_home = _home(tmp_path / "b", home)
    cli_b = Cli(b_home, capsys)
    code, _, err = cli_b("verify", str(dn))
    assert code == 1 and "cannot be read from the blockstore" in err      # nothing local yet
    code, _, err = cli_b("pull", str(dn))
    assert code == 1 and err.count("\n") == 1 and "no source to pull version 1" in err
    got = cli_b.json("pull", str(dn), "--peer", a.addrs[0])
    assert got["ok"] and got["manifest_cid"] == pub["manifest_cid"] and got["rows"] == len(TEXTS)
    assert got["total_weight"] == pub["total_weight"] and got["sources"] == ["p2p"] and got["blocks_fetched"] > 5
    assert cli_b.json("verify", str(dn))["ok"]
    code, out, _ = cli_b("pull", str(dn))                   # everything held: no source needed, nothing fetched
    assert code == 0 and "0 block(s) fetched (all held already)" in out and "verified: 1 contribution(s)" in out
    assert AdapterStore(b_home / "ipfs").blocks.root_meta(pub["manifest_cid"])["version"] == 1

    # a host serving a tampered row: one line naming the block, nothing corrupt stored
    m = mf.read(pub["manifest_cid"], AdapterStore(home / "ipfs").blocks.get)
    row = m["contributions"][0]["rows"][2]["cid"]
    assert as_cid(row).codec == RAW
    a.stop()
    evil = make_host(home, tamper=lambda c, d: d.replace(b"Curators", b"Kurators") if str(c) == row else d)
    c_home = _home(tmp_path / "c", home)
    code, out, err = Cli(c_home, capsys)("pull", str(dn), "--peer", evil.addrs[0])
    last = err.strip().splitlines()[-1]   # (the in-process hosts log to the same stderr)
    assert code == 1 and last.startswith("error: ") and row in last and "failed verification" in last, err[-2000:]
    assert not AdapterStore(c_home / "ipfs").blocks.has(row)
    assert json.loads((home / "deployment.json").read_text())["chain_id"] == 31337


def test_cli_pull_from_a_trustless_gateway(home, capsys, tmp_path):  # noqa: F811
    """Without peers, `pull --gateway URL` fetches each root as a CAR (every block verified) and verifies."""
    import io

    from aiohttp import web

    from openlora.content.car import write_car
    from tests.ipfs.test_adapters_fetchers import Server

    cli = Cli(home, capsys)
    dn = cli.json("create", "--name", "gw", key="curator0")["datanet_id"]
    (tmp_path / "g.jsonl").write_bytes(jsonl(*TEXTS[:3]))
    c = cli.json("contribute", str(dn), str(tmp_path / "g.jsonl"), key="contributors1")["contribution_id"]
    cli.json("review", str(dn), str(c), "--accept", "--reason", "ok", key="curator0")
    pub = cli.json("publish", str(dn), key="curator0")
    held = AdapterStore(home / "ipfs").blocks
    asked = []

    async def handler(request):
        cid = request.match_info["cid"]
        asked.append(cid)
        out = io.BytesIO()
        write_car(cid, held.get, out)
        return web.Response(body=out.getvalue(), content_type="application/vnd.ipld.car")

    app = web.Application()
    app.router.add_get("/ipfs/{cid}", handler)
    srv = Server(app)
    try:
        got = Cli(_home(tmp_path / "g", home), capsys).json("pull", str(dn), "--gateway",
                                                            f"http://127.0.0.1:{srv.port}")
    finally:
        srv.close()
    assert got["ok"] and got["rows"] == 3 and got["total_weight"] == pub["total_weight"]
    assert got["sources"] == [f"gateway http://127.0.0.1:{srv.port}"] and asked[0] == pub["manifest_cid"]


def test_curator_elsewhere_reads_a_pending_contribution_from_the_contributors_node(home, capsys, tmp_path,  # noqa: F811
                                                                                   make_host):
    """Host A (the contributor's home) holds a pending contribution and provides it; B's curator `show`s and
    assesses it (`pending`) by fetching it from A over the block exchange; a tampered row is refused."""
    cli = Cli(home, capsys)
    dn = cli.json("create", "--name", "pending", key="curator0")["datanet_id"]
    (tmp_path / "p.jsonl").write_bytes(jsonl(*TEXTS))
    made = cli.json("contribute", str(dn), str(tmp_path / "p.jsonl"), key="contributors0")
    c, cid = made["contribution_id"], made["cid"]
    held = AdapterStore(home / "ipfs").blocks
    assert held.root_meta(cid)["kind"] == "datanet-contribution" and held.root_meta(cid)["contribution_id"] == c
    rows = [r.cid for r in contrib.load(cid, held.get).prepared.rows]

    a = make_host(home)
    probe = make_host(tmp_path / "probe")
    probe.connect(a.addrs[0])
    wait_for(lambda: a.peer_id in [str(i.peer_id) for i in probe.bridge.call(probe.node.dht.find_providers, cid)],
             what="A's DHT provider record for the contribution")

    b_home = _home(tmp_path / "b", home)
    cli_b = Cli(b_home, capsys)
    code, _, err = cli_b("show", str(dn), "--contribution", str(c))
    last = err.strip().splitlines()[-1]   # (the in-process hosts log to the same stderr)
    assert code == 1 and last.startswith(f"error: no source to pull contribution {c} of Datanet {dn} from"), last
    assert cli_b.json("pending", str(dn))["pending"][0]["readable"] is False
    got = cli_b.json("show", str(dn), "--contribution", str(c), "--peer", a.addrs[0])
    assert got["status"] == "pending" and [r["text"] for r in got["rows"]] == TEXTS
    assert [r["cid"] for r in got["rows"]] == rows
    b_blocks = AdapterStore(b_home / "ipfs").blocks
    assert all(b_blocks.has(as_cid(r)) for r in rows) and b_blocks.root_meta(cid)["kind"] == "datanet-contribution"
    [p] = cli_b.json("pending", str(dn))["pending"]                   # now held on B: no source needed
    assert p["readable"] and p["rows"] == len(TEXTS) and p["weight"] > 0

    d_home = _home(tmp_path / "d", home)                              # `pending` fetches by itself too
    [p] = Cli(d_home, capsys).json("pending", str(dn), "--peer", a.addrs[0])["pending"]
    assert p["readable"] and p["rows"] == len(TEXTS)
    cli_b.json("review", str(dn), str(c), "--accept", "--reason", "read from the contributor's node", key="curator0")

    # a contributor node serving one row corrupted: refused in one line naming the block, never stored
    a.stop()
    evil = make_host(home, tamper=lambda k, d: d[:-2] + b"X}" if str(k) == rows[2] else d)
    c_home = _home(tmp_path / "c", home)
    code, _, err = Cli(c_home, capsys)("show", str(dn), "--contribution", str(c), "--peer", evil.addrs[0])
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error: ") and rows[2] in last and "failed verification" in last, err[-2000:]
    assert not AdapterStore(c_home / "ipfs").blocks.has(as_cid(rows[2]))
