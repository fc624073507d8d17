"""`openlora-node devnet up | down | status` as a user runs it (subprocess): up twice deploys once, state survives
down/up, down stops only its own Anvil, a taken port is one clear line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from openlora.devnet.chain import free_port

REPO = Path(__file__).resolve().parents[2]


def _cli(home: Path, *args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openlora.node.cli", "--home", str(home), "devnet", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def home(tmp_path):
    yield tmp_path
    _cli(tmp_path, "down")  # never leave an anvil behind


def test_up_twice_status_down_up(home):
    port = str(free_port())
    first = _cli(home, "up", "--port", port)
    assert first.returncode == 0, first.stderr
    assert "deployed Settlement" in first.stdout and "created Datanet 1" in first.stdout
    dep = json.loads((home / "deployment.json").read_text())
    assert dep == json.loads((home / "devnet" / "deployment.json").read_text())
    assert dep["chain_id"] == 31337 and set(dep["addresses"]) >= {"Settlement", "DatanetRegistry"}

    second = _cli(home, "up", "--port", port)
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stdout and "reused" in second.stdout and "deployed Settlement" not in second.stdout

    st = json.loads(_cli(home, "status", "--json").stdout)
    assert st["running"] and st["deployment"]["live"] is True

    assert "stopped anvil" in _cli(home, "down").stdout
    assert json.loads(_cli(home, "status", "--json").stdout)["running"] is False
    assert "not running" in _cli(home, "down").stdout

    third = _cli(home, "up", "--port", port)  # state was persisted: the same deployment is reused
    assert third.returncode == 0, third.stderr
    assert "started" in third.stdout and "reused" in third.stdout
    assert json.loads((home / "deployment.json").read_text())["addresses"] == dep["addresses"]


def test_port_taken_is_one_clear_line(home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        res = _cli(home, "up", "--port", str(s.getsockname()[1]))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "already in use" in lines[0], res.stderr


def test_down_leaves_foreign_anvil_alone(home, anvil):
    """A pid file pointing at an anvil this directory did not start (the test fixture's) is not acted on."""
    d = home / "devnet"
    d.mkdir()
    (d / "anvil.pid").write_text(json.dumps({"pid": anvil.proc.pid, "host": "127.0.0.1", "port": anvil.port,
                                             "chain_id": 31337, "dir": str(d)}))
    res = _cli(home, "down")
    assert res.returncode == 0 and "not running" in res.stdout
    assert anvil.proc.poll() is None


def test_up_funds_a_lane_to_the_homes_node_for_the_demo_requester(home):
    pw = home / "pw"
    pw.write_text("devnet-test-password\n")
    init = subprocess.run([sys.executable, "-m", "openlora.node.cli", "--home", str(home), "init", "--password-file", str(pw)],
                          cwd=REPO, capture_output=True, text=True, timeout=90)
    assert init.returncode == 0, init.stderr
    node = init.stdout.strip().splitlines()[-1].split()[-1]
    port = str(free_port())
    res = _cli(home, "up", "--port", port)
    assert res.returncode == 0, res.stderr
    key_file = home / "devnet" / "demo-requester.key"
    assert f"deposited 10,000 oUSD to node {node}" in res.stdout and oct(key_file.stat().st_mode)[-3:] == "600"
    from eth_account import Account
    from web3 import Web3

    from openlora.attribution.deployment import read_deployment
    requester = Account.from_key(key_file.read_text().strip()).address
    dep = read_deployment(home / "deployment.json")
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}"))
    assert dep.contract(w3, "Settlement").functions.balanceOf(requester, node).call() == 10_000 * 10**18
    assert w3.eth.get_balance(node) >= 10**18                 # gas for its settlement transactions
    again = _cli(home, "up", "--port", port)               # idempotent: no second deposit
    assert "already has a deposit" in again.stdout
    assert dep.contract(w3, "Settlement").functions.balanceOf(requester, node).call() == 10_000 * 10**18
    # the node in this home now reads the chain on --port, and says so once
    from openlora.node.config import load_config
    cfg = load_config(home, environ={})
    assert cfg.chain.rpc_url == f"http://127.0.0.1:{port}" and cfg.chain.chain_id == dep.chain_id
    assert "chain.rpc_url" in res.stdout and "chain.rpc_url" not in again.stdout
    assert "# openlora-node configuration" in (home / "config.toml").read_text()   # comments kept
