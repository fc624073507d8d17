"""The AdapterRegistry check for gossip: is this announcement's (CID, author, base model) registered on chain?

What it does: `AdapterRegistryCheck(contract)` is the `registry_check` callable `GossipValidator` takes when a chain
is configured: it reads `isActive` and `getAdapter(keccak256(cid))` from the AdapterRegistry contract and accepts
an announcement only if the adapter is registered, not retired, authored by the announcement's author and for the
same base model. Negative answers are cached for `negative_ttl_s` (a re-sent unregistered announcement does not
cost a chain call each time); positive ones are cached by the validator itself. Chain errors count as "no".
What it does not do: register adapters (the author does, on chain) or run asynchronously: it is called from the
trio thread with a short HTTP timeout, once per (CID, author) and TTL.
"""

from __future__ import annotations

import logging
import time

from eth_utils import keccak

log = logging.getLogger("openlora.p2p")


class AdapterRegistryCheck:
    def __init__(self, contract, negative_ttl_s: float = 30.0, clock=time.monotonic):
        self.contract = contract
        self.negative_ttl_s = negative_ttl_s
        self.clock = clock
        self._negative: dict[tuple[str, str, str], float] = {}
        self.chain_calls = 0

    @classmethod
    def from_deployment(cls, w3, deployment, **kw) -> "AdapterRegistryCheck":
        return cls(deployment.contract(w3, "AdapterRegistry"), **kw)

    def __call__(self, msg: dict) -> bool:
        key = (msg["cid"], msg["author"].lower(), msg["base_model"])
        until = self._negative.get(key)
        if until is not None and self.clock() < until:
            return False
        ok = self._ask(msg)
        if not ok:
            self._negative[key] = self.clock() + self.negative_ttl_s
        return ok

    def _ask(self, msg: dict) -> bool:
        adapter_id = keccak(text=msg["cid"])
        self.chain_calls += 1
        try:
            if not self.contract.functions.isActive(adapter_id).call():
                return False
            a = self.contract.functions.getAdapter(adapter_id).call()
        except Exception as e:  # noqa: BLE001 - any chain failure means "not shown to be registered"
            log.warning("AdapterRegistry lookup of %s failed: %r", msg["cid"], e)
            return False
        author, retired, base_model = a[0], a[1], a[5]
        return (not retired and author.lower() == msg["author"].lower() and base_model == msg["base_model"])
