"""EIP-712 typed data of OpenLoRA: signed inference requests and cumulative payment vouchers.

What it does: defines the domain (name "OpenLoRA", version "1", chainId, verifyingContract = Settlement), the
`Request` and `Voucher` types exactly as contracts/src/Settlement.sol hashes them, their digests, and signing /
recovery with eth-account. Also the two conventions the types depend on: an adapter's id is keccak256 of its CID
string (UTF-8), and a prompt hash is keccak256 of the canonical JSON of {"params", "prompt"}.
What it does not do: check nonces, deadlines or balances (the node and the contract do), or send anything.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from typing import Any, NewType

from eth_account import Account
from eth_keys import keys
from eth_keys.exceptions import BadSignature
from eth_utils import keccak, to_checksum_address

from openlora.attribution.errors import AttributionError

Address = NewType("Address", str)  # checksummed 0x address
Bytes32 = NewType("Bytes32", bytes)

DOMAIN_NAME = "OpenLoRA"
DOMAIN_VERSION = "1"
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # secp256k1 group order
_HALF_N = _N // 2
_DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"


class Eip712Error(AttributionError, ValueError):
    """A typed-data value is malformed or a signature does not recover."""


@dataclass(frozen=True)
class Domain:
    chain_id: int
    verifying_contract: Address

    def separator(self) -> bytes:
        return _separator(self.chain_id, self.verifying_contract)

    def as_dict(self) -> dict[str, Any]:
        return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": self.chain_id,
                "verifyingContract": to_checksum_address(self.verifying_contract)}


@dataclass(frozen=True)
class Request:
    """An inference request: the requester signs it; the node checks it before any compute."""
    requester: Address
    node: Address
    adapter: Bytes32  # adapter_id(cid)
    promptHash: Bytes32  # prompt_hash(prompt, params)
    maxTokens: int
    maxPrice: int  # wei of the payment token
    nonce: int
    deadline: int  # unix seconds

    TYPE = ("Request(address requester,address node,bytes32 adapter,bytes32 promptHash,uint256 maxTokens,"
            "uint256 maxPrice,uint256 nonce,uint256 deadline)")


@dataclass(frozen=True)
class Voucher:
    """A cumulative cap: the node may debit the requester up to `cumulativeCap` in total, over all batches."""
    requester: Address
    node: Address
    cumulativeCap: int

    TYPE = "Voucher(address requester,address node,uint256 cumulativeCap)"


_SOL_TYPES = {"requester": "address", "node": "address", "adapter": "bytes32", "promptHash": "bytes32"}


@functools.lru_cache(maxsize=64)
def _separator(chain_id: int, verifying_contract: str) -> bytes:
    """A domain's separator (a node checks every request against one domain: computed once)."""
    return keccak(_type_hash(_DOMAIN_TYPE) + keccak(text=DOMAIN_NAME) + keccak(text=DOMAIN_VERSION)
                  + _word(chain_id) + _addr_word(verifying_contract))


@functools.lru_cache(maxsize=None)
def _type_hash(type_string: str) -> bytes:
    return keccak(text=type_string)


def _word(value: int) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**256:
        raise Eip712Error(f"{value!r} is not a uint256")
    return value.to_bytes(32, "big")


def _addr_word(value: str) -> bytes:
    try:
        return _addr_word_cached(value)
    except (ValueError, TypeError):
        raise Eip712Error(f"{value!r} is not an address") from None


@functools.lru_cache(maxsize=4096)
def _addr_word_cached(value: str) -> bytes:
    """Validated (checksum-checked for mixed case) and left-padded to a word; requesters and nodes repeat, and the
    checksum (a keccak) is the costly part. Errors are not cached (lru_cache does not keep exceptions)."""
    return bytes(12) + bytes.fromhex(to_checksum_address(value)[2:])


def _b32(value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise Eip712Error(f"{value!r} is not 32 bytes")
    return bytes(value)


def struct_hash(msg: Request | Voucher) -> bytes:
    parts = [_type_hash(msg.TYPE)]
    for f in fields(msg):
        v = getattr(msg, f.name)
        kind = _SOL_TYPES.get(f.name, "uint256")
        parts.append(_addr_word(v) if kind == "address" else _b32(v) if kind == "bytes32" else _word(v))
    return keccak(b"".join(parts))


def digest(msg: Request | Voucher, domain: Domain) -> bytes:
    """The EIP-712 digest that is signed: keccak256(0x1901 || domainSeparator || structHash)."""
    return keccak(b"\x19\x01" + domain.separator() + struct_hash(msg))


def typed_data(msg: Request | Voucher, domain: Domain) -> dict[str, Any]:
    """The full eth_signTypedData_v4 message (what a wallet shows the user)."""
    primary = type(msg).__name__
    members = [{"name": f.name, "type": _SOL_TYPES.get(f.name, "uint256")} for f in fields(msg)]
    values = {f.name: (to_checksum_address(getattr(msg, f.name)) if _SOL_TYPES.get(f.name) == "address"
                       else getattr(msg, f.name)) for f in fields(msg)}
    return {
        "types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                   {"name": "chainId", "type": "uint256"},
                                   {"name": "verifyingContract", "type": "address"}],
                  primary: members},
        "primaryType": primary, "domain": domain.as_dict(), "message": values,
    }


def sign(msg: Request | Voucher, domain: Domain, private_key: bytes | str) -> bytes:
    """A 65-byte (r || s || v) signature over the message's digest."""
    return bytes(Account.unsafe_sign_hash(digest(msg, domain), private_key).signature)


def recover(msg: Request | Voucher, domain: Domain, signature: bytes) -> Address:
    """The address that signed `msg` (65-byte or 64-byte compact signature)."""
    if len(signature) == 64:
        signature = expand_compact(signature)
    if len(signature) != 65:
        raise Eip712Error(f"a signature is 65 bytes (or 64 compact), got {len(signature)}")
    r, s, v = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1) or not 0 < s <= _HALF_N or not 0 < r < _N:
        # the contract (OpenZeppelin ECDSA) rejects high-s and malformed signatures: so do we
        raise Eip712Error("malformed signature (v not 27/28, or r/s out of range, or a high-s malleable form)")
    try:
        pub = keys.Signature(vrs=(v, r, s)).recover_public_key_from_msg_hash(digest(msg, domain))
    except (BadSignature, ValueError) as e:
        raise Eip712Error(f"signature does not recover: {e}") from None
    return Address(pub.to_checksum_address())


def is_signed_by(msg: Request | Voucher, domain: Domain, signature: bytes, signer: str) -> bool:
    try:
        return recover(msg, domain, signature) == to_checksum_address(signer)
    except Eip712Error:
        return False


def to_compact(signature: bytes) -> tuple[bytes, bytes]:
    """EIP-2098: (r, vs) where vs = s with the top bit set when v == 28. What Settlement's Debit carries."""
    if len(signature) != 65:
        raise Eip712Error(f"expected a 65-byte signature, got {len(signature)}")
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    if v < 27:
        v += 27
    vs = s | ((v - 27) << 255)
    return r, vs.to_bytes(32, "big")


def expand_compact(compact: bytes) -> bytes:
    r, vs = compact[:32], int.from_bytes(compact[32:64], "big")
    return r + (vs & ((1 << 255) - 1)).to_bytes(32, "big") + bytes([27 + (vs >> 255)])


def adapter_id(cid: str) -> Bytes32:
    """The on-chain id of an adapter CID: keccak256 of the CID string (AdapterRegistry.adapterIdOf)."""
    if not cid:
        raise Eip712Error("an adapter CID cannot be empty")
    return Bytes32(keccak(text=cid))


def prompt_hash(prompt: Any, params: dict[str, Any] | None = None) -> Bytes32:
    """keccak256 of the canonical JSON (sorted keys, no spaces, UTF-8) of {"params": params, "prompt": prompt}."""
    canonical = json.dumps({"params": params or {}, "prompt": prompt}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, allow_nan=False)
    return Bytes32(keccak(canonical.encode("utf-8")))
