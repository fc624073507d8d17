"""node.storage, each test on SQLite and on a real PostgreSQL server: nonces claimed once (also by racing threads
and across restarts), the highest voucher kept, receipts round-tripped with their status, batches moving receipts
through pending/submitted/settled, 64-bit times and block numbers, nodes starting together on an empty database;
on PostgreSQL also: the URL forms, connection errors without the password, dropped connections, oversized fields.
And attribution.receipts: node signatures verify, any tampering breaks them."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from eth_account import Account

from openlora.attribution import merkle
from openlora.attribution.receipts import (Receipt, receipt_from_json, receipt_hash, receipt_to_json, sign_receipt,
                                  verify_receipt)
from openlora.node.storage import Store, StorageError

NODE = Account.from_key(b"\x11" * 32)
REQ = Account.create().address


def _receipt(i: int, price: int = 1000, requester: str = REQ) -> Receipt:
    r = Receipt(request_id=f"req-{i}", request_digest=bytes([i % 256]) * 32, requester=requester,
                node=NODE.address, adapter_cid="bafkreiexample" if i % 2 else None, prompt_tokens=3 + i,
                completion_tokens=9, price=price, attribution=((NODE.address, 3), (REQ, 2**200)),
                created_at=1_700_000_000 + i)
    return sign_receipt(r, NODE.key)


@pytest.fixture
def db(db_url) -> str:
    return db_url()


def test_receipt_signature_verifies_and_tampering_breaks_it():
    r = _receipt(1)
    assert len(r.node_signature) == 65 and verify_receipt(r)
    assert not verify_receipt(replace(r, price=r.price + 1))
    assert not verify_receipt(replace(r, attribution=((NODE.address, 4),)))
    assert not verify_receipt(replace(r, node_signature=b""))
    assert receipt_hash(replace(r, node_signature=b"x" * 65)) == receipt_hash(r)  # hash excludes the signature
    assert receipt_from_json(receipt_to_json(r)) == r
    with pytest.raises(ValueError):
        sign_receipt(r, b"\x22" * 32)  # not the receipt's node


def test_nonces_once_even_when_four_threads_race_and_after_restart(db):
    s = Store(db)
    assert s.use_nonce(REQ, 1) and not s.use_nonce(REQ, 1)
    assert s.use_nonce(REQ, 2**256 - 1) and s.use_nonce(Account.create().address, 1)
    wins: list[int] = []
    barrier = threading.Barrier(4)

    def racer():
        store = Store(db)  # each thread its own engine, as separate processes would
        barrier.wait()
        wins.extend(n for n in range(100, 300) if store.use_nonce(REQ, n))

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(wins) == list(range(100, 300))  # every nonce won exactly once
    s.close()
    again = Store(db)
    assert not again.use_nonce(REQ, 1) and not again.use_nonce(REQ.lower(), 150) and again.use_nonce(REQ, 3)


def test_vouchers_keep_the_highest_cap(db):
    s = Store(db)
    assert s.voucher(REQ) is None
    s.record_voucher(REQ, NODE.address, 500, b"a" * 65)
    s.record_voucher(REQ, NODE.address, 9 * 10**40, b"b" * 65)
    s.record_voucher(REQ, NODE.address, 10**3, b"c" * 65)  # lower (and shorter as a number): ignored
    assert s.voucher(REQ) == (9 * 10**40, b"b" * 65)
    assert Store(db).voucher(REQ.lower()) == (9 * 10**40, b"b" * 65)


def test_nonce_claim_records_the_voucher_in_the_same_transaction(db):
    """use_nonce(..., voucher=...) (what the request checks call): the voucher is kept with the claim, with the
    highest-cap rule; a reused nonce records nothing."""
    s = Store(db)
    assert s.use_nonce(REQ, 7, voucher=(NODE.address, 10**30, b"a" * 65))
    assert s.voucher(REQ) == (10**30, b"a" * 65)
    assert not s.use_nonce(REQ, 7, voucher=(NODE.address, 10**31, b"b" * 65))      # nonce used: nothing recorded
    assert s.voucher(REQ) == (10**30, b"a" * 65)
    assert s.use_nonce(REQ, 8, voucher=(NODE.address, 10**29, b"c" * 65))          # lower cap: claim, voucher kept
    assert s.voucher(REQ) == (10**30, b"a" * 65)
    assert s.use_nonce(REQ, 9, voucher=(NODE.address, 10**32, b"d" * 65))
    assert Store(db).voucher(REQ) == (10**32, b"d" * 65)


def test_receipts_round_trip_status_and_restart(db):
    s = Store(db)
    rs = [_receipt(i, price=10**20 + i) for i in range(5)]
    for r in rs:
        s.add_receipt(r)
    with pytest.raises(StorageError):
        s.add_receipt(rs[0])
    got = s.get_receipt("req-3")
    assert got["status"] == "pending" and got["price"] == str(10**20 + 3)
    assert got["receipt_hash"] == "0x" + receipt_hash(rs[3]).hex() and s.receipt("req-3") == rs[3]
    assert s.get_receipt("nope") is None
    assert s.unsettled_charges(REQ) == sum(r.price for r in rs) and s.unsettled_charges(NODE.address) == 0
    assert s.counts() == {"pending": 5, "submitted": 0, "settled": 0}
    assert [r.request_id for r in s.pending(3)] == ["req-0", "req-1", "req-2"]

    # a batch: receipts in Merkle order go to submitted, then settled with a proof
    ids = ["req-2", "req-0"]
    root = merkle.receipts_root([receipt_hash(rs[2]), receipt_hash(rs[0])])
    s.create_batch("0x" + "ab" * 32, ids, "0x" + root.hex(), "file:///tmp/x.json",
                   [{"requester": REQ, "cap": "1", "amount": "1", "signature": "0x"}], {NODE.address: 5}, 5)
    assert s.counts() == {"pending": 3, "submitted": 2, "settled": 0}
    with pytest.raises(StorageError):  # a receipt already in a batch cannot join another
        s.create_batch("0x" + "cd" * 32, ["req-1", "req-2"], "0x" + root.hex(), "u", [], {}, 0)
    assert s.counts()["pending"] == 3  # ...and the failed creation left nothing behind
    assert [b["batch_id"] for b in s.open_batches()] == ["0x" + "ab" * 32]
    s.set_batch("0x" + "ab" * 32, state="settled", tx_hash="0x" + "ee" * 32, block=7)
    del s
    s2 = Store(db)  # restart
    assert s2.counts() == {"pending": 3, "submitted": 0, "settled": 2} and s2.open_batches() == []
    settled = s2.get_receipt("req-0")
    assert settled["status"] == "settled" and settled["tx_hash"] == "0x" + "ee" * 32 and settled["block"] == 7
    proof = [bytes.fromhex(p[2:]) for p in settled["proof"]]
    assert merkle.verify(proof, root, merkle.leaf(receipt_hash(rs[0])))
    assert s2.unsettled_charges(REQ) == sum(r.price for r in rs) - rs[0].price - rs[2].price


def test_failed_batch_returns_receipts_to_pending(db):
    s = Store(db)
    for i in range(3):
        s.add_receipt(_receipt(i))
    s.create_batch("0x" + "01" * 32, ["req-0", "req-1"], "0x" + "00" * 32, "u", [], {}, 0)
    s.set_batch("0x" + "01" * 32, state="failed", error="rejected")
    assert s.counts() == {"pending": 3, "submitted": 0, "settled": 0}
    s.create_batch("0x" + "01" * 32, ["req-0", "req-1"], "0x" + "00" * 32, "u", [], {}, 0)  # same id again
    assert s.batch("0x" + "01" * 32)["state"] == "prepared"


def test_add_receipt_rate(db, capsys):
    """Durable inserts per second (SQLite WAL, synchronous=FULL; PostgreSQL synchronous_commit=on, loopback TCP):
    the cost each served request pays."""
    s = Store(db)
    rs = [_receipt(i) for i in range(1000, 1200)]
    t = time.perf_counter()
    for r in rs:
        s.add_receipt(r)
    dt = time.perf_counter() - t
    t = time.perf_counter()
    for n in range(200):
        s.use_nonce(REQ, 10_000 + n)
    dn = time.perf_counter() - t
    with capsys.disabled():
        print(f"\nstore ({s.dialect}): add_receipt {len(rs) / dt:,.0f}/s ({dt / len(rs) * 1e3:.2f} ms each), "
              f"use_nonce {200 / dn:,.0f}/s")


def test_times_block_numbers_and_tx_nonces_past_32_bits(db):
    """Year-2242 timestamps, block 2**35, tx nonce 2**40: a 32-bit INTEGER column (PostgreSQL's) would overflow."""
    s = Store(db)
    late = 2**33
    r = sign_receipt(replace(_receipt(7), created_at=late), NODE.key)
    s.add_receipt(r)
    assert s.receipt("req-7") == r and s.oldest_pending_at() == late
    bid = "0x" + "5a" * 32
    s.create_batch(bid, ["req-7"], "0x" + receipt_hash(r).hex(), "u", [], {NODE.address: 2**255}, 2**256 - 1)
    s.set_batch(bid, state="submitted", tx_hash="0x" + "ee" * 32, tx_nonce=2**40)
    got = s.batch(bid)
    assert got["tx_nonce"] == 2**40 and got["total"] == 2**256 - 1 and got["credits"] == {NODE.address: 2**255}
    s.set_batch(bid, state="settled", block=2**35)
    out = Store(db).get_receipt("req-7")
    assert out["status"] == "settled" and out["block"] == 2**35 and out["created_at"] == late


def test_nodes_starting_together_on_an_empty_database(db):
    """Six stores created at once on a database without tables (nodes restarted together): none fails, and they
    then share one nonce table (a nonce claimed through one is taken for all)."""
    barrier = threading.Barrier(6)
    stores: list[Store] = []
    errors: list[BaseException] = []

    def start():
        barrier.wait()
        try:
            stores.append(Store(db))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(stores) == 6
    assert [st.use_nonce(REQ, 42) for st in stores].count(True) == 1
    for st in stores:
        st.close()


# ---- running unsettled totals (what every signed request's check reads) ------------------------------------


def _scan_unsettled(s: Store, requester: str) -> int:
    """The definition: the sum of the requester's receipts not settled yet, from the receipts themselves."""
    return sum(r.price for r in s.unsettled_receipts() if r.requester.lower() == requester.lower())


def test_unsettled_totals_follow_receipts_through_batches(db):
    """add -> batch -> fail -> batch again -> settle, free receipts, two requesters, prices past 2**64: the running
    total always equals the scan of the receipts, settling twice changes nothing, and a restart reads the same."""
    s = Store(db)
    other = Account.create().address
    big_price = 2**200 + 7
    rs = [_receipt(i, price=p, requester=q) for i, (p, q) in
          enumerate([(1000, REQ), (big_price, REQ), (0, REQ), (5, other), (2**70, other), (333, REQ)])]
    for r in rs:
        s.add_receipt(r)
    for q in (REQ, other):
        assert s.unsettled_charges(q) == _scan_unsettled(s, q) > 0
    assert s.unsettled_charges(REQ.lower()) == 1000 + big_price + 333
    s.mark_free_settled(["req-2", "req-0"])                      # req-0 has a price: not settled this way
    assert s.get_receipt("req-0")["status"] == "pending" and s.get_receipt("req-2")["status"] == "settled"
    bid = "0x" + "ab" * 32
    s.create_batch(bid, ["req-0", "req-1", "req-3"], "0x" + "00" * 32, "u", [], {}, 0)
    assert s.unsettled_charges(REQ) == 1000 + big_price + 333    # in flight is still unsettled
    s.set_batch(bid, state="failed", error="rejected")
    assert s.unsettled_charges(other) == 5 + 2**70
    s.create_batch(bid, ["req-0", "req-1", "req-3"], "0x" + "00" * 32, "u", [], {}, 0)
    s.set_batch(bid, state="settled", block=9)
    s.set_batch(bid, state="settled", block=9)                   # again (a resumed node): no double subtraction
    assert s.unsettled_charges(REQ) == 333 == _scan_unsettled(s, REQ)
    assert s.unsettled_charges(other) == 2**70 == _scan_unsettled(s, other)
    assert s.unsettled_charges(Account.create().address) == 0
    assert Store(db).unsettled_charges(REQ) == 333


def test_unsettled_totals_exact_under_concurrent_receipts(db):
    """Four stores (as four processes would) add receipts of one requester at once: no update is lost."""
    stores = [Store(db) for _ in range(4)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def writer(k: int, st: Store) -> None:
        barrier.wait()
        try:
            for i in range(25):
                st.add_receipt(_receipt(1000 + 25 * k + i, price=10**18 + k))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k, st)) for k, st in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert stores[0].unsettled_charges(REQ) == sum(25 * (10**18 + k) for k in range(4)) == _scan_unsettled(
        stores[0], REQ)


def test_unsettled_totals_built_once_for_a_database_from_before_them(db):
    """A database written before the running totals existed (no `unsettled` table) gets them summed from its
    receipts when a store opens it."""
    from sqlalchemy import text

    s = Store(db)
    for i, p in enumerate((7, 2**100, 11)):
        s.add_receipt(_receipt(i, price=p))
    s.create_batch("0x" + "cd" * 32, ["req-2"], "0x" + "00" * 32, "u", [], {}, 0)
    s.set_batch("0x" + "cd" * 32, state="settled", block=1)
    with s.engine.begin() as c:
        c.execute(text("DROP TABLE unsettled"))
    s.close()
    assert Store(db).unsettled_charges(REQ) == 7 + 2**100
