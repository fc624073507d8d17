"""The SDK signs no more than its own bound: a dishonest node (a real aiohttp server on loopback serving a lying
/v1/node) that reports huge pending charges, prices or model lengths gets a client-side error and no signature;
the per-lane ledger (a JSON file, mode 0600) records the highest cap signed before the signature leaves."""

from __future__ import annotations

import json
import os
import stat

import pytest
from aiohttp import web
from eth_account import Account

from openlora.attribution import eip712
from openlora.node.sdk import OpenLoRAClient, OpenLoRAError
from openlora.node.sdk_ledger import Lane, SpendLimits, VoucherLedger
from tests.service.server_util import ServerThread

SETTLEMENT = "0x" + "5e" * 20
NODE = Account.create()


class FakeNode:
    """A node's /v1/node with whatever standing and prices the test sets; records the signed requests it gets."""

    def __init__(self):
        self.standing = {"pending": 0, "debited": 0, "deposit": 10**18}
        self.price, self.max_model_len, self.settlement = 10, 64, SETTLEMENT
        self.received: list[dict] = []
        app = web.Application()
        app.router.add_get("/v1/node", self.node)
        app.router.add_post("/v1/completions", self.complete)
        self.app = app

    async def node(self, request):
        info = {"address": NODE.address, "base_model": "base", "free_local_mode": False,
                "max_model_len": self.max_model_len, "chain_id": 31337, "settlement": self.settlement,
                "price_per_token": {"base": self.price}, "adapters": {}}
        if request.query.get("requester"):
            info["requester"] = {"address": request.query["requester"], **self.standing}
        return web.json_response(info)

    async def complete(self, request):
        self.received.append(await request.json())
        return web.json_response({"choices": [{"text": "ok"}], "openlora": {"request_id": "r"}})


@pytest.fixture
def node():
    fake = FakeNode()
    with ServerThread(fake.app) as server:
        fake.url = server.url
        yield fake


def client(node, tmp_path, key, **kw) -> OpenLoRAClient:
    return OpenLoRAClient(node.url, key, ledger_dir=str(tmp_path / "ledger"), **kw)


def lane_of(requester) -> Lane:
    return Lane(31337, SETTLEMENT, NODE.address, requester.address)


def test_honest_report_is_signed_and_recorded_before_it_leaves(node, tmp_path):
    me = Account.create()
    sdk = client(node, tmp_path, me.key)
    auth = sdk.authorize({"model": "base", "prompt": [1, 2], "max_tokens": 4})
    assert int(auth["maxPrice"]) == 10 * 64 and int(auth["voucher"]["cumulativeCap"]) == 640
    v = eip712.Voucher(me.address, NODE.address, 640)
    assert eip712.is_signed_by(v, eip712.Domain(31337, auth["verifyingContract"]),
                               bytes.fromhex(auth["voucher"]["signature"][2:]), me.address)
    ledger = VoucherLedger(tmp_path / "ledger")
    rec = ledger.read(lane_of(me))
    assert (rec.cap, rec.recent, rec.signed) == (640, [640], 1)
    assert stat.S_IMODE(os.stat(ledger.path(lane_of(me))).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "ledger").st_mode) == 0o700
    # the node now honestly reports 300 charged (<= 640 signed): the next cap is 300 + 640
    node.standing["pending"] = 300
    auth = sdk.authorize({"model": "base", "prompt": [1, 2], "max_tokens": 4})
    assert int(auth["voucher"]["cumulativeCap"]) == 940
    assert ledger.read(lane_of(me)).cap == 940


def test_node_reporting_huge_pending_gets_an_error_not_a_signature(node, tmp_path):
    me = Account.create()
    sdk = client(node, tmp_path, me.key)
    sdk.completions(model="base", prompt=[1, 2], max_tokens=4)          # cap 640 signed
    node.standing["pending"] = 10**30
    with pytest.raises(OpenLoRAError) as e:
        sdk.completions(model="base", prompt=[1, 2], max_tokens=4)
    assert e.value.code == "spend_refused" and "10000000000" in e.value.message and "640" in e.value.message
    assert len(node.received) == 1                                       # the lie was never answered with a voucher
    assert VoucherLedger(tmp_path / "ledger").read(lane_of(me)).cap == 640
    # a fresh SDK (same ledger directory, another process in real life) remembers the bound
    node.standing["pending"] = 641
    with pytest.raises(OpenLoRAError, match="spend_refused"):
        client(node, tmp_path, me.key).authorize({"model": "base", "prompt": [1], "max_tokens": 1})
    # debited counts too: a lying 'debited' is refused just the same
    node.standing.update(pending=0, debited=10**24)
    with pytest.raises(OpenLoRAError, match="spend_refused"):
        sdk.authorize({"model": "base", "prompt": [1], "max_tokens": 1})


def test_a_new_ledger_trusts_no_reported_charges(node, tmp_path):
    node.standing["pending"] = 1
    with pytest.raises(OpenLoRAError, match="no rpc_url given"):
        client(node, tmp_path, Account.create().key).authorize({"model": "base", "prompt": [1], "max_tokens": 1})


def test_user_limits_price_spend_budget(node, tmp_path):
    me = Account.create()
    body = {"model": "base", "prompt": [1], "max_tokens": 1}
    node.price = 10**20
    with pytest.raises(OpenLoRAError, match="max_price_per_token"):
        client(node, tmp_path, me.key, limits=SpendLimits(max_price_per_token=100)).authorize(body)
    node.price = 10
    with pytest.raises(OpenLoRAError, match="max_spend_per_request"):
        client(node, tmp_path, me.key, limits=SpendLimits(max_spend_per_request=100)).authorize(body, max_price=101)
    # without an explicit max_price, the per-request cap lowers the default (price x max_model_len)
    auth = client(node, tmp_path, me.key, limits=SpendLimits(max_spend_per_request=100)).authorize(body)
    assert int(auth["maxPrice"]) == 100 and int(auth["voucher"]["cumulativeCap"]) == 100
    sdk = client(node, tmp_path, me.key, limits=SpendLimits(budget=1000))
    node.standing["pending"] = 100
    assert int(sdk.authorize(body, max_price=900)["voucher"]["cumulativeCap"]) == 1000
    with pytest.raises(OpenLoRAError, match="budget"):
        sdk.authorize(body, max_price=901)
    assert VoucherLedger(tmp_path / "ledger").read(lane_of(me)).cap == 1000
    with pytest.raises(ValueError, match="budget"):
        SpendLimits(budget=-1)


def test_implausible_max_model_len_and_foreign_settlement_are_refused(node, tmp_path):
    me = Account.create()
    body = {"model": "base", "prompt": [1], "max_tokens": 1}
    node.max_model_len = 10**30
    with pytest.raises(OpenLoRAError, match="max_model_len"):
        client(node, tmp_path, me.key).authorize(body)
    node.max_model_len = 64
    with pytest.raises(OpenLoRAError, match="not the Settlement contract"):
        client(node, tmp_path, me.key, settlement="0x" + "11" * 20).authorize(body)
    assert not VoucherLedger(tmp_path / "ledger").path(lane_of(me)).exists()


def test_damaged_ledger_refuses_to_sign(node, tmp_path):
    me = Account.create()
    sdk = client(node, tmp_path, me.key)
    sdk.authorize({"model": "base", "prompt": [1], "max_tokens": 1})
    path = VoucherLedger(tmp_path / "ledger").path(lane_of(me))
    path.write_text(json.dumps({"cap": "not a number"}))
    with pytest.raises(OpenLoRAError, match="damaged ledger"):
        sdk.authorize({"model": "base", "prompt": [1], "max_tokens": 1})


def test_request_command_passes_limits_and_refuses_in_one_line(node, tmp_path):
    from click.testing import CliRunner

    from openlora.node.cli import cli
    me = Account.create()
    key = tmp_path / "key"
    key.write_text(me.key.hex())
    args = ["request", "--url", node.url, "--model", "base", "--key-file", str(key), "--ledger-dir",
            str(tmp_path / "ledger"), "--no-stream", "--json", "Hi"]
    out = CliRunner().invoke(cli, args + ["--budget", "100"])
    assert out.exit_code != 0 and "above your budget 100" in str(out.exception) and not node.received
    out = CliRunner().invoke(cli, args + ["--max-price-per-token", "9"])
    assert out.exit_code != 0 and "max_price_per_token 9" in str(out.exception) and not node.received
    out = CliRunner().invoke(cli, args + ["--max-spend", "50"])
    assert out.exit_code == 0, out.output
    assert node.received[0]["openlora"]["maxPrice"] == "50"
    assert VoucherLedger(tmp_path / "ledger").read(lane_of(me)).cap == 50
