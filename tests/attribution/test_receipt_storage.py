"""Receipts with evidence in the node's store: a database written before span attribution (no evidence column)
gains the column when the node opens it, its old receipts read back unchanged (same hash, signature valid), and a
receipt with evidence round-trips with its token ids (what settlement publishes)."""

from __future__ import annotations

import sqlite3
import time

from eth_account import Account

from openlora.attribution.evidence import DatanetEvidence, Evidence, SpanRef, completion_hash
from openlora.attribution.receipts import Receipt, receipt_hash, receipt_to_json, sign_receipt, verify_receipt
from openlora.node.storage import Store

NODE = Account.from_key(b"\x33" * 32)
REQUESTER = Account.from_key(b"\x44" * 32).address


def _receipt(n: int, evidence=None) -> Receipt:
    return sign_receipt(Receipt(f"cmpl-{n}", bytes([n]) * 32, REQUESTER, NODE.address, "bafyadapter", 3, 5, 100,
                                ((NODE.address, 1),), int(time.time()), evidence=evidence), NODE)


def test_old_database_gains_the_evidence_column_and_reads_old_receipts(tmp_path):
    url = f"sqlite:///{tmp_path / 'node.db'}"
    store = Store(url)
    old = _receipt(1)
    store.add_receipt(old)
    store.close()
    with sqlite3.connect(tmp_path / "node.db") as c:          # as a node before span attribution left it
        c.execute("ALTER TABLE receipts DROP COLUMN evidence")
        assert "evidence" not in {r[1] for r in c.execute("PRAGMA table_info(receipts)")}
    store = Store(url)
    try:
        back = store.receipt("cmpl-1")
        assert back == old and back.evidence is None and receipt_hash(back) == receipt_hash(old)
        assert verify_receipt(back)
        ids = tuple(range(7, 27))
        ev = Evidence("openlora-spans-else-static/1", 12, 16, (2000, 3000, 5000), "sha256:" + "ab" * 32,
                      completion_hash(ids), (DatanetEvidence(1, "bafyv", "bafyi", (SpanRef(2, 14, ((1, 0, 5),)),)),),
                      ids)
        new = _receipt(2, ev)
        store.add_receipt(new)
        got = store.receipt("cmpl-2")
        assert got == new and got.evidence.completion_ids == ids and verify_receipt(got)
        assert store.get_receipt("cmpl-2")["evidence"] == receipt_to_json(new)["evidence"]
        assert [r.request_id for r in store.pending(10)] == ["cmpl-1", "cmpl-2"]
    finally:
        store.close()
