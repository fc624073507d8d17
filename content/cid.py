"""CIDs as Kubo writes them: CIDv1, sha2-256 multihash, raw (0x55) or dag-pb (0x70) codec, base32 text.

What it does: encode and decode CIDs (binary and multibase base32 text; CIDv0 `Qm...` text is read and converted to
v1), compute the CID of a block, and verify that a block's bytes match the CID that names it.
What it does not do: any other hash function or codec (a CID using one is rejected with a clear error), nor any
UnixFS or DAG logic (see `node.ipfs.unixfs`).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import NewType

from openlora.content.errors import BlockVerificationError, CidError

CidStr = NewType("CidStr", str)

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
_CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb"}
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def encode_varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Return (value, new position). Raises ValueError on a truncated or over-long varint."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 9 bytes")


def _b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        idx = _B58_ALPHABET.find(ch)
        if idx < 0:
            raise CidError(f"{text!r} is not a CID: invalid base58 character {ch!r}")
        n = n * 58 + idx
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x00" * (len(text) - len(text.lstrip("1"))) + raw


@dataclass(frozen=True, order=True)
class CID:
    """A CIDv1 with a sha2-256 digest. `str(cid)` is the base32 form Kubo prints (bafy.../bafk...)."""
    codec: int
    digest: bytes  # [32] sha2-256

    def __post_init__(self) -> None:
        if self.codec not in _CODEC_NAMES:
            raise CidError(f"unsupported CID codec 0x{self.codec:x}: only raw (0x55) and dag-pb (0x70) are used here")
        if len(self.digest) != 32:
            raise CidError(f"sha2-256 digest must be 32 bytes, got {len(self.digest)}")

    @classmethod
    def of(cls, codec: int, data: bytes | memoryview) -> "CID":
        return cls(codec, hashlib.sha256(data).digest())

    @property
    def multihash(self) -> bytes:
        return bytes([SHA2_256, 32]) + self.digest

    @property
    def codec_name(self) -> str:
        return _CODEC_NAMES[self.codec]

    def to_bytes(self) -> bytes:
        return b"\x01" + encode_varint(self.codec) + self.multihash

    def __str__(self) -> str:
        return "b" + base64.b32encode(self.to_bytes()).decode("ascii").lower().rstrip("=")

    def __repr__(self) -> str:
        return f"CID({self})"

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> "CID":
        cid, end = cls.read(raw, 0)
        if end != len(raw):
            raise CidError(f"trailing bytes after a binary CID ({len(raw) - end} bytes)")
        return cid

    @classmethod
    def read(cls, raw: bytes | memoryview, pos: int) -> tuple["CID", int]:
        """Read one binary CID starting at `pos`; return it and the position after it."""
        try:
            if bytes(raw[pos:pos + 2]) == bytes([SHA2_256, 32]):  # CIDv0: a bare multihash, implicitly dag-pb
                return cls(DAG_PB, bytes(raw[pos + 2:pos + 34])), pos + 34
            version, p = decode_varint(raw, pos)
            if version != 1:
                raise CidError(f"unsupported CID version {version}")
            codec, p = decode_varint(raw, p)
            hcode, p = decode_varint(raw, p)
            hlen, p = decode_varint(raw, p)
        except ValueError as e:
            raise CidError(f"malformed binary CID: {e}") from None
        if hcode != SHA2_256 or hlen != 32:
            raise CidError(f"unsupported multihash 0x{hcode:x}/{hlen}: only sha2-256 is accepted")
        return cls(codec, bytes(raw[p:p + 32])), p + 32

    @classmethod
    def parse(cls, text: str) -> "CID":
        text = text.strip()
        if text.startswith("/ipfs/"):
            text = text[len("/ipfs/"):].split("/", 1)[0]
        if text.startswith("Qm") and len(text) == 46:
            return cls.from_bytes(_b58decode(text))
        if not text or text[0] not in "bB":
            raise CidError(f"{text!r} is not a CID: expected a base32 CIDv1 (bafy.../bafk...) or a CIDv0 (Qm...)")
        body = text[1:].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except (ValueError, base64.binascii.Error):
            raise CidError(f"{text!r} is not a CID: invalid base32") from None
        return cls.from_bytes(raw)


def verify_block(cid: CID, data: bytes | memoryview) -> None:
    """Raise BlockVerificationError unless sha2-256(data) is the digest in `cid`."""
    if hashlib.sha256(data).digest() != cid.digest:
        raise BlockVerificationError(cid, f"block {cid} failed verification: its bytes do not hash to the CID "
                                          f"({len(data)} bytes received)")


def as_cid(value: "CID | str") -> CID:
    return value if isinstance(value, CID) else CID.parse(value)
