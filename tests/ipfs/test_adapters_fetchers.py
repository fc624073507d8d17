"""Adapters through the CLI (add, list, pull, export-car, import-car) and the two non-p2p fetchers: a trustless
gateway and a Kubo RPC API, each played by a small local aiohttp server that serves the blocks of the reference
importer's CAR (so what is fetched is checked against CIDs nobody here computed)."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import pytest
from aiohttp import web

from openlora.node.cli import main
from openlora.node.ipfs.adapters import MANIFEST, AdapterStore
from openlora.content.car import read_car
from openlora.node.ipfs.fetchers import GatewayFetcher, KuboRpcFetcher
from openlora.node.ipfs.source import IpfsAdapterSource
from openlora.inference.sources import AdapterSource, AdapterSourceError


def cli(capsys, *args) -> str:
    capsys.readouterr()
    try:
        main(list(args))
    except SystemExit as e:
        if e.code:
            raise AssertionError(f"exit {e.code}: {capsys.readouterr().err}")
    return capsys.readouterr().out.strip()


@pytest.fixture(scope="module")
def published(tiny_adapter, tmp_path_factory, reference_cids):
    """An adapter added on one home; its exported directory; the reference CAR of that directory."""
    home = tmp_path_factory.mktemp("home-a")
    store = AdapterStore(home / "ipfs")
    cid, manifest = store.add(tiny_adapter, author="0x" + "ab" * 20)
    exported = store.materialize(cid)
    ref_dir = tmp_path_factory.mktemp("ref") / "adapter"
    shutil.copytree(exported, ref_dir)
    car = ref_dir.parent / "adapter.car"
    [ref_cid] = reference_cids([ref_dir], car=car)
    with open(car, "rb") as f:
        roots, blocks = read_car(f)
        blocks = dict(blocks)
    return {"home": home, "cid": str(cid), "ref_cid": ref_cid, "manifest": manifest, "car": car,
            "blocks": {str(c): d for c, d in blocks.items()}, "dir": exported}


def test_adapter_cid_equals_reference_and_manifest(published, tiny_adapter):
    assert published["cid"] == published["ref_cid"]
    m = published["manifest"]
    assert m["schema"] == "openlora.adapter/1" and m["rank"] == 4 and m["base_model"].startswith("openlora/tiny")
    assert m["files"]["adapter_model.safetensors"]["size"] == (tiny_adapter / "adapter_model.safetensors").stat().st_size
    assert not (tiny_adapter / MANIFEST).exists()  # add never writes into the source directory


def test_cli_add_list_car_pull(published, tiny_adapter, tmp_path, capsys):
    h1, h2 = tmp_path / "h1", tmp_path / "h2"
    cid = cli(capsys, "--home", str(h1), "adapters", "add", str(published["dir"]))
    assert cid == published["cid"]  # the manifest inside is reused, so the CID is stable
    assert cli(capsys, "--home", str(h1), "cid", str(published["dir"])) == cid
    assert cid in cli(capsys, "--home", str(h1), "adapters", "list")
    car = tmp_path / "a.car"
    cli(capsys, "--home", str(h1), "adapters", "export-car", cid, str(car))
    assert f"{cid}  complete, adapter" in cli(capsys, "--home", str(h2), "adapters", "import-car", str(car))
    out = Path(cli(capsys, "--home", str(h2), "adapters", "pull", cid))
    for name in ("adapter_config.json", "adapter_model.safetensors", "manifest.json"):
        assert (out / name).read_bytes() == (published["dir"] / name).read_bytes()
    with pytest.raises(AssertionError, match="no network source is configured"):
        cli(capsys, "--home", str(tmp_path / "h3"), "adapters", "pull", cid)


class Server:
    """An aiohttp app on 127.0.0.1 in its own thread with its own event loop."""

    def __init__(self, app: web.Application):
        self.app, self.loop = app, asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        if not started.wait(10):
            raise RuntimeError("test server did not start")

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def gateway(published):
    state = {"mode": "ok"}

    async def handler(request):
        car = published["car"].read_bytes()
        if request.match_info["cid"] != published["cid"]:
            return web.Response(status=404, text="not found")
        if state["mode"] == "corrupt":
            car = car[:-10] + bytes(b ^ 0x55 for b in car[-10:])
        elif state["mode"] == "truncated":
            car = car[:len(car) // 2]
        return web.Response(body=car, content_type="application/vnd.ipld.car")

    app = web.Application()
    app.router.add_get("/ipfs/{cid}", handler)
    srv = Server(app)
    yield f"http://127.0.0.1:{srv.port}", state
    srv.close()


@pytest.fixture
def kubo(published):
    state = {"corrupt": None, "missing": None}

    async def block_get(request):
        cid = request.query.get("arg", "")
        data = published["blocks"].get(cid)
        if data is None or cid == state["missing"]:
            return web.json_response({"Message": f"block {cid} not found", "Code": 0, "Type": "error"}, status=500)
        if cid == state["corrupt"]:
            data = data[::-1]
        return web.Response(body=data, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_post("/api/v0/block/get", block_get)
    srv = Server(app)
    yield f"/ip4/127.0.0.1/tcp/{srv.port}/http", state
    srv.close()


def _leaf(published):
    return next(c for c in published["blocks"] if c.startswith("bafk"))


def test_gateway_fetch_and_failures(gateway, published, tmp_path):
    url, state = gateway
    src = IpfsAdapterSource(AdapterStore(tmp_path / "g"), [GatewayFetcher(url)])
    assert isinstance(src, AdapterSource)
    for mode, msg in (("corrupt", "failed verification"), ("truncated", "truncated")):
        state["mode"] = mode
        with pytest.raises(AdapterSourceError, match=msg):
            IpfsAdapterSource(AdapterStore(tmp_path / mode), [GatewayFetcher(url)]).fetch(published["cid"])
    state["mode"] = "ok"
    out = src.fetch(published["cid"])
    assert (out / "adapter_model.safetensors").read_bytes() == (published["dir"] / "adapter_model.safetensors").read_bytes()
    assert json.loads((out / MANIFEST).read_text()) == published["manifest"]


def test_kubo_rpc_fetch_fails_over_and_names_the_cid(kubo, gateway, published, tmp_path):
    addr, state = kubo
    leaf = _leaf(published)
    state["corrupt"] = leaf
    store = AdapterStore(tmp_path / "k")
    with pytest.raises(AdapterSourceError, match=f"{leaf}.*failed verification"):
        IpfsAdapterSource(store, [KuboRpcFetcher(addr)]).fetch(published["cid"])
    assert not store.blocks.has(leaf)
    state["corrupt"], state["missing"] = None, leaf
    with pytest.raises(AdapterSourceError, match=f"could not get block {leaf}"):
        IpfsAdapterSource(store, [KuboRpcFetcher(addr)]).fetch(published["cid"])
    # Kubo lacks a block, the gateway has it: the source fails over and completes the DAG.
    out = IpfsAdapterSource(store, [KuboRpcFetcher(addr), GatewayFetcher(gateway[0])]).fetch(published["cid"])
    assert (out / "adapter_config.json").read_bytes() == (published["dir"] / "adapter_config.json").read_bytes()
    state["missing"] = None
    fresh = AdapterStore(tmp_path / "k2")
    IpfsAdapterSource(fresh, [KuboRpcFetcher(addr)]).fetch(published["cid"])
    assert fresh.complete(published["cid"])
