"""Off-chain halves of the protocol, checked against references nobody here wrote (eth-account's EIP-712
encoder) and against their own invariants (exact splits, Merkle proofs). The on-chain match is in tests/devnet."""

from __future__ import annotations

import random

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from openlora.attribution import eip712, merkle, split
from openlora.attribution.batch import Batch, BatchError, signed_debit

DOMAIN = eip712.Domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
ALICE = Account.from_key(b"\x11" * 32)
NODE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PROTOCOL = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"


def _request(**kw) -> eip712.Request:
    base = dict(requester=ALICE.address, node=NODE, adapter=eip712.adapter_id("bafyadapter"),
                promptHash=eip712.prompt_hash("hello", {"temperature": 0}), maxTokens=64, maxPrice=10**15,
                nonce=7, deadline=2_000_000_000)
    base.update(kw)
    return eip712.Request(**base)


@pytest.mark.parametrize("msg", [_request(), eip712.Voucher(ALICE.address, NODE, 123456789)])
def test_digest_matches_eth_account(msg):
    signable = encode_typed_data(full_message=eip712.typed_data(msg, DOMAIN))
    ref = keccak(b"\x19" + signable.version + signable.header + signable.body)
    assert eip712.digest(msg, DOMAIN) == ref
    sig = eip712.sign(msg, DOMAIN, ALICE.key)
    assert Account.sign_typed_data(ALICE.key, full_message=eip712.typed_data(msg, DOMAIN)).signature == sig
    assert eip712.recover(msg, DOMAIN, sig) == ALICE.address


def test_tampering_and_compact_signatures():
    msg = _request()
    sig = eip712.sign(msg, DOMAIN, ALICE.key)
    assert not eip712.is_signed_by(_request(maxPrice=10**15 + 1), DOMAIN, sig, ALICE.address)
    assert not eip712.is_signed_by(msg, eip712.Domain(1, DOMAIN.verifying_contract), sig, ALICE.address)
    r, vs = eip712.to_compact(sig)
    assert eip712.expand_compact(r + vs) == sig
    assert eip712.recover(msg, DOMAIN, r + vs) == ALICE.address
    with pytest.raises(eip712.Eip712Error):
        eip712.recover(msg, DOMAIN, b"\x00" * 10)
    high_s = sig[:32] + (eip712._N - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(eip712.Eip712Error):  # the malleable twin: ecrecover accepts it, the contract does not
        eip712.recover(msg, DOMAIN, high_s)
    with pytest.raises(eip712.Eip712Error):
        eip712.digest(_request(maxTokens=-1), DOMAIN)
    with pytest.raises(eip712.Eip712Error):
        eip712.adapter_id("")


def test_prompt_hash_is_canonical():
    assert eip712.prompt_hash("p", {"a": 1, "b": 2}) == eip712.prompt_hash("p", {"b": 2, "a": 1})
    assert eip712.prompt_hash("p", {"a": 1}) != eip712.prompt_hash("p", {"a": 2})


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 51, 256])
def test_merkle_proofs_verify(n):
    leaves = [merkle.leaf(i.to_bytes(32, "big")) for i in range(n)]
    tree = merkle.MerkleTree.from_leaves(leaves)
    for i, lf in enumerate(leaves):
        assert merkle.verify(tree.proof(i), tree.root, lf)
        assert not merkle.verify(tree.proof(i), tree.root, merkle.leaf((n + i).to_bytes(32, "big")))
    with pytest.raises(merkle.MerkleError):
        tree.proof(n)


def test_credit_tree_sorts_and_rejects_bad_amounts():
    ct = merkle.CreditTree.build({"0x" + "22" * 20: 5, "0x" + "11" * 20: 7})
    assert [int(r, 16) for r, _ in ct.credits] == sorted(int(r, 16) for r, _ in ct.credits)
    amount, proof = ct.proof_for("0x" + "22" * 20)
    assert amount == 5 and merkle.verify(proof, ct.root, merkle.credit_leaf("0x" + "22" * 20, 5))
    with pytest.raises(merkle.MerkleError):
        merkle.credit_word(NODE, 0)
    with pytest.raises(merkle.MerkleError):
        merkle.credit_word(NODE, 2**96)


def test_split_exact_never_loses_or_creates_wei():
    rng = random.Random(0)
    for _ in range(500):
        total = rng.randrange(0, 10**24)
        bps = rng.randrange(0, 5001)
        weights = {f"0x{rng.randrange(1, 2**160):040x}": rng.randrange(0, 10**6) for _ in range(rng.randrange(1, 60))}
        operator = NODE
        credits = split.batch_credits(total, bps, PROTOCOL, weights, operator)
        assert sum(credits.values()) == total
        assert credits.get(PROTOCOL, 0) == total * bps // 10_000
        assert all(v > 0 for v in credits.values())
    with pytest.raises(split.SplitError):
        split.batch_credits(10, 100, PROTOCOL, {PROTOCOL: 1}, NODE)


def test_batch_build_checks_what_the_contract_checks():
    debit = signed_debit(DOMAIN, ALICE.key, ALICE.address, NODE, 1000, 1000)
    good = split.batch_credits(1000, 250, PROTOCOL, {NODE: 1}, NODE)
    b = Batch.build(NODE, [b"\x01" * 32], "ipfs://x", [debit], good, 250, PROTOCOL)
    assert b.total == 1000 and b.receipt_count == 1
    with pytest.raises(BatchError):
        Batch.build(NODE, [b"\x01" * 32], "ipfs://x", [debit], {NODE: 999, PROTOCOL: 25}, 250, PROTOCOL)
    with pytest.raises(BatchError):
        Batch.build(NODE, [b"\x01" * 32], "ipfs://x", [debit], {NODE: 980, PROTOCOL: 20}, 250, PROTOCOL)
    with pytest.raises(BatchError):
        Batch.build(NODE, [], "ipfs://x", [debit], good, 250, PROTOCOL)
