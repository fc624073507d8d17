"""node.storage reservations, on SQLite and on a real PostgreSQL server: a request's maximum cost is held atomically
with its nonce, racing admissions never exceed the limit together, a receipt replaces its reservation by the real
price, a released or restarted request owes nothing."""

from __future__ import annotations

import threading

from eth_account import Account

from openlora.attribution.receipts import Receipt, sign_receipt
from openlora.node.storage import Store

NODE = Account.from_key(b"\x11" * 32)


def _receipt(rid: str, requester: str, price: int) -> Receipt:
    r = Receipt(request_id=rid, request_digest=bytes(32), requester=requester, node=NODE.address, adapter_cid=None,
                prompt_tokens=3, completion_tokens=3, price=price, attribution=((NODE.address, 1),),
                created_at=1_700_000_000)
    return sign_receipt(r, NODE.key)


def test_racing_reservations_never_exceed_the_limit(db_url):
    url = db_url()
    stores = [Store(url) for _ in range(4)]          # as four processes would
    req = Account.create().address
    barrier, results, errors = threading.Barrier(4), [], []

    def admit(k: int, st: Store) -> None:
        barrier.wait()
        try:
            for i in range(5):
                results.append(st.reserve(req, 100 * k + i, f"r{k}-{i}", 7, limit=50)[0])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=admit, args=(k, st)) for k, st in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results.count("ok") == 7 and results.count("over_limit") == 13      # 7 * 7 = 49 <= 50 < 56
    assert stores[0].unsettled_charges(req) == 49 == stores[0].reserved(req)


def test_nonce_reuse_and_refusals_write_nothing(db_url):
    s = Store(db_url())
    req = Account.create().address
    assert s.reserve(req, 1, "a", 10, limit=10, voucher=(NODE.address, 10, b"v" * 65)) == ("ok", 10)
    assert s.reserve(req, 1, "b", 1, limit=100) == ("nonce_reused", 0)
    assert s.reserve(req, 2, "c", 1, limit=10) == ("over_limit", 10)
    assert s.reserve(req, 2, "c", 0, limit=10) == ("ok", 10)   # the refused request did not burn nonce 2
    assert s.voucher(req) == (10, b"v" * 65)
    assert s.unsettled_charges(req) == 10 and s.reserved(req) == 10


def test_receipt_replaces_the_reservation_and_release_gives_it_back(db_url):
    url = db_url()
    s = Store(url)
    req = Account.create().address
    assert s.reserve(req, 1, "served", 1000, limit=10**6)[0] == "ok"
    assert s.reserve(req, 2, "failed", 500, limit=10**6)[0] == "ok"
    assert s.reserve(req, 3, "interrupted", 300, limit=10**6)[0] == "ok"
    assert s.unsettled_charges(req) == 1800
    s.add_receipt(_receipt("served", req, 640))                 # the real price is below the maximum
    assert s.unsettled_charges(req) == 640 + 500 + 300 and s.reserved(req) == 800
    assert s.release("failed") == 500 and s.release("failed") == 0
    assert s.unsettled_charges(req) == 640 + 300
    # a restart: what the previous run admitted and never finished is released, receipts stay
    again = Store(url)
    assert again.release_all_reservations() == 1
    assert again.unsettled_charges(req) == 640 and again.reserved(req) == 0
