"""Signed requests end to end over HTTP on a real Anvil: the SDK and the official openai client are served and get
receipts; every bad request gets its documented 4xx, is charged nothing, and the node keeps serving; one signed
request sent many times at once is served once. The whole module runs on a SQLite and on a PostgreSQL store."""

from __future__ import annotations

import copy
import json
import threading
import time

import pytest
from web3 import Web3

from openlora.attribution import eip712
from openlora.devnet.chain import EphemeralAnvil
from openlora.devnet.deploy import dev_accounts, send
from openlora.devnet.seed import ROLES, raw_cid
from openlora.inference import LLM
from openlora.inference.client import AsyncEngine
from openlora.node.api import build_app
from openlora.node.config import DEFAULT_CONFIG_TOML, parse_config
from openlora.node.sdk import OpenLoRAClient, OpenLoRAError
from openlora.node.storage import Store
from openlora.node.wiring import Chain, build_service
from tests.chain_fixtures import deploy_seeded
from tests.service.server_util import ServerThread, http_json

ADAPTER_PRICE = 3 * 10**12


@pytest.fixture(scope="module", autouse=True)
def sdk_ledger_dir(tmp_path_factory):
    """The SDK's voucher ledger lives in this module's temporary directory, never in the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENLORA_SDK_DIR", str(tmp_path_factory.mktemp("sdk-ledger")))
        yield


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(tiny, tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("signed")
    db = (f"sqlite:///{tmp / 'node.db'}" if request.param == "sqlite"
          else request.getfixturevalue("postgres").create_database())
    accts = dev_accounts()
    with EphemeralAnvil() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        dep = deploy_seeded(w3, accts)
        extra = dep.extra
        model = tiny.model("llama")
        adapter_dir = tiny.adapter(model, rank=8, seed=21)
        cid = raw_cid((adapter_dir / "adapter_model.safetensors").read_bytes())
        author = accts[8].address
        send(w3, dep.contract(w3, "AdapterRegistry").functions.register(
            cid, "openlora/tiny-llama-s0", ADAPTER_PRICE, [extra["datanet_id"]], [10_000]), author, "register")
        cfg = parse_config(DEFAULT_CONFIG_TOML, tmp, environ={})
        llm = LLM(model, dtype="float32", device="cpu")
        llm.load_adapter("law", adapter_dir, identity=cid)
        client = AsyncEngine(llm.engine)
        store = Store(db)
        from eth_account import Account
        node_acct = Account.from_key(accts[ROLES["node"]].key)
        svc = build_service(cfg, node_acct, client, store, Chain(w3, dep))
        with ServerThread(build_app(svc)) as server:
            yield {"w3": w3, "dep": dep, "accts": accts, "server": server, "store": store, "cid": cid,
                   "author": author, "llm": llm, "node": node_acct.address, "extra": extra}
        client.shutdown()
        store.close()


post = http_json

def test_sdk_signed_request_is_served_with_a_signed_receipt(env):
    requester = env["accts"][ROLES["requester"]]
    sdk = OpenLoRAClient(env["server"].url, requester.key)
    out = sdk.completions(model="law", prompt=[5, 6, 7, 8], max_tokens=6, temperature=0.0)
    rid = out["openlora"]["request_id"]
    r = sdk.receipt(rid)
    assert r["requester"] == requester.address and r["adapter_cid"] == env["cid"]
    tokens = out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    assert int(r["price"]) == (ADAPTER_PRICE + 10**12) * tokens
    recipients = {a for a, _ in r["attribution"]}
    contributors = {c["contributor"] for c in env["extra"]["contributions"] if c["status"] == "accepted"}
    assert contributors | {env["author"], env["node"]} == recipients
    from openlora.attribution.receipts import receipt_from_json, verify_receipt
    assert verify_receipt(receipt_from_json(r))
    # streaming through the SDK gives the same text
    chunks = list(sdk.completions(model="law", prompt=[5, 6, 7, 8], max_tokens=6, temperature=0.0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == out["choices"][0]["text"]


def test_official_openai_client_with_signed_extra_body(env):
    openai = pytest.importorskip("openai")
    requester = env["accts"][ROLES["requester"]]
    sdk = OpenLoRAClient(env["server"].url, requester.key)
    body = {"model": "law", "prompt": "Hello world", "max_tokens": 5, "temperature": 0.0}
    auth = sdk.authorize(body)
    oc = openai.OpenAI(base_url=env["server"].url + "/v1", api_key="unused")
    r = oc.completions.create(**body, extra_body={"openlora": auth})
    assert r.usage.completion_tokens <= 5
    assert r.model_extra["openlora"]["receipt"]


def test_bad_requests_get_documented_4xx_and_are_charged_nothing(env):
    url = env["server"].url + "/v1/completions"
    accts = env["accts"]
    requester = accts[ROLES["requester"]]
    store = env["store"]
    sdk = OpenLoRAClient(env["server"].url, requester.key)
    body = {"model": "law", "prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0.0}
    before = store.unsettled_charges(requester.address)

    def signed(mutate=None, **kw):
        b = copy.deepcopy(body)
        auth = sdk.authorize(b, **kw)
        if mutate:
            mutate(b, auth)
        b["openlora"] = auth
        return b

    def resign(auth, domain_chain=None, node=None):
        info = sdk.node_info()
        domain = eip712.Domain(domain_chain or info["chain_id"], info["settlement"])
        req = eip712.Request(requester.address, node or info["address"], bytes.fromhex(auth["adapter"][2:]),
                             bytes.fromhex(auth["promptHash"][2:]), int(auth["maxTokens"]), int(auth["maxPrice"]),
                             int(auth["nonce"]), int(auth["deadline"]))
        auth["signature"] = "0x" + eip712.sign(req, domain, requester.key).hex()

    def bad_sig(b, a):
        a["signature"] = a["signature"][:-4] + ("1b" if a["signature"][-2:] != "1b" else "1c") + "00"

    def expired(b, a):
        a["deadline"] = int(time.time()) - 10
        resign(a)

    def wrong_node(b, a):
        a["node"] = accts[9].address
        resign(a, node=accts[9].address)

    def wrong_chain(b, a):
        a["chainId"] = 1
        resign(a, domain_chain=1)

    def tampered_prompt(b, a):
        b["prompt"] = [9, 9, 9]

    cases = [
        (signed(bad_sig), (400, 401), {"invalid_auth", "bad_signature"}),
        (signed(expired), (400,), {"expired"}),
        (signed(wrong_node), (400,), {"wrong_node"}),
        (signed(wrong_chain), (400,), {"wrong_chain"}),
        (signed(tampered_prompt), (400,), {"prompt_mismatch"}),
        (signed(max_price=1), (402,), {"price_exceeds_max"}),
        ({**body, "model": "bafy-unknown"}, (404,), {"model_not_found"}),
        (b'{"model": "law", "prompt": ', (400,), {"invalid_json"}),
        (body, (401,), {"signature_required"}),
    ]
    for b, statuses, codes in cases:
        status, js = post(url, b)
        assert status in statuses and js["error"]["code"] in codes, (status, js)
    # a replayed nonce: the first use is served, the replay refused
    ok = signed()
    assert post(url, ok)[0] == 200
    mid = store.unsettled_charges(requester.address)
    status, js = post(url, ok)
    assert (status, js["error"]["code"]) == (409, "nonce_reused")
    assert store.unsettled_charges(requester.address) == mid > before   # only the served request was charged
    # a requester with no deposit to this node
    poor = OpenLoRAClient(env["server"].url, accts[ROLES["requester2"]].key)
    with pytest.raises(OpenLoRAError) as e:
        poor.completions(**body)
    assert (e.value.status, e.value.code) == (402, "insufficient_deposit")
    assert store.unsettled_charges(accts[ROLES["requester2"]].address) == 0
    # and the node still serves
    assert post(url, signed())[0] == 200


def test_one_signed_request_sent_six_times_at_once_is_served_once(env):
    """Six copies of one signed request race (same nonce): exactly one is served and charged, five get 409."""
    requester = env["accts"][ROLES["requester"]]
    sdk = OpenLoRAClient(env["server"].url, requester.key)
    body = {"model": "law", "prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0.0}
    body["openlora"] = sdk.authorize(copy.deepcopy(body))
    before = env["store"].unsettled_charges(requester.address)
    barrier, results = threading.Barrier(6), []

    def send_copy():
        barrier.wait()
        results.append(post(env["server"].url + "/v1/completions", body))

    threads = [threading.Thread(target=send_copy) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(status for status, _ in results) == [200] + [409] * 5
    assert all(js["error"]["code"] == "nonce_reused" for status, js in results if status == 409)
    served = next(js for status, js in results if status == 200)
    receipt = env["store"].get_receipt(served["openlora"]["request_id"])
    assert env["store"].unsettled_charges(requester.address) == before + int(receipt["price"]) > before


def test_served_requests_settle_on_chain_and_a_contributor_claims_exactly(env, tmp_path):
    """HTTP-served receipts -> one batch on chain -> receipt proofs verify -> a contributor's claim pays exactly
    its share (its attribution weight of each receipt's price after the protocol fee, rounding down)."""
    import asyncio

    from openlora.attribution import merkle, payouts
    from openlora.attribution.receipts import receipt_hash
    from eth_account import Account
    from openlora.node.settlement import SettlementLoop

    w3, dep, accts, store = env["w3"], env["dep"], env["accts"], env["store"]
    requester = accts[ROLES["requester"]]
    sdk = OpenLoRAClient(env["server"].url, requester.key)
    rids = [sdk.completions(model="law", prompt=[5, 6, 7, i], max_tokens=4, temperature=0.0)["openlora"]["request_id"]
            for i in range(3)]
    loop = SettlementLoop(store, w3, dep, Account.from_key(accts[ROLES["node"]].key), publish_dir=tmp_path)
    assert asyncio.run(loop.settle_once())
    settled = [store.get_receipt(r) for r in rids]
    all_pending = [r for r in settled if r["status"] != "settled"]
    assert not all_pending, all_pending
    from openlora.attribution.receipts import receipt_from_json
    for r in settled:
        leaf = merkle.leaf(receipt_hash(receipt_from_json(r)))
        assert merkle.verify([bytes.fromhex(p[2:]) for p in r["proof"]], bytes.fromhex(r["receipts_root"][2:]), leaf)
    # every receipt of the batch (earlier tests' too) contributes to the contributor's credit
    batch_id = settled[0]["batch_id"]
    receipts = [receipt_from_json(x) for x in
                json.loads((tmp_path / f"{batch_id}.json").read_text())["receipts"]]
    contributor = next(c["contributor"] for c in env["extra"]["contributions"] if c["status"] == "accepted")
    total = sum(r.price for r in receipts)
    fee = total * dep.protocol_fee_bps // 10_000
    exact = sum((r.price * (total - fee) / total) * dict(r.attribution).get(contributor, 0)
                / sum(w for _, w in r.attribution) for r in receipts)
    report = payouts.payouts_of(w3, dep, contributor)
    mine = [p for p in report.payouts if p.batch_id.hex() == batch_id.removeprefix("0x")]
    amount = sum(p.amount for p in mine)
    assert abs(amount - exact) <= len(receipts) + 1 and amount > 0
    token = dep.contract(w3, "OpenLoRAToken")
    before = token.functions.balanceOf(contributor).call()
    send(w3, dep.contract(w3, "Settlement").functions.claimMany(contributor, payouts.claim_items(mine)),
         accts[0].address, "claim")
    assert token.functions.balanceOf(contributor).call() - before == amount


def test_request_command_line_signs_and_streams(env, tmp_path):
    from click.testing import CliRunner

    from openlora.node.cli import cli
    key = tmp_path / "key"
    key.write_text(env["accts"][ROLES["requester"]].key.hex())
    out = CliRunner().invoke(cli, ["request", "--url", env["server"].url, "--model", "law", "--max-tokens", "4",
                                   "--key-file", str(key), "--json", "--no-stream", "Hello"])
    assert out.exit_code == 0, out.output
    js = json.loads(out.stdout)
    assert js["usage"]["completion_tokens"] <= 4
    assert env["store"].get_receipt(js["openlora"]["request_id"])["requester"] == env["accts"][ROLES["requester"]].address
    bad = CliRunner().invoke(cli, ["request", "--url", env["server"].url, "--model", "law", "--unsigned", "Hi"])
    assert bad.exit_code != 0 and "signature_required" in str(bad.exception or bad.output)


def test_sdk_bounds_the_voucher_by_its_ledger_and_the_chain(env, tmp_path):
    """On the real chain: the SDK reads Settlement.debited itself; a node inflating its report of what the
    requester owes gets no voucher; an SDK whose ledger never signed for this lane trusts only the chain."""
    from aiohttp import ClientSession, web

    from openlora.node.sdk_ledger import Lane, VoucherLedger, default_dir, read_debited
    requester = env["accts"][ROLES["requester"]]
    settlement = env["dep"].contract(env["w3"], "Settlement")
    debited = settlement.functions.debited(requester.address, env["node"]).call()
    assert debited > 0                      # the settlement test above debited this lane on chain
    rpc = env["w3"].provider.endpoint_uri
    assert read_debited(rpc, settlement.address, requester.address, env["node"]) == debited
    inflate = {"pending": 0}

    async def lying_node(request):          # the real node's answer, with pending inflated
        async with ClientSession() as s, s.get(env["server"].url + "/v1/node", params=request.query) as r:
            info = await r.json()
        if "requester" in info:
            info["requester"]["pending"] += inflate["pending"]
        return web.json_response(info)

    app = web.Application()
    app.router.add_get("/v1/node", lying_node)
    body = {"model": "law", "prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0.0}
    lane = Lane(env["w3"].eth.chain_id, settlement.address, env["node"], requester.address)
    ledger = VoucherLedger(default_dir())   # what this module's earlier requests signed
    with ServerThread(app) as liar:
        # a ledger that never signed here: only what the chain says is debited is believed
        fresh = OpenLoRAClient(liar.url, requester.key, ledger_dir=str(tmp_path / "fresh"), rpc_url=rpc)
        inflate["pending"] = 1              # one wei pending that no voucher of this ledger could have allowed
        with pytest.raises(OpenLoRAError) as e:
            fresh.authorize(dict(body))
        assert f"debited on chain: {debited}" in e.value.message
        assert not VoucherLedger(tmp_path / "fresh").path(lane).exists()
        inflate["pending"] = 0
        # the module's ledger signed caps covering everything charged so far: the honest report is signed
        sdk = OpenLoRAClient(liar.url, requester.key, rpc_url=rpc)
        standing = sdk._json("GET", f"/v1/node?requester={requester.address}")["requester"]
        reported = int(standing["debited"]) + int(standing["pending"])
        assert debited <= reported <= ledger.read(lane).cap
        auth = sdk.authorize(dict(body))
        cap = int(auth["voucher"]["cumulativeCap"])
        assert cap == reported + int(auth["maxPrice"]) and ledger.read(lane).cap >= cap
        high = ledger.read(lane).cap
        inflate["pending"] = 10**30         # the attack of issue 14: a voucher for the whole lane
        with pytest.raises(OpenLoRAError) as e:
            sdk.authorize(dict(body))
        assert e.value.code == "spend_refused" and f"debited on chain: {debited}" in e.value.message
        assert ledger.read(lane).cap == high
    # the voucher the SDK did sign is served by the real node
    body["openlora"] = auth
    status, js = post(env["server"].url + "/v1/completions", body)
    assert status == 200 and js["usage"]["completion_tokens"] <= 3
