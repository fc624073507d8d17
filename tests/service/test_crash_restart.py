"""Crash safety of a real node process: SIGKILL while receipts are pending, and again while a batch transaction is
in flight (sent, not mined); after each restart every receipt settles exactly once on chain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from eth_account import Account

from openlora.node.config import DEFAULT_CONFIG_TOML
from openlora.node.sdk import OpenLoRAClient
from openlora.node.storage import Store

PASSWORD = "crash-test-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, what: str, deadline_s: float = 120.0, proc: subprocess.Popen | None = None):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the node exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{proc.stderr.read().decode(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class NodeProcess:
    def __init__(self, home: Path, anvil_url: str, chain_id: int, model: Path):
        self.home, self.port = home, free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLORA_")}
        self.env.update(OPENLORA_PASSWORD=PASSWORD, OPENLORA_API_PORT=str(self.port), OPENLORA_P2P_ENABLED="false",
                        OPENLORA_CHAIN_RPC_URL=anvil_url, OPENLORA_CHAIN_CHAIN_ID=str(chain_id),
                        OPENLORA_MODEL_PATH=str(model))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, batch_max_age_s: float) -> None:
        env = dict(self.env, OPENLORA_SETTLEMENT_BATCH_MAX_AGE_S=str(batch_max_age_s))
        self.proc = subprocess.Popen([sys.executable, "-m", "openlora.node.cli", "--home", str(self.home), "start"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def healthy():
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(healthy, "the node's HTTP API", proc=self.proc)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture()
def node_home(tmp_path, deployment, accounts):
    from openlora.devnet.seed import ROLES
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(DEFAULT_CONFIG_TOML)
    key = accounts[ROLES["node"]].key          # the seeded demo node: requesters deposit into lanes to it
    (home / "keystore.json").write_text(json.dumps(Account.encrypt(key, PASSWORD)))
    deployment.write(home / "deployment.json")
    return home


def settled_batches(chain, node: str) -> list:
    return chain.settlement.events.BatchSettled().get_logs(from_block=0, argument_filters={"node": node})


def test_sigkill_with_pending_receipts_and_with_a_batch_in_flight(tiny, anvil, chain, node_home):
    model = tiny.model("llama")
    node = NodeProcess(node_home, anvil.url, chain.w3.eth.chain_id, model)
    requester = chain.requester(deposit=10**18)
    sdk = OpenLoRAClient(node.url, requester.key)
    store_url = f"sqlite:///{node_home / 'node.db'}"
    before_batches = len(settled_batches(chain, chain.node.address))
    debited_before = chain.settlement.functions.debited(requester.address, chain.node.address).call()

    # 1. served, receipts committed, settlement far away: SIGKILL with everything pending
    node.start(batch_max_age_s=3600)
    rids = [sdk.completions(model="openlora/tiny-llama-s0", prompt=[5, 6, 7, i], max_tokens=3,
                            temperature=0.0)["openlora"]["request_id"] for i in range(3)]
    node.kill()
    store = Store(store_url)
    assert store.counts().get("pending") == 3
    prices = sum(int(store.get_receipt(r)["price"]) for r in rids)
    assert prices > 0
    store.close()

    # 2. restart with settlement due, but the chain does not mine: SIGKILL once the batch transaction is sent
    chain.w3.provider.make_request("evm_setAutomine", [False])
    try:
        node.start(batch_max_age_s=0.2)

        def submitted():
            s = Store(store_url)
            try:
                return [b for b in s.open_batches() if b["state"] == "submitted" and b.get("tx_hash")]
            finally:
                s.close()
        wait_for(submitted, "the batch transaction to be sent", proc=node.proc)
        node.kill()
    finally:
        chain.w3.provider.make_request("evm_setAutomine", [True])
    chain.w3.provider.make_request("evm_mine", [])            # the in-flight transaction lands after the crash

    # 3. restart: the node finds its batch settled on chain, marks it, and never settles it again
    node.start(batch_max_age_s=0.2)

    def all_settled():
        s = Store(store_url)
        try:
            return all(s.get_receipt(r)["status"] == "settled" for r in rids)
        finally:
            s.close()
    wait_for(all_settled, "every receipt to be settled", proc=node.proc)
    time.sleep(1.0)                                           # a few loop turns: a double settlement would show
    node.proc.send_signal(signal.SIGINT)
    assert node.proc.wait(60) == 0
    assert len(settled_batches(chain, chain.node.address)) == before_batches + 1, "settled exactly once"
    debited = chain.settlement.functions.debited(requester.address, chain.node.address).call()
    assert debited - debited_before == prices
