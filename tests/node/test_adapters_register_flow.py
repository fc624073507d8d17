"""Regression of the README flow on a devnet: `adapters add DIR`, then `request --model CID` to a real node process.

Before issue 17 nothing registered an adapter on chain, so the signed request was refused (earlier: a TypeError
traceback in the SDK) and an unsigned one (free local mode) failed after generating (503 receipt_store_unavailable).
Now `adapters register CID --price --datanet` sits between the two: before it both requests are refused in one line
(404 adapter_not_registered, before any compute), after it the same commands are served and the signed request's
receipt prices the adapter and pays its Datanet's contributors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from eth_account import Account

from openlora.devnet.chain import free_port
from openlora.devnet.seed import ROLES
from openlora.node.cli import main
from openlora.node.config import DEFAULT_CONFIG_TOML
from openlora.node.sdk import OpenLoRAClient
from tests.chain_fixtures import accounts, anvil, deployment, w3  # noqa: F401  (pytest fixtures)

PASSWORD = "readme-flow-password"
NODE_PRICE = 10**12            # settlement.price_per_token_wei in the default config


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out.strip(), out.err.strip()


def wait_for(cond, what: str, proc: subprocess.Popen, deadline_s: float = 120.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the node exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{proc.stderr.read().decode(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def node_env(tmp_path, anvil, deployment, accounts, tiny, monkeypatch):
    """A home for the seeded demo node (requesters' lanes go to it), on the session's devnet, serving the tiny
    Llama in free local mode (unsigned requests are served too; signed ones are checked and charged as always);
    the same settings for the CLI (this process) and the node (a subprocess)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(DEFAULT_CONFIG_TOML)
    key = accounts[ROLES["node"]].key
    (home / "keystore.json").write_text(json.dumps(Account.encrypt(key, PASSWORD, kdf="scrypt", iterations=16)))
    deployment.write(home / "deployment.json")
    port = free_port()
    env = {"OPENLORA_PASSWORD": PASSWORD, "OPENLORA_CHAIN_RPC_URL": anvil.url, "OPENLORA_MODEL_PATH": str(tiny.model()),
           "OPENLORA_API_PORT": str(port), "OPENLORA_P2P_ENABLED": "false",
           "OPENLORA_SETTLEMENT_BATCH_MAX_AGE_S": "3600", "OPENLORA_API_FREE_LOCAL_MODE": "true"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return home, f"http://127.0.0.1:{port}", env


def test_readme_flow_add_register_request(node_env, tiny, tmp_path, accounts, deployment, capsys):
    home, url, env = node_env
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny.adapter(tiny.model(), rank=4, seed=21), adapter)
    key_file = tmp_path / "requester.key"
    key_file.write_text("0x" + accounts[ROLES["requester"]].key.hex())

    code, cid, err = run(capsys, "--home", str(home), "adapters", "add", str(adapter))
    assert code == 0 and cid.startswith("bafy"), err

    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLORA_")} | env
    proc = subprocess.Popen([sys.executable, "-m", "openlora.node.cli", "--home", str(home), "start"], env=proc_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(healthy, "the node to be ready", proc)
        request = ["request", "--url", url, "--key-file", str(key_file), "--model", cid, "--max-tokens", "4",
                   "Hello"]

        unsigned = ["request", "--url", url, "--unsigned", "--model", cid, "--max-tokens", "4", "Hello"]

        def submitted() -> list[str]:       # requests handed to the engine for this adapter
            with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                text = r.read().decode()
            return [line for line in text.splitlines() if line.startswith(f'openlora_requests_total{{adapter="{cid}"}}')]

        # before registration: one line, nothing computed or charged, signed or not
        for args in (request, unsigned):
            code, out, err = run(capsys, *args)
            assert code == 1 and "Traceback" not in err, err
            assert err.splitlines()[-1] == (f"error: 404 adapter_not_registered: adapter {cid} is not registered "
                                            f"in AdapterRegistry {deployment.address('AdapterRegistry')}")
        assert submitted() == []

        code, out, err = run(capsys, "--home", str(home), "adapters", "register", cid, "--price", "5",
                             "--datanet", f"{deployment.extra['datanet_id']}")
        assert code == 0 and out.startswith(f"registered adapter {cid}"), err
        assert "not announced" in err and "openlora-node start" in err      # this node runs without p2p

        code, out, err = run(capsys, *unsigned)
        assert code == 0 and "-- request cmpl-" in err, err
        assert submitted() == [f'openlora_requests_total{{adapter="{cid}"}} 1.0']
        code, out, err = run(capsys, *request)
        assert code == 0 and "Traceback" not in err, err
        rid = err.splitlines()[-1].split()[2].rstrip(",")
        receipt = OpenLoRAClient(url).receipt(rid)
        assert receipt["adapter_cid"] == cid
        tokens = receipt["prompt_tokens"] + receipt["completion_tokens"]
        assert tokens > 0 and int(receipt["price"]) == (5 + NODE_PRICE) * tokens
        paid = {a for a, _ in receipt["attribution"]}
        contributors = {accounts[i].address for i in ROLES["contributors"]}
        assert accounts[ROLES["node"]].address in paid and paid & contributors, receipt["attribution"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
