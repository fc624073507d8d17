"""Proof-of-Attribution receipts: what a node writes for every served request, its canonical hash and signature.

What it does: the frozen `Receipt` (request digest, requester, node, adapter CID, token counts, price, attribution
vector, time), `receipt_hash(r)` — the canonical 32-byte hash that is the Merkle leaf value of a settled batch —,
`sign_receipt` / `verify_receipt` (the node signs the receipt hash as an EIP-191 personal message, so a wallet or
any eth library can check it and it can never be mistaken for a transaction), and the JSON form that the node
publishes under a batch's `receiptsUri` (`receipt_to_json` / `receipt_from_json`).
What it does not do: price a request or choose the attribution (attribution.pricing), store receipts (the node's
storage) or settle them (the node's settlement loop).

Canonical hash (all words 32 bytes, big-endian, as Solidity's abi.encode would lay them out):
    keccak256(RECEIPT_TYPEHASH || keccak(request_id) || request_digest || requester || node
              || keccak(adapter_cid or "") || prompt_tokens || completion_tokens || price
              || keccak(recipient_1 || weight_1 || ... || recipient_n || weight_n) || created_at)
A receipt that carries attribution evidence (attribution.evidence: spans, version and index CIDs, the completion's
token ids) hashes under RECEIPT_V2_TYPEHASH with `evidence_hash` between the attribution hash and created_at, so the
node's signature covers the evidence; a receipt without evidence (every receipt written before span attribution,
and base-model requests) keeps the first form and its old hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_account.messages import encode_defunct
from eth_utils import keccak, to_checksum_address

from openlora.attribution.errors import AttributionError

RECEIPT_TYPE = ("Receipt(string requestId,bytes32 requestDigest,address requester,address node,string adapterCid,"
                "uint256 promptTokens,uint256 completionTokens,uint256 price,bytes32 attributionHash,"
                "uint256 createdAt)")
RECEIPT_TYPEHASH = keccak(text=RECEIPT_TYPE)
RECEIPT_V2_TYPE = ("Receipt(string requestId,bytes32 requestDigest,address requester,address node,string adapterCid,"
                   "uint256 promptTokens,uint256 completionTokens,uint256 price,bytes32 attributionHash,"
                   "bytes32 evidenceHash,uint256 createdAt)")
RECEIPT_V2_TYPEHASH = keccak(text=RECEIPT_V2_TYPE)


@lru_cache(maxsize=65536)
def checksum(address: str) -> str:
    """to_checksum_address, memoised: a batch checksums the same few recipients thousands of times."""
    return to_checksum_address(address)


class ReceiptError(AttributionError, ValueError):
    """A receipt field is malformed (not an address, not 32 bytes, a negative count or weight)."""


@dataclass(frozen=True)
class Receipt:
    request_id: str  # node-assigned unique id, e.g. "req-<uuid>"
    request_digest: bytes  # 32-byte EIP-712 digest of the requester's signed Request
    requester: str  # checksummed
    node: str  # checksummed node address (signs receipts)
    adapter_cid: str | None  # None = the base model
    prompt_tokens: int
    completion_tokens: int
    price: int  # wei charged (<= the signed maxPrice)
    attribution: tuple[tuple[str, int], ...]  # (recipient, weight): the price is split by these weights
    created_at: int  # unix seconds
    node_signature: bytes = b""  # 65 bytes: the node's signature over receipt_hash (EIP-191)
    evidence: Any = None  # attribution.evidence.Evidence: why the vector is what it is (None: static, old form)


def _uint(name: str, value: int) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**256:
        raise ReceiptError(f"receipt {name} = {value!r} is not a uint256")
    return value.to_bytes(32, "big")


def _addr(name: str, value: str) -> bytes:
    try:
        return bytes(12) + bytes.fromhex(checksum(value)[2:])
    except (ValueError, TypeError):
        raise ReceiptError(f"receipt {name} = {value!r} is not an address") from None


def attribution_hash(attribution: tuple[tuple[str, int], ...]) -> bytes:
    """keccak256 over (recipient word, weight word) pairs, in the receipt's order."""
    parts = []
    for who, w in attribution:
        parts.append(_addr("attribution recipient", who) + _uint("attribution weight", w))
    return keccak(b"".join(parts))


def receipt_hash(r: Receipt) -> bytes:
    """The canonical 32-byte hash of a receipt (excludes node_signature): the Merkle leaf value of its batch."""
    if not isinstance(r.request_digest, (bytes, bytearray)) or len(r.request_digest) != 32:
        raise ReceiptError(f"receipt request_digest must be 32 bytes, got {r.request_digest!r}")
    head = [keccak(text=r.request_id), bytes(r.request_digest), _addr("requester", r.requester),
            _addr("node", r.node), keccak(text=r.adapter_cid or ""), _uint("prompt_tokens", r.prompt_tokens),
            _uint("completion_tokens", r.completion_tokens), _uint("price", r.price), attribution_hash(r.attribution)]
    if r.evidence is None:
        return keccak(b"".join([RECEIPT_TYPEHASH, *head, _uint("created_at", r.created_at)]))
    from openlora.attribution.evidence import evidence_hash
    return keccak(b"".join([RECEIPT_V2_TYPEHASH, *head, evidence_hash(r.evidence), _uint("created_at", r.created_at)]))


def sign_receipt(r: Receipt, private_key: Any) -> Receipt:
    """The receipt with `node_signature` set. The key (or a LocalAccount, which saves deriving the address from the
    key for every receipt) must be the receipt's node (checked)."""
    acct = private_key if isinstance(private_key, LocalAccount) else \
        Account.from_key(private_key.key if hasattr(private_key, "key") else private_key)
    if acct.address != checksum(r.node):
        raise ReceiptError(f"receipt node is {r.node} but the signing key is {acct.address}")
    sig = acct.sign_message(encode_defunct(primitive=receipt_hash(r)))
    return replace(r, node_signature=bytes(sig.signature))


def recover_signer(r: Receipt) -> str:
    if len(r.node_signature) != 65:
        raise ReceiptError(f"receipt {r.request_id} has no 65-byte node signature")
    return Account.recover_message(encode_defunct(primitive=receipt_hash(r)), signature=r.node_signature)


def verify_receipt(r: Receipt) -> bool:
    """True when node_signature recovers r.node."""
    try:
        return recover_signer(r) == checksum(r.node)
    except Exception:  # noqa: BLE001 - any malformed signature is simply "not verified"
        return False


def receipt_to_json(r: Receipt) -> dict[str, Any]:
    """The published form: bytes as 0x-hex, big integers as decimal strings, plus the receipt hash (and, when the
    receipt has it, its evidence with the completion's token ids)."""
    out = {
        "request_id": r.request_id, "request_digest": "0x" + bytes(r.request_digest).hex(),
        "requester": checksum(r.requester), "node": checksum(r.node),
        "adapter_cid": r.adapter_cid, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
        "price": str(r.price), "attribution": [[checksum(a), str(w)] for a, w in r.attribution],
        "created_at": r.created_at, "node_signature": "0x" + bytes(r.node_signature).hex(),
        "receipt_hash": "0x" + receipt_hash(r).hex(),
    }
    if r.evidence is not None:
        out["evidence"] = r.evidence.to_json()
    return out


MAX_REQUEST_ID = 100          # the receipts table's column
MAX_ATTRIBUTION = 4096        # recipients in one vector


def _string(d: dict, key: str, limit: int) -> str:
    v = d[key]
    if not isinstance(v, str) or len(v) > limit:
        raise TypeError(f"{key} must be a string of at most {limit} characters")
    return v


def _count(d: dict, key: str) -> int:
    v = d[key]
    if type(v) is not int or not 0 <= v < 2**63:
        raise TypeError(f"{key} must be a non-negative integer")
    return v


def _bigint(v: Any, key: str) -> int:
    if not isinstance(v, str) or not v.isdigit() or len(v) > 78:
        raise TypeError(f"{key} must be a decimal string of a uint256")
    return int(v)


def receipt_from_json(d: Any) -> Receipt:
    """A receipt from its published JSON form (read from a peer or a file): every field typed and bounded,
    big integers as decimal strings; the evidence (when present) parsed strictly (attribution.evidence). Raises
    ReceiptError saying what is wrong. Does not check the signature (verify_receipt does)."""
    from openlora.attribution.evidence import Evidence, EvidenceError
    if not isinstance(d, dict):
        raise ReceiptError("not a receipt: a receipt must be a JSON object")
    try:
        attribution = d["attribution"]
        if not isinstance(attribution, list) or len(attribution) > MAX_ATTRIBUTION or \
                not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in attribution):
            raise TypeError(f"attribution must be a list of at most {MAX_ATTRIBUTION} [address, weight] pairs")
        cid = d.get("adapter_cid")
        if cid is not None and (not isinstance(cid, str) or len(cid) > 200):
            raise TypeError("adapter_cid must be null or a string of at most 200 characters")
        for key in ("request_digest", "node_signature"):
            if key in d and not (isinstance(d[key], str) and len(d[key]) <= 200):
                raise TypeError(f"{key} must be a 0x-hex string")
        evidence = None
        if d.get("evidence") is not None:
            evidence = Evidence.from_json(d["evidence"])
        return Receipt(
            request_id=_string(d, "request_id", MAX_REQUEST_ID),
            request_digest=bytes.fromhex(d["request_digest"].removeprefix("0x")),
            requester=checksum(_string(d, "requester", 42)), node=checksum(_string(d, "node", 42)),
            adapter_cid=cid, prompt_tokens=_count(d, "prompt_tokens"),
            completion_tokens=_count(d, "completion_tokens"), price=_bigint(d["price"], "price"),
            attribution=tuple((checksum(a), _bigint(w, "attribution weight")) for a, w in attribution),
            created_at=_count(d, "created_at"),
            node_signature=bytes.fromhex(d.get("node_signature", "0x").removeprefix("0x")), evidence=evidence)
    except EvidenceError as e:
        raise ReceiptError(f"not a receipt: {e}") from None
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise ReceiptError(f"not a receipt: {type(e).__name__}: {e}") from None


def dumps(receipts: list[Receipt], **header: Any) -> str:
    """A published batch file: {"version": 1, ...header, "receipts": [...]}."""
    return json.dumps({"version": 1, **header, "receipts": [receipt_to_json(r) for r in receipts]}, indent=1)
