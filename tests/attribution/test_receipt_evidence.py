"""Receipts with attribution evidence: the rule (spans when any matched, else static), exact integer vectors,
the V2 hash that covers the evidence while old receipts keep their hash, strict parsing of untrusted receipt
JSON (sizes, types, depth, encodings), and the receipts' credits splitting to the wei (property tests)."""

from __future__ import annotations

import json

import pytest
from eth_account import Account
from hypothesis import given, settings, strategies as st

from openlora.attribution import pricing
from openlora.attribution.attribute import attribute
from openlora.attribution.evidence import Evidence, EvidenceError, completion_hash, evidence_hash
from openlora.attribution.receipts import (RECEIPT_TYPEHASH, Receipt, ReceiptError, receipt_from_json, receipt_hash,
                                           receipt_to_json, sign_receipt, verify_receipt)
from openlora.attribution.spans import SpanIndex
from openlora.attribution.split import batch_credits, split_exact
from openlora.safejson import UnsafeJSONError, loads as safe_loads

NODE = Account.from_key(b"\x11" * 32)
AUTHOR = pricing.checksum("0x" + "aa" * 20)
ALICE, BOB, CAROL = (pricing.checksum("0x" + x * 20) for x in ("a1", "b0", "c0"))
SHARES = pricing.Shares(2_000, 3_000, 5_000)
PASSAGE = list(range(1000, 1040))            # bob's distinctive 40-token passage
ROWS = [(1, 0, [5, 6, 7, 8, 9, 10, 11, 12] * 3), (2, 0, [1, 2, 3] + PASSAGE + [4]), (3, 0, list(range(200, 260))),
        (3, 1, list(range(300, 320)))]
TERMS = pricing.AdapterTerms("bafyadapter", pricing.checksum(AUTHOR), 10, ((7, 10_000),))
VERSION = pricing.VersionWeights(7, 1, "bafyversion", {1: pricing.checksum(ALICE), 2: pricing.checksum(BOB),
                                                       3: pricing.checksum(CAROL)}, {1: 24, 2: 44, 3: 80})


@pytest.fixture(scope="module")
def index():
    return SpanIndex.build(ROWS)


def _attr(index, ids, **kw):
    return attribute(TERMS, {7: VERSION}, lambda d, v: index, ids, min_len=kw.get("min_len", 12),
                     max_occurrences=kw.get("max_occurrences", 16), shares=SHARES, tokenizer="sha256:" + "0" * 64,
                     operator=NODE.address)


def _share(vector, who):
    total = sum(w for _, w in vector)
    return sum(w for a, w in vector if a == pricing.checksum(who)) / total


def test_reproduced_passage_goes_to_its_contributor(index):
    a = _attr(index, [9999, 9998] + PASSAGE[:30] + [9997])
    (entry,) = a.evidence.datanets
    assert [(s.start, s.length) for s in entry.spans] == [(2, 30)]
    assert entry.spans[0].occurrences == ((2, 0, 3),)
    assert entry.index_cid == index.cid() and entry.version_cid == "bafyversion"
    assert _share(a.vector, BOB) == pytest.approx(0.5)            # the whole contributors' share
    assert _share(a.vector, ALICE) == 0 and _share(a.vector, CAROL) == 0
    assert _share(a.vector, AUTHOR) == pytest.approx(0.2) and _share(a.vector, NODE.address) == pytest.approx(0.3)


def test_unrelated_completion_has_no_span_and_static_weights(index):
    a = _attr(index, list(range(5000, 5100)))
    assert a.evidence.datanets[0].spans == ()
    assert _share(a.vector, ALICE) == pytest.approx(0.5 * 24 / 148)
    assert _share(a.vector, BOB) == pytest.approx(0.5 * 44 / 148)
    assert _share(a.vector, CAROL) == pytest.approx(0.5 * 80 / 148)
    # a span shorter than min_len does not count
    assert _attr(index, PASSAGE[:11]).evidence.datanets[0].spans == ()


def test_two_contributors_split_by_span_weights(index):
    a = _attr(index, PASSAGE[:20] + [9999] + list(range(200, 240)))
    assert {s.occurrences[0][0] for s in a.evidence.datanets[0].spans} == {2, 3}
    assert _share(a.vector, BOB) > 0 and _share(a.vector, CAROL) > _share(a.vector, BOB)
    assert _share(a.vector, ALICE) == 0


def test_boilerplate_spans_are_dropped(index):
    rows = [(i, 0, list(range(50, 80))) for i in (1, 2, 3)]
    idx = SpanIndex.build(rows)
    assert _attr(idx, list(range(50, 80)), max_occurrences=2).evidence.datanets[0].spans == ()
    assert len(_attr(idx, list(range(50, 80)), max_occurrences=3).evidence.datanets[0].spans[0].occurrences) == 3


def _receipt(ev=None, **kw) -> Receipt:
    base = dict(request_id="cmpl-1", request_digest=b"\x01" * 32, requester=ALICE, node=NODE.address,
                adapter_cid="bafyadapter", prompt_tokens=5, completion_tokens=42, price=10**15,
                attribution=((NODE.address, 3), (pricing.checksum(BOB), 5)), created_at=1_700_000_000, evidence=ev)
    base.update(kw)
    return sign_receipt(Receipt(**base), NODE)


def test_v2_hash_covers_evidence_and_v1_hash_is_unchanged(index):
    old = _receipt()
    from eth_utils import keccak
    from openlora.attribution.receipts import _addr, _uint, attribution_hash
    expected = keccak(b"".join([RECEIPT_TYPEHASH, keccak(text="cmpl-1"), b"\x01" * 32, _addr("r", ALICE),
                                _addr("n", NODE.address), keccak(text="bafyadapter"), _uint("p", 5), _uint("c", 42),
                                _uint("x", 10**15), attribution_hash(old.attribution), _uint("t", 1_700_000_000)]))
    assert receipt_hash(old) == expected
    ev = _attr(index, [9999, 9998] + PASSAGE[:30] + [9997]).evidence
    new = _receipt(ev)
    assert receipt_hash(new) != receipt_hash(old) and verify_receipt(new)
    back = receipt_from_json(json.loads(json.dumps(receipt_to_json(new))))
    assert back == new and back.evidence.completion_ids == ev.completion_ids and verify_receipt(back)
    # any change to the evidence changes the hash: the node's signature no longer verifies
    d = receipt_to_json(new)
    d["evidence"]["datanets"][0]["spans"][0][2][0][0] = 1
    assert not verify_receipt(receipt_from_json(d))
    # an old published receipt (no evidence) still reads and verifies
    assert verify_receipt(receipt_from_json(json.loads(json.dumps(receipt_to_json(old)))))


def test_evidence_without_tokens_keeps_its_hash(index):
    ev = _attr(index, PASSAGE).evidence
    slim = Evidence.from_json(ev.to_json(with_tokens=False))
    assert slim.completion_ids is None and evidence_hash(slim) == evidence_hash(ev)


BAD_EVIDENCE = [
    ("not an object", lambda d: [1]),
    ("unknown field", lambda d: {**d, "x": 1}),
    ("shares do not sum", lambda d: {**d, "shares": [1, 2, 3]}),
    ("float min_len", lambda d: {**d, "min_len": 12.0}),
    ("bool min_len", lambda d: {**d, "min_len": True}),
    ("negative span start", lambda d: _span(d, [-1, 30, [[2, 0, 3]]])),
    ("span past completion", lambda d: _span(d, [40, 30, [[2, 0, 3]]])),
    ("span shorter than min_len", lambda d: _span(d, [2, 3, [[2, 0, 3]]])),
    ("no occurrence", lambda d: _span(d, [2, 30, []])),
    ("occurrence of strings", lambda d: _span(d, [2, 30, [["2", "0", "3"]]])),
    ("token ids not hashing", lambda d: {**d, "completion_ids": d["completion_ids"][:-1]}),
    ("token id too big", lambda d: {**d, "completion_ids": [2**40]}),
    ("huge string", lambda d: {**d, "tokenizer": "x" * 100_000}),
    ("control characters", lambda d: {**d, "tokenizer": "a\x00b"}),
    ("bad hash", lambda d: {**d, "completion_hash": "0x1234"}),
    ("duplicate datanet", lambda d: {**d, "datanets": d["datanets"] * 2}),
]


def _span(d, span):
    d = json.loads(json.dumps(d))
    d["datanets"][0]["spans"] = [span]
    return d


@pytest.mark.parametrize("name,mutate", BAD_EVIDENCE, ids=[b[0] for b in BAD_EVIDENCE])
def test_bad_evidence_is_refused_with_one_line(index, name, mutate):
    good = receipt_to_json(_receipt(_attr(index, [9999, 9998] + PASSAGE[:30] + [9997]).evidence))
    bad = {**good, "evidence": mutate(good["evidence"])}
    with pytest.raises(ReceiptError) as e:
        receipt_from_json(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("mutate", [
    lambda d: {**d, "price": 5},                      # big integers travel as decimal strings
    lambda d: {**d, "price": "-5"},
    lambda d: {**d, "price": "1" * 100},
    lambda d: {**d, "prompt_tokens": "5"},
    lambda d: {**d, "prompt_tokens": -1},
    lambda d: {**d, "attribution": [["0x12", "1"]]},
    lambda d: {**d, "attribution": [[ALICE, "1"]] * 5000},
    lambda d: {**d, "attribution": "x"},
    lambda d: {**d, "request_id": "x" * 1000},
    lambda d: {**d, "request_digest": "zz"},
    lambda d: {**d, "adapter_cid": 5},
    lambda d: [d],
    lambda d: {k: v for k, v in d.items() if k != "node"},
])
def test_bad_receipt_fields_are_refused(mutate):
    with pytest.raises(ReceiptError):
        receipt_from_json(mutate(receipt_to_json(_receipt())))


def test_hostile_receipt_files_fail_at_the_parser():
    for data in (b"[" * 200_000, b'{"receipts": [' + b"1," * 10 + b"]", b"\xff\xfe{}", '{"a": NaN}'.encode(),
                 b'"\\ud800"', b"x" * (2 << 20)):
        with pytest.raises(UnsafeJSONError):
            safe_loads(data, max_bytes=1 << 20, max_depth=16)


def test_completion_hash_refuses_out_of_range_ids():
    with pytest.raises(EvidenceError):
        completion_hash([2**32])
    assert completion_hash([]) == completion_hash(())


addresses = st.sampled_from([ALICE, BOB, CAROL, AUTHOR, NODE.address])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**24),
                          st.lists(st.tuples(addresses, st.integers(0, 2**96)), min_size=1, max_size=6)),
                min_size=1, max_size=20),
       st.integers(0, 10_000))
def test_credits_of_many_receipts_sum_to_the_batch_total(receipts, fee_bps):
    """Exact to the wei: each receipt's price splits into exactly its price; the batch's credits (protocol fee
    included) sum to exactly the debits."""
    from openlora.attribution.split import merge
    per = []
    for price, weights in receipts:
        w: dict[str, int] = {}
        for who, x in weights:
            w[who] = w.get(who, 0) + x
        part = split_exact(price, w, NODE.address)
        assert sum(part.values()) == price
        per.append(part)
    total = sum(p for p, _ in receipts)
    credits = batch_credits(total, fee_bps, "0x" + "ee" * 20, merge(*per), NODE.address)
    assert sum(credits.values()) == total


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.lists(st.integers(0, 40), min_size=1, max_size=50)),
                min_size=1, max_size=6),
       st.lists(st.integers(0, 40), min_size=0, max_size=80), st.integers(1, 6), st.integers(1, 5))
def test_span_vectors_are_exact_integers(rows, completion, min_len, max_occ):
    """Random rows, completions and parameters: the vector's weights are integers, its contributors are exactly
    the contributions named by spans (or every weighted one when none matched), and its split is exact."""
    seen: dict[int, int] = {}
    built = []
    for c, toks in rows:
        built.append((c, seen.get(c, 0), toks))
        seen[c] = seen.get(c, 0) + 1
    idx = SpanIndex.build(built)
    a = _attr(idx, completion, min_len=min_len, max_occurrences=max_occ)
    assert all(isinstance(w, int) and w > 0 for _, w in a.vector)
    named = {o[0] for s in a.evidence.datanets[0].spans for o in s.occurrences}
    owners = {1: pricing.checksum(ALICE), 2: pricing.checksum(BOB), 3: pricing.checksum(CAROL)}
    expected = {owners[c] for c in named} if named else set(owners.values())
    got = {who for who, _ in a.vector} - {NODE.address, pricing.checksum(AUTHOR)}
    assert got <= expected
    price = 10**18 + 7
    assert sum(split_exact(price, dict(a.vector), NODE.address).values()) == price


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=20) |
                           st.floats(allow_nan=False, allow_infinity=False),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_receipt_parser_fuzz_raises_only_receipt_error(index, data):
    """Random mutations of a valid receipt with evidence (any field replaced by any JSON value, at the top level,
    in the evidence, in a span): the parser accepts or raises ReceiptError, nothing else."""
    good = receipt_to_json(_receipt(_attr(index, [9999, 9998] + PASSAGE[:30] + [9997]).evidence))
    d = json.loads(json.dumps(good))
    target = data.draw(st.sampled_from(["top", "evidence", "datanet", "span"]))
    if target == "span":         # [start, length, [[contribution, row, offset], ...]]
        span = d["evidence"]["datanets"][0]["spans"][0]
        where = data.draw(st.sampled_from([span, span[2], span[2][0]]))
        where[data.draw(st.integers(0, len(where) - 1))] = data.draw(json_values)
    else:
        obj = {"top": d, "evidence": d["evidence"], "datanet": d["evidence"]["datanets"][0]}[target]
        obj[data.draw(st.sampled_from(sorted(obj) + ["extra"]))] = data.draw(json_values)
    try:
        r = receipt_from_json(d)
    except ReceiptError:
        return
    receipt_hash(r)     # whatever parses also hashes
