"""`openlora-node demo traffic` against a node on a real Anvil: both demo requesters' lanes get funded, signed
requests mixing the base model and the adapter are served, and every one of them has a receipt in the node's store."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from eth_account import Account
from web3 import Web3

from openlora.devnet.chain import EphemeralAnvil
from openlora.devnet.deploy import dev_accounts, send
from openlora.devnet.seed import ROLES, raw_cid
from openlora.inference import LLM
from openlora.inference.client import AsyncEngine
from openlora.node.api import build_app
from openlora.node.cli import cli
from openlora.node.commands.demo import topic_prompts
from openlora.node.config import DEFAULT_CONFIG_TOML, parse_config
from openlora.node.storage import Store
from openlora.node.wiring import Chain, build_service
from tests.chain_fixtures import deploy_seeded
from tests.service.server_util import ServerThread


@pytest.fixture(scope="module", autouse=True)
def sdk_ledger_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENLORA_SDK_DIR", str(tmp_path_factory.mktemp("sdk-ledger")))
        yield


def test_demo_traffic_is_signed_served_and_receipted_for_both_requesters(tiny, tmp_path):
    accts = dev_accounts()
    with EphemeralAnvil() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        dep = deploy_seeded(w3, accts)
        model = tiny.model("llama")
        adapter_dir = tiny.adapter(model, rank=8, seed=21)
        cid = raw_cid((adapter_dir / "adapter_model.safetensors").read_bytes())
        send(w3, dep.contract(w3, "AdapterRegistry").functions.register(
            cid, "openlora/tiny-llama-s0", 10**12, [dep.extra["datanet_id"]], [10_000]), accts[8].address, "reg")
        home = tmp_path / "home"
        home.mkdir()
        dep.write(home / "deployment.json")
        cfg = parse_config(DEFAULT_CONFIG_TOML, tmp_path, environ={})
        llm = LLM(model, dtype="float32", device="cpu")
        llm.load_adapter(cid, adapter_dir, identity=cid)
        client = AsyncEngine(llm.engine)
        store = Store(f"sqlite:///{tmp_path / 'node.db'}")
        svc = build_service(cfg, Account.from_key(accts[ROLES["node"]].key), client, store, Chain(w3, dep))
        try:
            with ServerThread(build_app(svc)) as server:
                res = CliRunner().invoke(cli, ["--home", str(home), "demo", "traffic", "--url", server.url,
                                               "--requests", "6", "--interval", "0", "--max-tokens", "4",
                                               "--rpc-url", anvil.url])
        finally:
            client.shutdown()
        assert res.exit_code == 0, res.output
        ids = re.findall(r"receipt (\S+)", res.output)
        assert len(ids) == 6 and "sent 6 requests (0 refused)" in res.output
        receipts = [store.get_receipt(i) for i in ids]
        assert all(r is not None for r in receipts)
        requesters = {r["requester"].lower() for r in receipts}
        assert requesters == {accts[ROLES["requester"]].address.lower(), accts[ROLES["requester2"]].address.lower()}
        said = re.findall(r"price (\d+) wei  (\d+ spans?|static|no Datanet)", res.output)
        assert len(said) == 6 and all(int(p) > 0 for p, _ in said)     # each line says its price and attribution
        models = {r["adapter_cid"] for r in receipts}
        assert cid in models and None in models       # the adapter (on topic) and the base model both served
        settlement = dep.contract(w3, "Settlement")
        for role in ("requester", "requester2"):
            assert settlement.functions.balanceOf(accts[ROLES[role]].address, svc.node_address).call() > 0
        store.close()


def test_topic_prompts_are_starts_of_datanet_rows():
    from openlora.devnet import demo_texts
    prompts = topic_prompts(words=8)
    assert len(prompts) > 20
    assert all(len(p.split()) == 8 for p in prompts)
    assert all(any(row.startswith(p) for row in demo_texts.LORA + demo_texts.ATTRIBUTION) for p in prompts)


def test_demo_traffic_without_a_node_is_one_clear_line(tmp_path):
    accts = dev_accounts()
    with EphemeralAnvil() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        dep = deploy_seeded(w3, accts)
        dep.write(tmp_path / "deployment.json")
        res = CliRunner().invoke(cli, ["--home", str(tmp_path), "demo", "traffic", "--url", "http://127.0.0.1:9",
                                       "--requests", "1", "--rpc-url", anvil.url])
    # the CLI's main() prints a NodeError as one "error: ..." line and exits 1
    from openlora.node.errors import NodeError
    assert isinstance(res.exception, NodeError) and "cannot reach the node" in str(res.exception)
    assert "\n" not in str(res.exception)
