"""The dashboard's test bed: a real Anvil with the contracts deployed and the demo Datanet seeded into a node home
(its blockstore holds the Datanet's content), a tiny engine with one adapter registered on the Datanet, a node
(build_service + build_app, as `openlora-node start` wires them) whose receipts settle on chain, and a headless
Debian Chromium driven by Playwright. Tests that need the browser skip, with the reason, where either is missing.

Traffic: signed requests from two requesters (SDK), settled in two batches; the first contributor claims between
them (so claimed, claimable and unsettled are all non-zero for someone); a third round stays unsettled. One more
contribution, two of whose rows duplicate accepted ones, waits for review."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from openlora.devnet.chain import EphemeralAnvil
from openlora.devnet.deploy import deploy_all, dev_accounts, send
from openlora.devnet.seed import ROLES, raw_cid, seed

ADAPTER_PRICE = 3 * 10**12


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium (never Playwright's own download)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it is in the dev extra: make install)")
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed: run `apt-get install chromium` (make install does it as root)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page; any console error or uncaught exception on it fails the test at teardown."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.errors = errors
    yield pg
    ctx.close()
    assert not errors, errors


def screenshot(page, name: str) -> None:
    """With DASHBOARD_SCREENSHOTS=<dir>, save a full-page PNG of the view (how docs/dashboard-*.png are made)."""
    where = os.environ.get("DASHBOARD_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"dashboard-{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def web(tiny, tmp_path_factory):
    from openlora.attribution import payouts
    from openlora.attribution.lineage import Lineage, register_adapter
    from openlora.node.attribution_index import build_attributor
    from openlora.content.blockstore import Blockstore
    from openlora.datanets import contribution as contrib
    from openlora.datanets.registry import Registry
    from openlora.devnet.demo_texts import IPFS
    from openlora.inference import LLM
    from openlora.inference.client import AsyncEngine
    from openlora.node.api import build_app
    from openlora.node.config import DEFAULT_CONFIG_TOML, load_config, set_config_values
    from openlora.node.dashboard import KEY
    from openlora.node.dashboard_data import Sources
    from openlora.node.sdk import OpenLoRAClient
    from openlora.node.settlement import SettlementLoop
    from openlora.node.storage import Store
    from openlora.node.wiring import Chain, build_service
    from tests.service.server_util import ServerThread

    home = tmp_path_factory.mktemp("web-home")
    (home / "config.toml").write_text(DEFAULT_CONFIG_TOML)
    accts = dev_accounts()
    with EphemeralAnvil() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        dep = deploy_all(w3, accts[ROLES["deployer"]].address, accts[ROLES["protocol"]].address)
        dep = type(dep)(**{**dep.__dict__, "extra": seed(w3, dep, home=home)})
        dep.write(home / "deployment.json")
        set_config_values(home, "chain", {"rpc_url": anvil.url, "chain_id": int(w3.eth.chain_id)})
        set_config_values(home, "settlement", {"batch_max_age_s": 0.1})
        # spans of one token count (the tiny random model reproduces no real sentence): some completions match
        set_config_values(home, "attribution", {"min_span_tokens": 1, "max_span_occurrences": 65536})
        cfg = load_config(home, environ={})
        extra = dep.extra

        model = tiny.model("llama")
        adapter_dir = tiny.adapter(model, rank=8, seed=21)
        cid = raw_cid((adapter_dir / "adapter_model.safetensors").read_bytes())
        author = accts[ROLES["author"]].address
        # registered with its lineage (trained on version 1 of the demo Datanet), so receipts carry span evidence
        register_adapter(w3, dep, Account.from_key(accts[ROLES["author"]].key), cid, "openlora/tiny-llama-s0",
                         ADAPTER_PRICE, {extra["datanet_id"]: 10_000},
                         Lineage(((extra["datanet_id"], 1),), manifest_cid=cid, base_weights_cid=cid))

        # the second requester funds its lane to the node
        r2 = accts[ROLES["requester2"]]
        node = Account.from_key(accts[ROLES["node"]].key)
        st = dep.contract(w3, "Settlement")
        send(w3, dep.contract(w3, "OpenLoRAToken").functions.approve(st.address, 10**24), r2.address, "approve")
        send(w3, st.functions.deposit(node.address, 10**22), r2.address, "deposit")

        # a contribution waiting for review: two rows repeat accepted ones
        blocks = Blockstore(home / "ipfs")
        rows = [{"text": IPFS[0]}, {"text": IPFS[1]}, {"text": "A fresh note on pinning: a node keeps the blocks "
                                                           "it pins and may drop the others when it needs room."}]
        p = contrib.prepare("".join(json.dumps(r) + "\n" for r in rows).encode(), "more-notes.jsonl")
        pending_cid = contrib.store(p, blocks, "CC0-1.0")
        reg = Registry(w3, dep)
        pending_id = reg.contribute(Account.from_key(accts[ROLES["contributors"][0]].key), extra["datanet_id"],
                                    pending_cid, len(p.data)).value

        # and one whose content this node does not hold (its contributor's node has it)
        from openlora.devnet.seed import MemoryBlocks
        elsewhere = contrib.prepare(b'{"text": "kept on another machine"}\n', "elsewhere.jsonl")
        unheld_cid = contrib.store(elsewhere, MemoryBlocks(), "CC0-1.0")
        unheld_id = reg.contribute(Account.from_key(accts[ROLES["contributors"][1]].key), extra["datanet_id"],
                                   unheld_cid, len(elsewhere.data)).value

        llm = LLM(model, dtype="float32", device="cpu")
        llm.load_adapter("law", adapter_dir, identity=cid)
        client = AsyncEngine(llm.engine)
        store = Store(cfg.database_url)
        svc = build_service(cfg, node, client, store, Chain(w3, dep))
        svc.attributor = build_attributor(cfg, Chain(w3, dep), Path(model), node.address)
        assert svc.attributor is not None
        loop = SettlementLoop(store, w3, dep, node, batch_max_age_s=0.1, confirmations=1,
                              publish_dir=home / "receipts", poll_s=0.05)
        svc.settlement = loop
        app = build_app(svc, dashboard=Sources(w3=w3, deployment=dep, blocks=blocks, cfg=cfg,
                                              publish_dirs=(home / "receipts",)))
        app[KEY]["state"].sampler.period_s = 0.25
        with ServerThread(app) as server:
            sdks = [OpenLoRAClient(server.url, accts[ROLES[k]].key) for k in ("requester", "requester2")]

            def traffic(n: int, start: int = 0) -> list[str]:
                out = []
                for i in range(start, start + n):
                    sdk = sdks[i % 2]
                    model_name = "law" if i % 3 else llm.engine.spec.model_id
                    out.append(sdk.completions(model=model_name, prompt=[5, 6, 7, 8 + i % 50], max_tokens=4,
                                               temperature=0.0)["openlora"]["request_id"])
                return out

            traffic(6)
            assert asyncio.run_coroutine_threadsafe(loop.settle_once(), server.loop).result(120)
            contributor = extra["contributions"][0]["contributor"]
            mine = payouts.payouts_of(w3, dep, contributor, from_block=dep.block).payouts
            send(w3, st.functions.claimMany(contributor, payouts.claim_items(mine)), accts[0].address, "claim")
            traffic(5, 6)
            assert asyncio.run_coroutine_threadsafe(loop.settle_once(), server.loop).result(120)
            traffic(3, 11)                               # not settled: the node's receipts still pending
            yield {"w3": w3, "dep": dep, "accts": accts, "server": server, "store": store, "cid": cid,
                   "author": author, "node": node.address, "extra": extra, "home": home, "cfg": cfg, "llm": llm,
                   "contributor": contributor, "pending_id": pending_id, "unheld_id": unheld_id,
                   "sdks": sdks, "traffic": traffic,
                   "svc": svc, "app": app}
        client.shutdown()
        store.close()
