"""node.settlement on a real Anvil: receipts of three requesters settle in one batch whose BatchSettled event,
lanes and published file match; a contributor's claim pays the exact expected wei; a dead RPC loses nothing and
the loop settles once it is back; a crash between submit and confirm (or before sending) settles exactly once
after a restart. The tests that exercise the store run on SQLite and on PostgreSQL (`db_url`); the ones about gas
and fees on SQLite only. Also attribution.pricing against the chain."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from eth_account import Account

from openlora.attribution import merkle, payouts
from openlora.attribution.pricing import (BASE_MODEL, PricingError, Shares, adapter_terms, attribution_vector,
                                 contributor_weights, price_of)
from openlora.attribution.receipts import receipt_from_json, receipt_hash, verify_receipt
from openlora.devnet.seed import ROLES
from openlora.node.settlement import ChainUnavailable, SettlementLoop
from openlora.node.storage import Store

TOKEN = 10**18


def wait_for(cond, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll `cond()` until truthy or the deadline passes (then fail with `what`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


ADAPTER = "bafkreiservicetestadapter"


@pytest.fixture(scope="module")
def adapter(chain, accounts):
    """An adapter registered by the demo author on the demo Datanet (100%), 10 gwei per token."""
    reg = chain.dep.contract(chain.w3, "AdapterRegistry")
    author = accounts[ROLES["author"]].address
    chain.send(reg.functions.register(ADAPTER, "demo", 10**10, [chain.dep.extra["datanet_id"]], [10_000]), author)
    return author


def _loop(chain, tmp_path, db: str | None = None, w3=None, **kw) -> SettlementLoop:
    """A loop on the database `db` (a URL; default: a SQLite file in tmp_path), publishing into tmp_path."""
    store = Store(db or f"sqlite:///{tmp_path / 'node.db'}")
    return SettlementLoop(store, w3 or chain.w3, chain.dep, chain.node, batch_max_receipts=kw.pop("n", 64),
                          batch_max_age_s=kw.pop("age", 0.1), confirmations=1, publish_dir=tmp_path / "published",
                          poll_s=0.05, **kw)


def _vector(chain, adapter_cid=ADAPTER):
    terms = adapter_terms(chain.w3, chain.dep, adapter_cid)
    contributors = {d: contributor_weights(chain.w3, chain.dep, d) for d, _ in terms.datanet_weights}
    return terms, attribution_vector(terms, contributors, chain.node.address, Shares())


def test_pricing_reads_the_chain(chain, adapter):
    terms, vec = _vector(chain)
    assert terms.author == adapter and terms.price_per_token == 10**10
    assert terms.datanet_weights == ((chain.dep.extra["datanet_id"], 10_000),)
    accepted = [c for c in chain.dep.extra["contributions"] if c["status"] == "accepted"]
    weights = dict(vec)
    assert set(weights) == {adapter, chain.node.address} | {c["contributor"] for c in accepted}
    total_w = sum(weights.values())
    # author 20%, operator 30%, contributors 50% by the weights of the Datanet's published version (from content)
    assert weights[adapter] * 10 == total_w * 2 and weights[chain.node.address] * 10 == total_w * 3
    mine: dict[str, int] = {}
    for c in accepted:
        mine[c["contributor"]] = mine.get(c["contributor"], 0) + c["weight"]
    for who, w in mine.items():
        assert weights[who] * sum(mine.values()) * 2 == total_w * w
    assert price_of(terms, 10**9, 5, 7) == (10**10 + 10**9) * 12
    assert attribution_vector(BASE_MODEL, {}, chain.node.address, Shares()) == ((chain.node.address, 1),)
    with pytest.raises(PricingError, match="not registered"):
        adapter_terms(chain.w3, chain.dep, "bafkreinosuchadapter")
    with pytest.raises(PricingError):
        Shares(5000, 5000, 1)


def _expected_credits(receipts, total, fee_bps, protocol, operator):
    """Independent arithmetic: per receipt floor(price * w / W), floors to the operator; then the protocol fee
    off the top and the rest split pro rata (floors to the operator again)."""
    gross: dict[str, int] = {}
    for r in receipts:
        W = sum(w for _, w in r.attribution)
        given = 0
        for who, w in r.attribution:
            gross[who] = gross.get(who, 0) + r.price * w // W
            given += r.price * w // W
        gross[operator] = gross.get(operator, 0) + r.price - given
    fee = total * fee_bps // 10_000
    out = {who: (total - fee) * g // total for who, g in gross.items()}
    out[operator] += total - fee - sum(out.values())
    out[protocol] = fee
    return {k: v for k, v in out.items() if v}


def test_end_to_end_three_requesters_one_batch_and_exact_claim(chain, adapter, tmp_path, db_url):
    _, vec = _vector(chain)
    reqs = [chain.requester(TOKEN) for _ in range(3)]
    loop = _loop(chain, tmp_path, db_url())
    receipts = []
    for i, q in enumerate(reqs):
        prices = [10**15 + 7 * i + j for j in range(i + 1)]
        loop.store.record_voucher(q.address, chain.node.address, sum(prices), chain.voucher(q, sum(prices)))
        for p in prices:
            r = chain.receipt(q, p, vec, ADAPTER)
            assert verify_receipt(r)
            loop.store.add_receipt(r)
            receipts.append(r)
    total = sum(r.price for r in receipts)

    tx = asyncio.run(loop.settle_once())
    assert tx and loop.metrics["batches_settled"] == 1 and loop.metrics["receipts_settled"] == 6
    rcpt = chain.w3.eth.get_transaction_receipt(tx)
    ev = chain.settlement.events.BatchSettled().process_receipt(rcpt)[0]["args"]
    root = merkle.receipts_root([receipt_hash(r) for r in receipts])
    assert ev["receiptsRoot"] == root and ev["total"] == total and ev["receiptCount"] == 6
    assert ev["node"] == chain.node.address
    for i, q in enumerate(reqs):
        spent = sum(r.price for r in receipts if r.requester == q.address)
        assert chain.settlement.functions.balanceOf(q.address, chain.node.address).call() == TOKEN - spent
        assert chain.settlement.functions.debited(q.address, chain.node.address).call() == spent
    st = loop.store
    assert st.counts() == {"pending": 0, "submitted": 0, "settled": 6} and st.unsettled_charges(reqs[2].address) == 0

    # the published file: every receipt with a valid node signature, hashing to the on-chain root
    path = Path(urlparse(ev["receiptsUri"]).path)
    pub = json.loads(path.read_text())
    published = [receipt_from_json(x) for x in pub["receipts"]]
    assert published == receipts and all(verify_receipt(r) for r in published)
    assert pub["batch_id"] == "0x" + bytes(ev["batchId"]).hex()
    got = st.get_receipt(receipts[4].request_id)
    assert got["status"] == "settled" and got["tx_hash"] == tx and got["batch_id"] == pub["batch_id"]
    assert merkle.verify([bytes.fromhex(p[2:]) for p in got["proof"]], root, merkle.leaf(receipt_hash(receipts[4])))

    # a contributor finds its credit from the chain and claims exactly the expected wei
    expected = _expected_credits(receipts, total, chain.dep.protocol_fee_bps, chain.dep.protocol_recipient,
                                 chain.node.address)
    assert sum(expected.values()) == total
    contributor = next(c["contributor"] for c in chain.dep.extra["contributions"] if c["status"] == "accepted")
    report = payouts.payouts_of(chain.w3, chain.dep, contributor)
    mine = [p for p in report.payouts if p.batch_id == bytes(ev["batchId"])]
    assert len(mine) == 1 and mine[0].amount == expected[contributor]
    before = chain.token.functions.balanceOf(contributor).call()
    chain.send(chain.settlement.functions.claimMany(contributor, payouts.claim_items(mine)), chain.funder)
    assert chain.token.functions.balanceOf(contributor).call() == before + expected[contributor]

    assert asyncio.run(loop.settle_once()) is None  # nothing left


def test_receipts_beyond_the_voucher_wait_and_free_ones_settle_off_chain(chain, tmp_path, db_url):
    q = chain.requester(TOKEN)
    loop = _loop(chain, tmp_path, db_url())
    vec = ((chain.node.address, 1),)
    a, b, free = chain.receipt(q, 600, vec), chain.receipt(q, 600, vec), chain.receipt(q, 0, vec)
    for r in (a, b, free):
        loop.store.add_receipt(r)
    loop.store.record_voucher(q.address, chain.node.address, 1000, chain.voucher(q, 1000))
    assert asyncio.run(loop.settle_once())  # only `a` fits the cap (free rides along)
    assert loop.store.get_receipt(a.request_id)["status"] == "settled"
    assert loop.store.get_receipt(free.request_id)["status"] == "settled"
    assert loop.store.get_receipt(b.request_id)["status"] == "pending"
    assert asyncio.run(loop.settle_once()) is None  # still not covered
    loop.store.record_voucher(q.address, chain.node.address, 1200, chain.voucher(q, 1200))
    assert asyncio.run(loop.settle_once())
    assert chain.settlement.functions.debited(q.address, chain.node.address).call() == 1200

    # a voucher that is not the requester's signature for this node is ignored: its receipts wait, others settle
    bad, good = chain.requester(TOKEN), chain.requester(TOKEN)
    loop.store.record_voucher(bad.address, chain.node.address, 10**6, chain.voucher(good, 10**6))
    loop.store.record_voucher(good.address, chain.node.address, 10**6, chain.voucher(good, 10**6))
    rb, rg = chain.receipt(bad, 5, vec), chain.receipt(good, 5, vec)
    loop.store.add_receipt(rb)
    loop.store.add_receipt(rg)
    assert asyncio.run(loop.settle_once())
    assert loop.store.get_receipt(rg.request_id)["status"] == "settled"
    assert loop.store.get_receipt(rb.request_id)["status"] == "pending"

    # a backlog larger than a batch that waits for a voucher does not starve a covered requester behind it
    small = _loop(chain, tmp_path / "small", db_url("small"), n=2)
    for _ in range(3):
        small.store.add_receipt(chain.receipt(bad, 5, vec))
    late = chain.receipt(good, 5, vec)
    small.store.add_receipt(late)
    small.store.record_voucher(good.address, chain.node.address, 10**6, chain.voucher(good, 10**6))
    assert asyncio.run(small.settle_once())
    assert small.store.get_receipt(late.request_id)["status"] == "settled"
    assert small.store.counts() == {"pending": 3, "submitted": 0, "settled": 1}


def test_chain_down_nothing_lost_then_the_loop_settles(chain, tmp_path, dead_w3, db_url):
    q = chain.requester(TOKEN)
    loop = _loop(chain, tmp_path, db_url(), w3=dead_w3, retry_base_s=0.05, retry_max_s=0.2)
    loop.store.record_voucher(q.address, chain.node.address, 10**6, chain.voucher(q, 10**6))
    rs = [chain.receipt(q, 1000 + i, ((chain.node.address, 1),)) for i in range(3)]
    for r in rs:
        loop.store.add_receipt(r)
    with pytest.raises(ChainUnavailable, match="chain not reachable at http://127.0.0.1:"):
        asyncio.run(loop.settle_once())
    assert loop.store.counts() == {"pending": 3, "submitted": 0, "settled": 0}

    async def scenario():
        task = asyncio.create_task(loop.run())
        await asyncio.to_thread(wait_for, lambda: loop.metrics["chain_errors"] >= 3, 20, what="retries")
        assert loop.metrics["next_retry_s"] > 0 and "not reachable" in loop.metrics["last_error"]
        loop.w3 = chain.w3  # the RPC is back
        await asyncio.to_thread(wait_for, lambda: loop.store.counts()["settled"] == 3, 20, what="settlement")
        await loop.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert chain.settlement.functions.debited(q.address, chain.node.address).call() == sum(r.price for r in rs)


@pytest.mark.parametrize("how", ["crash-after-send", "crash-before-send", "tx-dropped"])
def test_crash_between_submit_and_confirm_settles_exactly_once(chain, tmp_path, how, db_url):
    sent = how == "crash-after-send"
    q = chain.requester(TOKEN)
    first = _loop(chain, tmp_path, db_url())
    first.store.record_voucher(q.address, chain.node.address, 10**6, chain.voucher(q, 10**6))
    rs = [chain.receipt(q, 2000 + i, ((chain.node.address, 1),)) for i in range(4)]
    for r in rs:
        first.store.add_receipt(r)
    b = first.prepare()
    tx = first.submit(b) if sent else None  # ...and the process dies here: nothing marked confirmed
    if how == "tx-dropped":  # recorded as sent, but the chain never saw it (dropped, or "nonce too low")
        first.store.set_batch(b["batch_id"], state="submitted", tx_hash="0x" + "77" * 32, tx_nonce=0)
    first.store.close()

    second = _loop(chain, tmp_path, db_url())  # restart: new Store and loop on the same database
    assert second.store.counts()["submitted"] == 4
    got = asyncio.run(second.settle_once())
    assert got and (got == tx if sent else True)
    assert second.store.counts() == {"pending": 0, "submitted": 0, "settled": 4}
    bid = bytes.fromhex(b["batch_id"][2:])
    logs = chain.settlement.events.BatchSettled().get_logs(from_block=0, argument_filters={"batchId": bid})
    assert len(logs) == 1
    assert chain.settlement.functions.debited(q.address, chain.node.address).call() == sum(r.price for r in rs)
    assert asyncio.run(second.settle_once()) is None and len(
        chain.settlement.events.BatchSettled().get_logs(from_block=0, argument_filters={"batchId": bid})) == 1


def test_nonce_gap_another_tx_from_the_node_key_in_between(chain, tmp_path, db_url):
    """The node key sends something else between prepare and submit: the loop takes the next free nonce."""
    q = chain.requester(TOKEN)
    loop = _loop(chain, tmp_path, db_url())
    loop.store.record_voucher(q.address, chain.node.address, 10**6, chain.voucher(q, 10**6))
    loop.store.add_receipt(chain.receipt(q, 777, ((chain.node.address, 1),)))
    b = loop.prepare()
    other = Account.create().address
    chain.w3.eth.wait_for_transaction_receipt(chain.w3.eth.send_transaction(
        {"from": chain.node.address, "to": other, "value": 1}))
    assert asyncio.run(loop.settle_once()) and loop.store.batch(b["batch_id"])["state"] == "settled"


@pytest.mark.parametrize("publish,backend", [("file", "sqlite"), ("ipfs", "sqlite"), ("file", "postgresql")])
def test_node_settlement_task_and_payouts_claim_cli(chain, tmp_path, node_account, publish, backend, request):
    """start_settlement from a config settles on its own; `payouts` reports the credit (per adapter from the
    published receipts: a file:// URI, or ipfs://CID read back from the home's blockstore) and `claim` (signed
    with the node keystore) pays it to the contributor; a dead RPC is one line. With `postgresql`, the config's
    storage.database_url points at PostgreSQL and everything (settlement task, `payouts`) goes through it."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from openlora.node.cli import cli
    from openlora.node.config import DEFAULT_CONFIG_TOML, load_config
    from openlora.node.settlement import start_settlement

    home = tmp_path / "home"
    home.mkdir()
    url = chain.w3.provider.endpoint_uri
    toml = DEFAULT_CONFIG_TOML.replace('rpc_url = "http://127.0.0.1:8545"', f'rpc_url = "{url}"')
    toml = toml.replace("batch_max_age_s = 30.0", "batch_max_age_s = 0.2")
    if backend == "postgresql":
        pg_url = request.getfixturevalue("postgres").create_database()
        toml = toml.replace('database_url = ""', f'database_url = "{pg_url}"')
    (home / "config.toml").write_text(toml)
    chain.dep.write(home / "deployment.json")
    (home / "keystore.json").write_text(json.dumps(Account.encrypt(node_account.key, "password-123")))
    (home / "pw").write_text("password-123\n")
    cfg = load_config(home)
    assert cfg.database_url.startswith(backend)

    contributor = Account.create().address
    q = chain.requester(TOKEN)
    vec = ((chain.node.address, 3), (contributor, 7))
    rs = [chain.receipt(q, 10**15 + i, vec, ADAPTER if i % 2 else None) for i in range(3)]
    total = sum(r.price for r in rs)
    expected = _expected_credits(rs, total, chain.dep.protocol_fee_bps, chain.dep.protocol_recipient,
                                 chain.node.address)[contributor]

    async def serve():
        store = Store(cfg.database_url)
        store.record_voucher(q.address, chain.node.address, total, chain.voucher(q, total))
        for r in rs:
            store.add_receipt(r)
        publisher = None
        if publish == "ipfs":
            from openlora.content.blockstore import Blockstore
            from openlora.node.wiring import blockstore_publisher
            provided.clear()
            publisher = blockstore_publisher(Blockstore(home / "ipfs"), provided.append)
        loop = await start_settlement(cfg, store, SimpleNamespace(w3=chain.w3, deployment=chain.dep), node_account,
                                      publish=publisher)
        await asyncio.to_thread(wait_for, lambda: store.counts()["settled"] == 3, 20, what="the settlement task")
        await loop.stop()
        assert (home / "receipts").is_dir() and loop.metrics["batches_settled"] == 1
        return loop.metrics["last_tx"]

    provided: list[str] = []
    tx = asyncio.run(serve())
    ev = chain.settlement.events.BatchSettled().process_receipt(chain.w3.eth.get_transaction_receipt(tx))[0]
    uri = ev["args"]["receiptsUri"]
    published = next((home / "receipts").glob("0x*.json")).read_text()
    if publish == "ipfs":
        from openlora.node.commands.payouts import read_published
        from openlora.content.importer import add_bytes
        cid = str(add_bytes(published.encode()).cid)
        assert uri == f"ipfs://{cid}" and provided == [cid], "the receipts file is on chain and in the DHT by CID"
        assert read_published(uri, cfg) == published
        assert cfg.ipfs.gateways == () and not cfg.ipfs.kubo_rpc
        with pytest.raises(ValueError, match="no Kubo RPC or gateway configured"):
            read_published(uri, SimpleNamespace(home=tmp_path / "elsewhere", ipfs=cfg.ipfs))
    else:
        assert uri.startswith("file://")
    run = CliRunner().invoke
    out = run(cli, ["--home", str(home), "payouts", "--address", contributor, "--json"])
    assert out.exit_code == 0, out.output + repr(out.exception)
    rep = json.loads(out.output)
    assert rep["settled"] == rep["claimable"] == str(expected) and rep["claimed"] == "0"
    assert rep["unsettled_local"] == "0" and set(rep["by_adapter"]) == {ADAPTER, "base model"}
    assert len(rep["batches"]) == 1 and not rep["batches"][0]["claimed"]
    text = run(cli, ["--home", str(home), "payouts"]).output  # the node's own address, human-readable
    assert chain.node.address in text and "claimable" in text

    before = chain.token.functions.balanceOf(contributor).call()
    out = run(cli, ["--home", str(home), "claim", "--address", contributor, "--password-file", str(home / "pw")])
    assert out.exit_code == 0 and "claimed" in out.output, out.output + repr(out.exception)
    assert chain.token.functions.balanceOf(contributor).call() == before + expected
    rep = json.loads(run(cli, ["--home", str(home), "payouts", "--address", contributor, "--json"]).output)
    assert rep["claimable"] == "0" and rep["claimed"] == str(expected)
    out = run(cli, ["--home", str(home), "claim", "--address", contributor, "--password-file", str(home / "pw")])
    assert "nothing to claim" in out.output

    (home / "config.toml").write_text(toml.replace(url, "http://127.0.0.1:9"))
    out = run(cli, ["--home", str(home), "payouts"])
    assert out.exit_code != 0 and "chain not reachable at http://127.0.0.1:9" in str(out.exception)


def test_receipts_publisher_provide_is_best_effort(tmp_path, caplog):
    """The wiring's receipts publisher (what settlement is given): the file goes into the blockstore under its
    Kubo-identical CID whether or not the DHT provide works; a failed provide is one warning, not a failed batch."""
    from openlora.content.blockstore import Blockstore
    from openlora.content.importer import add_bytes
    from openlora.node.wiring import blockstore_publisher

    def provide(cid: str) -> None:
        raise TimeoutError("no DHT peers")

    data = b'{"receipts": []}'
    blocks = Blockstore(tmp_path / "ipfs")
    cid = add_bytes(data).cid
    assert blockstore_publisher(blocks, provide)(data, "0xab") == f"ipfs://{cid}"
    assert blocks.has(cid) and blocks.has_root(cid)
    assert "DHT provide failed" in caplog.text and "0xab" in caplog.text


def test_batch_of_256_receipts_from_10_requesters_figures(chain, adapter, tmp_path, capsys):
    """The figures in docs/benchmarks.md: store writes, batch preparation (chain reads, credits, publishing),
    submit + confirm on Anvil, gas per receipt; and the batch settles in one transaction."""
    _, vec = _vector(chain)
    reqs = [chain.requester(TOKEN) for _ in range(10)]
    loop = _loop(chain, tmp_path, n=256)
    rs = [chain.receipt(reqs[i % 10], 10**14 + 13 * i, vec, ADAPTER) for i in range(256)]
    for q in reqs:
        loop.store.record_voucher(q.address, chain.node.address, TOKEN, chain.voucher(q, TOKEN))
    t0 = time.perf_counter()
    for r in rs:
        loop.store.add_receipt(r)
    t1 = time.perf_counter()
    b = loop.prepare()
    t2 = time.perf_counter()
    tx = asyncio.run(loop.settle_once())
    t3 = time.perf_counter()
    gas = chain.w3.eth.get_transaction_receipt(tx)["gasUsed"]
    assert loop.store.counts()["settled"] >= 256 and b["receipt_count"] == 256 and len(b["debits"]) == 10
    size = Path(urlparse(b["receipts_uri"]).path).stat().st_size
    with capsys.disabled():
        print(f"\nsettlement of 256 receipts / 10 requesters / {len(b['credits'])} credits: add_receipt "
              f"{(t1 - t0) / 256 * 1e3:.2f} ms each; prepare {(t2 - t1) * 1e3:.0f} ms; submit+confirm "
              f"{(t3 - t2) * 1e3:.0f} ms; {gas:,} gas ({gas / 256:.0f}/receipt); published {size / 1024:.0f} KiB")


def test_stuck_transaction_is_replaced_with_higher_fees(chain, tmp_path):
    """A settlement tx still pending after mine_timeout_s is re-sent with the same nonce and >= 12.5% higher fees
    (Anvil with automine off stands in for a congested chain); once a block is mined the batch settles exactly
    once, by the replacement, and the replaced transaction is gone from the pool."""
    from openlora.node.settlement import SettlementError

    q = chain.requester(TOKEN)
    loop = _loop(chain, tmp_path, mine_timeout_s=0.3)
    loop.store.record_voucher(q.address, chain.node.address, 10**6, chain.voucher(q, 10**6))
    rs = [chain.receipt(q, 3000 + i, ((chain.node.address, 1),)) for i in range(3)]
    for r in rs:
        loop.store.add_receipt(r)
    w3 = chain.w3
    w3.provider.make_request("evm_setAutomine", [False])
    try:
        b = loop.prepare()
        with pytest.raises(SettlementError, match="not settled after 3 attempts"):
            loop.settle_once_sync()
        assert loop.metrics["replacements"] >= 2
        first = loop.store.batch(b["batch_id"])
        assert first["state"] == "submitted"
        latest = w3.eth.get_transaction(first["tx_hash"])
        assert latest["nonce"] == first["tx_nonce"]
        pool = w3.provider.make_request("txpool_content", [])["result"]["pending"]
        ours = [tx for by_nonce in pool.values() for tx in by_nonce.values()
                if tx["from"].lower() == chain.node.address.lower()]
        assert len(ours) == 1 and ours[0]["hash"] == first["tx_hash"], "only the latest replacement is pending"
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
    w3.provider.make_request("evm_mine", [])
    assert asyncio.run(loop.settle_once()) == first["tx_hash"]
    assert loop.store.counts() == {"pending": 0, "submitted": 0, "settled": 3}
    mined = w3.eth.get_transaction(first["tx_hash"])
    assert mined["blockNumber"] is not None and mined["maxFeePerGas"] > 0
    bid = bytes.fromhex(b["batch_id"][2:])
    assert len(chain.settlement.events.BatchSettled().get_logs(from_block=0, argument_filters={"batchId": bid})) == 1
    assert chain.settlement.functions.debited(q.address, chain.node.address).call() == sum(r.price for r in rs)


def test_replacement_fees_rise_by_an_eighth_and_respect_the_cap(chain, tmp_path):
    from openlora.node.settlement import SettlementError

    loop = _loop(chain, tmp_path)
    stuck = {"maxFeePerGas": 8 * 10**9, "maxPriorityFeePerGas": 8 * 10**8}
    fees = loop._fees(stuck)
    assert fees["maxFeePerGas"] >= 9 * 10**9 + 1 and fees["maxPriorityFeePerGas"] >= 9 * 10**8 + 1
    legacy = loop._fees({"gasPrice": 16 * 10**9})
    assert legacy["maxFeePerGas"] > 18 * 10**9 and legacy["maxPriorityFeePerGas"] > 18 * 10**9
    capped = _loop(chain, tmp_path, max_fee_per_gas_wei=5 * 10**9)
    assert capped._fees(None)["maxFeePerGas"] <= 5 * 10**9
    with pytest.raises(SettlementError, match="above settlement.max_fee_per_gas_wei"):
        capped._fees(stuck)
