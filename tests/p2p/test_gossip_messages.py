"""Gossip message validation without a network: signatures, authorship, shape, freshness, registry, dedupe."""

from __future__ import annotations

import json
import time

from eth_account import Account

from openlora.node.p2p import gossip
from openlora.node.p2p.gossip import GossipValidator

CID = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"


def test_valid_announcement_and_heartbeat():
    a = Account.create()
    v = GossipValidator()
    msg = v.check(gossip.announcement(a, CID, "base", 123))
    assert msg and msg["author"] == a.address and msg["size"] == 123
    hb = v.check(gossip.heartbeat(a, "12D3KooX", "base", [CID], 0.5, 7), sender_peer="12D3KooX")
    assert hb and hb["adapters"] == [CID]
    assert v.accepted == {"announce": 1, "heartbeat": 1}


def test_invalid_messages_are_dropped_and_counted():
    a, b = Account.create(), Account.create()
    v = GossipValidator()
    good = json.loads(gossip.announcement(a, CID, "base", 1))
    unsigned = dict(good)
    del unsigned["sig"]
    forged = dict(good, author=b.address)           # claims another author
    tampered = dict(good, size=999)                   # changed after signing
    assert v.check(json.dumps(unsigned).encode()) is None
    assert v.check(json.dumps(forged).encode()) is None
    assert v.check(json.dumps(tampered).encode()) is None
    assert v.check(b"not json") is None
    assert v.check(gossip.announcement(a, "not-a-cid", "base", 1)) is None
    assert v.check(gossip.announcement(a, CID, "base", 1, ts=time.time() + 3600)) is None
    assert v.check(gossip.heartbeat(a, "peerX", "b", [], 0, 0), sender_peer="peerY") is None
    assert v.check(gossip.heartbeat(a, "p", "b", [], 0, 0, ts=time.time() - 7200), sender_peer="p") is None
    assert v.check(b"{" + b" " * gossip.MAX_MESSAGE_BYTES + b"}") is None
    assert v.dropped == {"unsigned": 1, "bad-signature": 2, "malformed": 1, "bad-cid": 1, "from-the-future": 1,
                         "peer-mismatch": 1, "stale": 1, "oversized": 1}
    assert not v.accepted


def test_registry_check_and_dedupe():
    a = Account.create()
    registered = {CID}
    calls = []

    def check(msg):
        calls.append(msg["cid"])
        return msg["cid"] in registered

    v = GossipValidator(registry_check=check)
    other = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert v.check(gossip.announcement(a, other, "base", 1)) is None
    assert v.dropped["not-registered"] == 1
    first = v.check(gossip.announcement(a, CID, "base", 1))
    again = v.check(gossip.announcement(a, CID, "base", 1, ts=time.time() + 1))  # re-sent later
    assert first and again and calls.count(CID) == 1  # registry consulted once per (cid, author)
    assert v.first_time(first) and not v.first_time(again) and v.duplicates == 1
