"""Signed inference requests: what a dApp sends with its body, and the node's checks before any compute.

What it does: parses the `openlora` authorisation object (from the body, or the X-OpenLoRA-Auth header as JSON),
and checks, in this order, each failure an `AuthError` with an HTTP status, a machine-readable code and a
sentence. `check_signed` (before the prompt is tokenized): fields well formed; chain id and verifying contract are
this node's domain; the request names this node; the deadline is in the future; the adapter and the prompt hash
match the body; the EIP-712 signature recovers the requester; the signed max tokens cover the request; the
cumulative voucher is signed by the requester. `admit` (once the prompt's length is known): the signed max price
covers the request's maximum cost; then, atomically with the nonce claim, that cost is reserved against the
requester if the voucher (less what is debited) and the deposit (less announced withdrawals) cover it together
with everything unsettled or reserved (a refused request does not burn its nonce).
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
SIGNED_PARAMS = ("model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                 "logprobs", "top_logprobs", "n", "stream", "ignore_eos")
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
    """What admission needs from storage (node.storage.Store)."""
    def reserve(self, requester: str, nonce: int, request_id: str, amount: int, *, limit: int,
                voucher: tuple[str, int, bytes] | None = None) -> tuple[str, int]: ...


@dataclass(frozen=True)
class Signed:
    """A request whose fields, domain, node, deadline, prompt hash and signatures all checked out."""
    request: eip712.Request
    digest: bytes
    voucher_node: str
    voucher_cap: int
    voucher_signature: bytes


@dataclass(frozen=True)
class Authorized:
    request: eip712.Request
    digest: bytes
    voucher_cap: int
    voucher_signature: bytes
    reserved: int = 0            # wei held against the requester (the request's maximum cost) until its receipt


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


def check_signed(auth: Any, body: dict, *, domain: eip712.Domain, node: str, adapter_cid: str | None,
                 max_tokens: int, now: float | None = None) -> Signed:
    """The checks that need neither the tokenizer, the database nor the chain: run first, so an unsigned or
    forged request costs a signature recovery at most."""
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
    try:
        body_hash = eip712.prompt_hash(body_prompt(body), signed_params(body))
    except (TypeError, ValueError) as e:  # e.g. NaN or Infinity in a signed field: no canonical form
        raise AuthError(400, "invalid_auth", f"the body's signed fields cannot be hashed: {e}") from None
    if req.promptHash != body_hash:
        raise AuthError(400, "prompt_mismatch", "the signed promptHash does not match this body's prompt and "
                                                "parameters")
    if not eip712.is_signed_by(req, domain, signature, requester):
        raise AuthError(401, "bad_signature", f"the signature does not recover the requester {requester}")
    if max_tokens > req.maxTokens:
        raise AuthError(400, "max_tokens_exceeded", f"max_tokens {max_tokens} exceeds the signed maxTokens "
                                                    f"{req.maxTokens}")
    v = eip712.Voucher(requester=requester, node=signed_node, cumulativeCap=cap)
    if not eip712.is_signed_by(v, domain, vsig, requester):
        raise AuthError(401, "bad_voucher_signature", "the voucher signature does not recover the requester")
    return Signed(req, eip712.digest(req, domain), signed_node, cap, vsig)


def admit(signed: Signed, *, max_cost: int, request_id: str, ledger: Ledger,
          lane_of: Callable[[str], tuple[int, int]]) -> Authorized:
    """Price and money checks, then the reservation: `max_cost` (the most this request can cost: prompt +
    max_tokens priced) must fit the signed maxPrice; then, atomically with the nonce, it is held against the
    requester provided that everything unsettled (receipts and other reservations) plus it stays within the
    voucher's cap (less what is already debited on chain) and within the deposit (less announced withdrawals).
    `lane_of(requester)` is (spendable deposit, cumulative debited) on chain."""
    req = signed.request
    requester = req.requester
    if max_cost > req.maxPrice:
        raise AuthError(402, "price_exceeds_max", f"this request can cost up to {max_cost} wei; the signed maxPrice "
                                                  f"is {req.maxPrice}")
    deposit, debited = lane_of(requester)
    voucher_room = max(0, signed.voucher_cap - debited)
    status, total = ledger.reserve(requester, req.nonce, request_id, max_cost, limit=min(voucher_room, deposit),
                                   voucher=(signed.voucher_node, signed.voucher_cap, signed.voucher_signature))
    if status == "nonce_reused":
        raise AuthError(409, "nonce_reused", f"nonce {req.nonce} of {requester} was already used")
    if status != "ok":
        if total + max_cost > voucher_room:
            raise AuthError(402, "voucher_insufficient", f"the voucher caps charges at {signed.voucher_cap} wei; "
                                                         f"{debited} are settled, {total} pending or reserved and "
                                                         f"this request can cost {max_cost}")
        raise AuthError(402, "insufficient_deposit", f"the spendable deposit to this node is {deposit} wei; {total} "
                                                     f"are pending or reserved and this request can cost {max_cost}: "
                                                     "deposit more")
    return Authorized(req, signed.digest, signed.voucher_cap, signed.voucher_signature, reserved=max_cost)


def verify(auth: Any, body: dict, *, domain: eip712.Domain, node: str, adapter_cid: str | None,
           max_tokens: int, max_cost: int, ledger: Ledger, lane_of: Callable[[str], tuple[int, int]],
           request_id: str, now: float | None = None) -> Authorized:
    """All checks before compute in one call (what node/pipeline.py runs in two steps around tokenizing)."""
    signed = check_signed(auth, body, domain=domain, node=node, adapter_cid=adapter_cid, max_tokens=max_tokens,
                          now=now)
    return admit(signed, max_cost=max_cost, request_id=request_id, ledger=ledger, lane_of=lane_of)
