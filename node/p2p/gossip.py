"""Gossip messages: signed adapter announcements and node heartbeats, their validation and deduplication.

Wire format: UTF-8 JSON objects. Every message carries `type`, its fields, `ts` (unix seconds) and `sig`, an
EIP-191 personal-sign signature (eth-account) over the canonical JSON of all other fields (sorted keys, no
spaces). An announcement is signed by the adapter's author (`author` must be the recovered address); a heartbeat
by the node's Ethereum account (`address`).
  announcement: {type:"announce", cid, base_model, author, size, registry, ts, sig}
  heartbeat:    {type:"heartbeat", peer_id, address, base_model, adapters:[cid], load, price, ts, sig}

What it does: build and sign messages, and `GossipValidator` checks one received message (shape, size, signature,
freshness, optional AdapterRegistry check, cached) and `first_time` deduplicates re-sent announcements; rejected messages are counted
by reason in `dropped`.
What it does not do: network I/O (`node.p2p.host` publishes and subscribes) or chain access: the registry check is
a callable the node's wiring passes in when a chain is configured.
"""

from __future__ import annotations

import json
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from eth_account import Account
from eth_account.messages import encode_defunct

from openlora.content.cid import CID
from openlora.node.ipfs.errors import CidError
from openlora.safejson import loads as safe_loads

TOPIC_ANNOUNCE = "/openlora/adapters/1"
TOPIC_HEARTBEAT = "/openlora/heartbeat/1"
MAX_MESSAGE_BYTES = 16 * 1024
MAX_CLOCK_SKEW_S = 300.0
MAX_AGE_S = 3600.0


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in fields.items() if k != "sig"}, sort_keys=True,
                      separators=(",", ":")).encode()


def sign(fields: dict[str, Any], account) -> bytes:
    """Return the wire bytes of `fields` signed by `account` (an eth-account LocalAccount)."""
    body = dict(fields)
    body["sig"] = account.sign_message(encode_defunct(_canonical(body))).signature.hex()
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def signer_of(msg: dict[str, Any]) -> str:
    sig = msg.get("sig")
    if not isinstance(sig, str):
        raise ValueError("unsigned")
    return Account.recover_message(encode_defunct(_canonical(msg)), signature=bytes.fromhex(sig.removeprefix("0x")))


def announcement(account, cid: str, base_model: str, size: int, registry: str = "", ts: float | None = None) -> bytes:
    return sign({"type": "announce", "cid": cid, "base_model": base_model, "author": account.address,
                 "size": int(size), "registry": registry, "ts": round(ts if ts is not None else time.time(), 3)},
                account)


def heartbeat(account, peer_id: str, base_model: str, adapters: list[str], load: float, price: int,
              ts: float | None = None) -> bytes:
    return sign({"type": "heartbeat", "peer_id": peer_id, "address": account.address, "base_model": base_model,
                 "adapters": sorted(adapters), "load": float(load), "price": int(price),
                 "ts": round(ts if ts is not None else time.time(), 3)}, account)


_SCHEMA = {
    "announce": {"cid": str, "base_model": str, "author": str, "size": int, "registry": str, "ts": (int, float)},
    "heartbeat": {"peer_id": str, "address": str, "base_model": str, "adapters": list, "load": (int, float),
                  "price": int, "ts": (int, float)},
}


@dataclass
class GossipValidator:
    """Checks received gossip. `registry_check(announcement) -> bool` is consulted when given (chain configured)."""
    registry_check: Callable[[dict], bool] | None = None
    clock: Callable[[], float] = time.time
    dedupe_size: int = 4096
    dropped: Counter = field(default_factory=Counter)
    accepted: Counter = field(default_factory=Counter)
    duplicates: int = 0
    _seen: "OrderedDict[bytes, None]" = field(default_factory=OrderedDict)
    _registered: set = field(default_factory=set)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def check(self, data: bytes, sender_peer: str | None = None) -> dict | None:
        """The decoded message if valid; None (and counted in `dropped` by reason) otherwise."""
        if len(data) > MAX_MESSAGE_BYTES:
            return self._drop("oversized")
        try:
            msg = safe_loads(data, max_bytes=MAX_MESSAGE_BYTES, max_depth=4)  # flat objects: see the schema below
        except ValueError:  # UnsafeJSONError: too deep, not UTF-8, NaN, malformed
            return self._drop("malformed")
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str) or msg["type"] not in _SCHEMA:
            return self._drop("malformed")
        for key, tp in _SCHEMA[msg["type"]].items():
            if not isinstance(msg.get(key), tp) or isinstance(msg.get(key), bool):
                return self._drop("malformed")
        try:
            signer = signer_of(msg)
        except ValueError:
            return self._drop("unsigned")
        except Exception:  # noqa: BLE001 - any failure to recover is a bad signature
            return self._drop("bad-signature")
        claimed = msg["author"] if msg["type"] == "announce" else msg["address"]
        if signer.lower() != claimed.lower():
            return self._drop("bad-signature")
        now = self.clock()
        if msg["ts"] > now + MAX_CLOCK_SKEW_S:
            return self._drop("from-the-future")
        if msg["type"] == "heartbeat" and msg["ts"] < now - MAX_AGE_S:
            return self._drop("stale")  # announcements do not expire: they describe immutable content
        if msg["type"] == "announce":
            try:
                CID.parse(msg["cid"])
            except CidError:
                return self._drop("bad-cid")
            if msg["size"] < 0:
                return self._drop("malformed")
        elif msg["peer_id"] != (sender_peer or msg["peer_id"]):
            return self._drop("peer-mismatch")
        if msg["type"] == "announce" and self.registry_check is not None:
            rkey = f"{msg['cid']}|{signer.lower()}|{msg['base_model']}"
            if rkey not in self._registered:
                try:
                    ok = bool(self.registry_check(msg))
                except Exception:  # noqa: BLE001 - a chain error must not let the message through
                    ok = False
                if not ok:
                    return self._drop("not-registered")
                self._registered.add(rkey)
        self.accepted[msg["type"]] += 1
        return msg

    def first_time(self, msg: dict) -> bool:
        """Deduplication of what the node learns: False for a re-sent announcement (same CID, author, base model)
        or a heartbeat already seen. Re-sends are still forwarded by gossipsub (they are valid) so that peers that
        joined late learn of old adapters; they are only not processed twice here."""
        key = (msg["sig"] if msg["type"] == "heartbeat" else
               f"{msg['cid']}|{msg['author'].lower()}|{msg['base_model']}").encode()
        if key in self._seen:
            self._seen.move_to_end(key)
            self.duplicates += 1
            return False
        self._seen[key] = None
        while len(self._seen) > self.dedupe_size:
            self._seen.popitem(last=False)
        return True
