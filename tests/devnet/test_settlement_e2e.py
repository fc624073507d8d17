"""End to end on a real Anvil through web3.py: deposit, a signed request verified by the contract, a settled
batch, a contributor's claim, and every forged or replayed settlement rejected. Python-built Merkle roots and
proofs (attribution.merkle) are the ones the contract computes and accepts. Also measures the gas goal."""

from __future__ import annotations

import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError

from openlora.attribution import eip712, merkle, payouts, split
from openlora.attribution.batch import Batch, signed_debit
from openlora.devnet.seed import ROLES

TOKEN = 10**18


@pytest.fixture(scope="module")
def ctx(w3, accounts, deployment):
    class C:
        pass
    c = C()
    c.w3, c.dep, c.accts = w3, deployment, accounts
    c.settlement = deployment.contract(w3, "Settlement")
    c.token = deployment.contract(w3, "OpenLoRAToken")
    c.datanets = deployment.contract(w3, "DatanetRegistry")
    c.adapters = deployment.contract(w3, "AdapterRegistry")
    c.domain = eip712.Domain(w3.eth.chain_id, c.settlement.address)
    c.node = accounts[ROLES["node"]]
    c.requester = accounts[ROLES["requester2"]]  # fresh: seeding used "requester"
    c.protocol = accounts[ROLES["protocol"]].address
    c.fee_bps = deployment.protocol_fee_bps
    return c


def _reverts(call, error: str) -> None:
    """`call()` reverts with the custom error `error` (a signature such as "BadVoucherSignature(address)")."""
    selector = "0x" + Web3.keccak(text=error)[:4].hex()
    with pytest.raises(ContractLogicError) as info:
        call()
    data = info.value.data if isinstance(info.value.data, str) else str(info.value.data)
    assert data.startswith(selector), f"expected {error}, got {info.value}"


def _send(c, fn, sender):
    tx = fn.transact({"from": sender})
    r = c.w3.eth.wait_for_transaction_receipt(tx)
    assert r.status == 1
    return r


def _attribution(c, amount: int) -> dict[str, int]:
    """Credits for `amount`: adapter author 20%, node operator 30% (+ rounding remainder), the demo Datanet's
    accepted contributors 50% by weight, protocol fee on top as the contract computes it."""
    extra = c.dep.extra
    contributors = {}
    for cinfo in extra["contributions"]:
        w = c.datanets.functions.weightOf(extra["datanet_id"], cinfo["id"]).call()
        if w:
            contributors[cinfo["contributor"]] = w
    total_w = sum(contributors.values())
    weights = {c.accts[ROLES["author"]].address: 20 * total_w, c.node.address: 30 * total_w}
    for who, w in contributors.items():
        weights[who] = weights.get(who, 0) + 50 * w
    return split.batch_credits(amount, c.fee_bps, c.protocol, weights, c.node.address)


def test_python_signed_request_verifies_in_contract(ctx):
    c = ctx
    req = eip712.Request(requester=c.requester.address, node=c.node.address,
                         adapter=eip712.adapter_id("bafkreiadapterdemo"),
                         promptHash=eip712.prompt_hash("Hello", {"max_tokens": 16}), maxTokens=16,
                         maxPrice=10**16, nonce=1, deadline=2_000_000_000)
    sig = eip712.sign(req, c.domain, c.requester.key)
    as_tuple = tuple(getattr(req, f) for f in req.__dataclass_fields__)
    assert c.settlement.functions.requestDigest(as_tuple).call() == eip712.digest(req, c.domain)
    assert c.settlement.functions.verifyRequest(as_tuple, sig).call() is True
    r, vs = eip712.to_compact(sig)
    assert c.settlement.functions.verifyRequest(as_tuple, r + vs).call() is True
    other = Account.from_key(b"\x42" * 32)
    assert c.settlement.functions.verifyRequest(as_tuple, eip712.sign(req, c.domain, other.key)).call() is False
    assert c.settlement.functions.voucherDigest(c.requester.address, c.node.address, 5).call() == \
        eip712.digest(eip712.Voucher(c.requester.address, c.node.address, 5), c.domain)
    assert c.adapters.functions.adapterIdOf("bafkreiadapterdemo").call() == eip712.adapter_id("bafkreiadapterdemo")


def test_python_merkle_matches_contract(ctx):
    c = ctx
    for n in (1, 2, 3, 7, 51):
        credits = {Web3.to_checksum_address(f"0x{i + 1:040x}"): 1000 + i for i in range(n)}
        ct = merkle.CreditTree.build(credits)
        assert c.settlement.functions.creditsRoot(ct.words).call() == ct.root
        r, a = ct.credits[-1]
        assert c.settlement.functions.creditLeaf(r, a).call() == merkle.credit_leaf(r, a)


def test_deposit_settle_claim_and_every_forgery_rejected(ctx):
    c = ctx
    st, node, req = c.settlement, c.node.address, c.requester
    # deposit into the lane requester -> node
    _send(c, c.token.functions.approve(st.address, 200 * TOKEN), req.address)
    _send(c, st.functions.deposit(node, 100 * TOKEN), req.address)
    assert st.functions.balanceOf(req.address, node).call() == 100 * TOKEN

    # three signed requests, each checked against the contract's own domain before it is "served"; their
    # digests are the receipts of the batch; the requester signs a cumulative voucher covering them
    prices = [3 * 10**15 + 7, 5 * 10**15 + 11, 10**15 + 1]
    receipts = []
    for i, p in enumerate(prices):
        q = eip712.Request(req.address, node, eip712.adapter_id("bafkreiadapterdemo"), eip712.prompt_hash(f"q{i}"),
                           16, p, i, 2_000_000_000)
        sig = eip712.sign(q, c.domain, req.key)
        assert st.functions.verifyRequest(tuple(getattr(q, f) for f in q.__dataclass_fields__), sig).call()
        receipts.append(eip712.digest(q, c.domain))
    amount = sum(prices)
    debit = signed_debit(c.domain, req.key, req.address, node, amount, amount)
    credits = _attribution(c, amount)
    batch = Batch.build(node, receipts, "ipfs://bafy-receipts-1", [debit], credits, c.fee_bps, c.protocol)
    header, debits, words = batch.settle_args()

    # forged: the voucher's cap raised after signing / signed by someone else / credits inflated by one wei /
    # the protocol shorted / another node using this node's voucher
    forged = Batch.build(node, receipts, "ipfs://x", [type(debit)(req.address, amount * 2, amount,
                                                                  debit.signature)], credits, c.fee_bps, c.protocol)
    _reverts(lambda: st.functions.settleBatch(*forged.settle_args()).call({"from": node}),
             "BadVoucherSignature(address)")
    mallory = Account.from_key(b"\x66" * 32)
    forged = Batch.build(node, receipts, "ipfs://x", [signed_debit(c.domain, mallory.key, req.address, node,
                                                                   amount, amount)], credits, c.fee_bps, c.protocol)
    _reverts(lambda: st.functions.settleBatch(*forged.settle_args()).call({"from": node}),
             "BadVoucherSignature(address)")
    bumped = list(words)
    k = next(i for i, (r, _) in enumerate(batch.credits.credits) if r != c.protocol)
    bumped[k] = (int.from_bytes(bumped[k], "big") + 1).to_bytes(32, "big")
    _reverts(lambda: st.functions.settleBatch(header, debits, bumped).call({"from": node}),
             "CreditsMismatch(uint256,uint256)")
    fee = amount * c.fee_bps // 10_000
    shorted = merkle.CreditTree.build({**credits, c.protocol: fee - 1, c.node.address: credits[c.node.address] + 1})
    _reverts(lambda: st.functions.settleBatch(header, debits, shorted.words).call({"from": node}),
             "ProtocolFeeMismatch(uint256,uint256)")
    other_node = c.accts[ROLES["author"]].address
    _reverts(lambda: st.functions.settleBatch(header, debits, words).call({"from": other_node}),
             "InsufficientBalance(address,uint256,uint256)")  # nothing in the requester's lane to that node...
    _send(c, st.functions.deposit(other_node, amount), req.address)
    _reverts(lambda: st.functions.settleBatch(header, debits, words).call({"from": other_node}),
             "BadVoucherSignature(address)")  # ...and with funds there, the voucher is for another node

    # the genuine batch settles
    rcpt = _send(c, st.functions.settleBatch(header, debits, words), node)
    ev = st.events.BatchSettled().process_receipt(rcpt)[0]["args"]
    assert ev["batchId"] == batch.batch_id and ev["receiptsRoot"] == batch.receipts_root
    assert ev["creditsRoot"] == batch.credits.root and ev["receiptsUri"] == "ipfs://bafy-receipts-1"
    assert ev["total"] == amount and ev["protocolFee"] == amount * c.fee_bps // 10_000
    assert st.functions.balanceOf(req.address, node).call() == 100 * TOKEN - amount
    assert st.functions.debited(req.address, node).call() == amount

    # replays: the same batch again, and the same voucher in a new batch (its cap is used up)
    _reverts(lambda: st.functions.settleBatch(header, debits, words).call({"from": node}),
             "BatchAlreadySettled(bytes32)")
    again = Batch.build(node, [b"\x09" * 32], "ipfs://y", [signed_debit(c.domain, req.key, req.address, node,
                                                                        amount, 1)],
                        split.batch_credits(1, c.fee_bps, c.protocol, {node: 1}, node), c.fee_bps, c.protocol)
    _reverts(lambda: st.functions.settleBatch(*again.settle_args()).call({"from": node}),
             "VoucherCapExceeded(address,uint256,uint256)")

    # a contributor claims with a Python proof; a second claim and a wrong amount are rejected
    contributor = c.dep.extra["contributions"][0]["contributor"]
    bid, who, amt, proof = batch.claim_args(contributor)
    _reverts(lambda: st.functions.claim(bid, who, amt + 1, proof).call({"from": contributor}), "InvalidProof()")
    before = c.token.functions.balanceOf(contributor).call()
    _send(c, st.functions.claim(bid, who, amt, proof), contributor)
    assert c.token.functions.balanceOf(contributor).call() == before + amt
    _reverts(lambda: st.functions.claim(bid, who, amt, proof).call({"from": contributor}),
             "AlreadyClaimed(bytes32,address)")

    # the author finds its credit from the chain alone (events + calldata) and collects it with claimMany
    author = c.accts[ROLES["author"]].address
    report = payouts.payouts_of(c.w3, c.dep, author)
    mine = [p for p in report.payouts if p.batch_id == batch.batch_id]
    assert len(mine) == 1 and mine[0].amount == credits[author] and not mine[0].claimed and not report.skipped
    before = c.token.functions.balanceOf(author).call()
    _send(c, st.functions.claimMany(author, payouts.claim_items(mine)), author)
    assert c.token.functions.balanceOf(author).call() == before + credits[author]
    assert payouts.payouts_of(c.w3, c.dep, author).claimable == 0

    # everyone else claims: the batch pays out exactly the debits, no wei lost or created
    paid = amt + credits[author]
    for r, a in batch.credits.credits:
        if r not in (Web3.to_checksum_address(contributor), author):
            _send(c, st.functions.claim(*batch.claim_args(r)), c.accts[0].address)
            paid += a
    assert paid == amount


def test_gas_goal_256_receipts_10_requesters_50_recipients(ctx, capsys):
    """Whole-transaction gas on Anvil; goal <= 1,000 gas per receipt. Also prints the marginal cost of one more
    requester and of one more credit (the figures in docs/benchmarks.md)."""
    c = ctx
    st, node = c.settlement, c.node.address
    requesters = [Account.from_key(bytes([0x70 + i]) * 32) for i in range(10)]
    funder = c.accts[0].address
    _send(c, c.token.functions.mint(funder, 10**4 * TOKEN), funder)
    _send(c, c.token.functions.approve(st.address, 10**30), funder)
    for r in requesters:
        _send(c, st.functions.depositFor(r.address, node, 1000 * TOKEN), funder)
    # realistic recipients: random-looking 20-byte addresses (calldata costs 16 gas per non-zero byte)
    recipients = [Web3.to_checksum_address(Web3.keccak(text=f"recipient-{i}")[12:]) for i in range(50)]
    rounds = iter(range(1, 100))

    def settle(n_req: int, n_rec: int, n_receipts: int = 256) -> int:
        rnd = next(rounds)
        amounts = [25 * 10**15 + i * 7919 for i in range(n_req)]
        debits = [signed_debit(c.domain, r.key, r.address, node, rnd * 10 * TOKEN, a)
                  for r, a in zip(requesters[:n_req], amounts)]
        credits = split.batch_credits(sum(amounts), c.fee_bps, c.protocol, {x: 1 for x in recipients[:n_rec]},
                                      recipients[0])
        receipts = [(rnd * 1000 + i).to_bytes(32, "big") for i in range(n_receipts)]
        b = Batch.build(node, receipts, f"ipfs://bench-{rnd}", debits, credits, c.fee_bps, c.protocol)
        assert len(b.credits.credits) == n_rec + 1
        return _send(c, st.functions.settleBatch(*b.settle_args()), node).gasUsed

    gas = [settle(10, 50), settle(10, 50)]
    one = settle(1, 1)
    per_requester = (settle(10, 1) - one) / 9
    per_credit = (settle(1, 50) - one) / 49
    with capsys.disabled():
        print(f"\nsettleBatch 256 receipts / 10 requesters / 50 recipients + protocol: {gas} gas = "
              f"{[round(g / 256) for g in gas]} gas per receipt; marginal: {per_requester:,.0f} gas per requester, "
              f"{per_credit:,.0f} gas per credit")
    assert max(gas) <= 256 * 1000
