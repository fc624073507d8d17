"""Signed inference requests: what a dApp sends with its body, and the node's checks before any compute.

What it does: parses the `openlora` authorisation object (from the body, or the X-OpenLoRA-Auth header as JSON),
and checks, in this order, each failure an `AuthError` with an HTTP status, a machine-readable code and a
sentence: fields well formed; chain id and verifying contract are this node's domain; the request names this
node; the deadline is in the future; the adapter and the prompt hash match the body; the EIP-712 signature
recovers the requester; the signed max tokens and max price cover the request; the cumulative voucher is signed
by the requester and covers what this node may charge; the requester's deposit (lane to this node) covers it;
the nonce was never used (checked last and atomically, so a rejected request does not burn its nonce).
What it does not do: compute the price of a served request or write receipts (attribution.pricing/receipts).

The authorisation object (all integers as decimal strings or numbers, bytes as 0x hex):
    {"requester", "node", "adapter", "promptHash", "maxTokens", "maxPrice", "nonce", "deadline",
     "chainId", "verifyingContract", "signature",
     "voucher": {"cumulativeCap", "signature"}}
The prompt hash is attribution.eip712.prompt_hash(prompt_or_messages, signed_params(body)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from eth_utils import is_address, to_checksum_address

from openlora.attribution import eip712
from openlora.node.errors import NodeError

# Body fields the requester signs (with the prompt or messages) through promptHash.
SIGNED_PARAMS = ("model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "logprobs",
                 "top_logprobs", "n", "stream", "ignore_eos")
ZERO32 = bytes(32)


class AuthError(NodeError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def signed_params(body: dict) -> dict:
    return {k: body[k] for k in SIGNED_PARAMS if k in body}


def body_prompt(body: dict) -> Any:
    return body["messages"] if "messages" in body else body.get("prompt")


class Ledger(Protocol):
    """What the checks need from storage and chain (node.storage.Store + a chain reader)."""
    def use_nonce(self, requester: str, nonce: int, voucher: tuple[str, int, bytes] | None = None) -> bool: ...
    def unsettled_charges(self, requester: str) -> int: ...


@dataclass(frozen=True)
class Authorized:
    request: eip712.Request
    digest: bytes
    voucher_cap: int
    voucher_signature: bytes


def _int(auth: dict, key: str) -> int:
    v = auth.get(key)
    if isinstance(v, bool) or v is None:
        raise AuthError(400, "invalid_auth", f"openlora.{key} is missing or not an integer")
    try:
        n = int(v, 0) if isinstance(v, str) else int(v)
    except (TypeError, ValueError):
        raise AuthError(400, "invalid_auth", f"openlora.{key} = {v!r} is not an integer") from None
    if not 0 <= n < 2**256:
        raise AuthError(400, "invalid_auth", f"openlora.{key} = {v!r} is out of range for uint256")
    return n


def _bytes(auth: dict, key: str, length: int | None = None, where: str = "openlora") -> bytes:
    v = auth.get(key)
    try:
        b = bytes.fromhex(v[2:] if v.startswith("0x") else v)
    except (AttributeError, ValueError):
        raise AuthError(400, "invalid_auth", f"{where}.{key} must be 0x-prefixed hex") from None
    if length is not None and len(b) != length:
        raise AuthError(400, "invalid_auth", f"{where}.{key} must be {length} bytes, got {len(b)}")
    return b


def _addr(auth: dict, key: str) -> str:
    v = auth.get(key)
    if not isinstance(v, str) or not is_address(v):
        raise AuthError(400, "invalid_auth", f"openlora.{key} = {v!r} is not an address")
    return to_checksum_address(v)


def verify(auth: Any, body: dict, *, domain: eip712.Domain, node: str, adapter_cid: str | None,
           max_tokens: int, max_cost: int, ledger: Ledger, lane_of: Callable[[str], tuple[int, int]],
           now: float | None = None) -> Authorized:
    """All checks before compute. `max_cost` is the most this request can cost (prompt + max_tokens priced);
    `lane_of(requester)` is (balance left in the requester's lane to this node, cumulative debited) on chain."""
    if not isinstance(auth, dict):
        raise AuthError(401, "signature_required", "this node accepts only EIP-712 signed requests: send an "
                                                   "'openlora' object (see docs/node-service.md)")
    requester, signed_node = _addr(auth, "requester"), _addr(auth, "node")
    chain_id, contract = _int(auth, "chainId"), _addr(auth, "verifyingContract")
    req = eip712.Request(requester=requester, node=signed_node, adapter=_bytes(auth, "adapter", 32),
                         promptHash=_bytes(auth, "promptHash", 32), maxTokens=_int(auth, "maxTokens"),
                         maxPrice=_int(auth, "maxPrice"), nonce=_int(auth, "nonce"), deadline=_int(auth, "deadline"))
    signature = _bytes(auth, "signature")
    voucher = auth.get("voucher")
    if not isinstance(voucher, dict):
        raise AuthError(400, "invalid_auth", "openlora.voucher {cumulativeCap, signature} is missing")
    cap = _int(voucher, "cumulativeCap")
    vsig = _bytes(voucher, "signature", where="openlora.voucher")

    if chain_id != domain.chain_id or contract != to_checksum_address(domain.verifying_contract):
        raise AuthError(400, "wrong_chain", f"signed for chain {chain_id} / contract {contract}; this node settles "
                                            f"on chain {domain.chain_id} / {domain.verifying_contract}")
    if signed_node != to_checksum_address(node):
        raise AuthError(400, "wrong_node", f"the request is signed for node {signed_node}; this node is {node}")
    now = time.time() if now is None else now
    if req.deadline < now:
        raise AuthError(400, "expired", f"the request's deadline {req.deadline} has passed (now {int(now)})")
    want_adapter = eip712.adapter_id(adapter_cid) if adapter_cid else ZERO32
    if req.adapter != want_adapter:
        raise AuthError(400, "adapter_mismatch", "the signed adapter is not the model this body asks for")
    if req.promptHash != eip712.prompt_hash(body_prompt(body), signed_params(body)):
        raise AuthError(400, "prompt_mismatch", "the signed promptHash does not match this body's prompt and "
                                                "parameters")
    if not eip712.is_signed_by(req, domain, signature, requester):
        raise AuthError(401, "bad_signature", f"the signature does not recover the requester {requester}")
    if max_tokens > req.maxTokens:
        raise AuthError(400, "max_tokens_exceeded", f"max_tokens {max_tokens} exceeds the signed maxTokens "
                                                    f"{req.maxTokens}")
    if max_cost > req.maxPrice:
        raise AuthError(402, "price_exceeds_max", f"this request can cost up to {max_cost} wei; the signed maxPrice "
                                                  f"is {req.maxPrice}")
    v = eip712.Voucher(requester=requester, node=signed_node, cumulativeCap=cap)
    if not eip712.is_signed_by(v, domain, vsig, requester):
        raise AuthError(401, "bad_voucher_signature", "the voucher signature does not recover the requester")
    pending = ledger.unsettled_charges(requester)
    deposit, debited = lane_of(requester)
    if cap < debited + pending + max_cost:
        raise AuthError(402, "voucher_insufficient", f"the voucher caps charges at {cap} wei; {debited} are settled, "
                                                     f"{pending} pending and this request can cost {max_cost}")
    if deposit < pending + max_cost:
        raise AuthError(402, "insufficient_deposit", f"deposit to this node is {deposit} wei; {pending} are pending "
                                                     f"and this request can cost {max_cost}: deposit more")
    # the nonce claim and the voucher are written in one transaction: one commit per request
    if not ledger.use_nonce(requester, req.nonce, voucher=(signed_node, cap, vsig)):
        raise AuthError(409, "nonce_reused", f"nonce {req.nonce} of {requester} was already used")
    return Authorized(req, eip712.digest(req, domain), cap, vsig)
