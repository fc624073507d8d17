"""`openlora-node demo adapter` on a real Anvil with the demo Datanet seeded into a node home (tiny base model): the
first run trains the adapter with the Model Factory from the Datanet's version and registers it with its lineage;
the second run finds it (no training, no second registration)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from web3 import Web3

from openlora.attribution.lineage import read_adapter
from openlora.devnet.chain import EphemeralAnvil
from openlora.devnet.deploy import deploy_all, dev_accounts
from openlora.devnet.seed import ROLES, seed
from openlora.node.cli import cli
from openlora.node.config import set_config_values


@pytest.mark.timeout(600)
def test_demo_adapter_trains_once_registers_with_lineage_then_is_reused(tmp_path, monkeypatch):
    accts = dev_accounts()
    home = tmp_path / "home"
    pw = tmp_path / "pw"
    pw.write_text("demo-password-1\n")
    runner = CliRunner()
    res = runner.invoke(cli, ["--home", str(home), "init", "--password-file", str(pw)])
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("OPENLORA_MODEL_PATH", "demo")           # the tiny generated base: fast
    with EphemeralAnvil() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        dep = deploy_all(w3, accts[ROLES["deployer"]].address, accts[ROLES["protocol"]].address)
        extra = seed(w3, dep, home=home)                         # the version's blocks land in <home>/ipfs
        dep = type(dep)(**{**dep.__dict__, "extra": extra})
        dep.write(home / "deployment.json")
        set_config_values(home, "chain", {"rpc_url": anvil.url, "chain_id": int(w3.eth.chain_id)})

        first = runner.invoke(cli, ["--home", str(home), "demo", "adapter"])
        assert first.exception is None, first.output
        assert "training the demo adapter" in first.output
        cid = re.search(r"demo adapter (\S+) \(registered at", first.output).group(1)
        rec = read_adapter(w3, dep, cid)
        assert rec.author == accts[ROLES["author"]].address
        assert rec.lineage is not None and rec.lineage.datanet_versions == ((extra["datanet_id"], 1),)
        assert rec.datanet_weights == ((extra["datanet_id"], 10_000),)

        again = runner.invoke(cli, ["--home", str(home), "demo", "adapter"])
        assert again.exception is None, again.output
        assert "training" not in again.output and f"demo adapter {cid} (registered)" in again.output
