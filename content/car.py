"""CARv1 files (the format of `ipfs dag export` and of trustless-gateway responses): write and read, streaming.

What it does: `write_car` streams the header (dag-cbor `{roots, version: 1}`) and every block of a DAG from a
store, in depth-first order; `read_car` parses a byte stream section by section without holding it whole;
`import_car` verifies every block against its CID before it is stored and returns the roots. A CARv2 file is
read through its inner CARv1 payload.
What it does not do: indexes (CARv2 index is ignored), or a general CBOR codec (only what CAR headers use).
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

from openlora.content.cid import CID, as_cid, decode_varint, encode_varint
from openlora.content.dag import GetBlock, walk
from openlora.content.errors import ContentError

_CARV2_PRAGMA = bytes.fromhex("0aa16776657273696f6e02")
MAX_SECTION = 8 << 20  # no legitimate UnixFS block is anywhere near this
MAX_HEADER_DEPTH = 8  # a CAR header is {roots: [tag 42 bytes], version}: 3 levels


class CarError(ContentError, ValueError):
    """A CAR stream is malformed or truncated."""


# ---- the few CBOR items a CAR header holds ------------------------------------------------------------------------

def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for extra, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | extra]) + struct.pack(fmt, n)
    raise ValueError("CBOR length too large")


def encode_header(roots: list[CID]) -> bytes:
    out = _cbor_head(5, 2) + _cbor_head(3, 5) + b"roots" + _cbor_head(4, len(roots))
    for r in roots:
        raw = b"\x00" + r.to_bytes()
        out += b"\xd8\x2a" + _cbor_head(2, len(raw)) + raw
    return out + _cbor_head(3, 7) + b"version" + b"\x01"


def _cbor_decode(buf: bytes, pos: int, depth: int = 0):
    if depth > MAX_HEADER_DEPTH:
        raise CarError(f"CAR header nests deeper than {MAX_HEADER_DEPTH} levels")
    ib = buf[pos]
    major, info = ib >> 5, ib & 31
    pos += 1
    if info < 24:
        n = info
    elif info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        n = int.from_bytes(buf[pos:pos + size], "big")
        pos += size
    else:
        raise CarError("indefinite-length CBOR is not allowed in a CAR header")
    if major == 0:
        return n, pos
    if major in (2, 3):
        raw = buf[pos:pos + n]
        return (raw if major == 2 else raw.decode("utf-8")), pos + n
    if major == 4:
        items = []
        for _ in range(n):
            item, pos = _cbor_decode(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        out = {}
        for _ in range(n):
            k, pos = _cbor_decode(buf, pos, depth + 1)
            v, pos = _cbor_decode(buf, pos, depth + 1)
            out[k] = v
        return out, pos
    if major == 6:
        val, pos = _cbor_decode(buf, pos, depth + 1)
        if n == 42:
            if not isinstance(val, bytes) or not val.startswith(b"\x00"):
                raise CarError("a CID in a CAR header must be tag 42 over 0x00-prefixed bytes")
            return CID.from_bytes(val[1:]), pos
        return val, pos
    if major == 7 and info in (20, 21, 22):
        return {20: False, 21: True, 22: None}[info], pos
    raise CarError(f"unsupported CBOR item 0x{ib:02x} in a CAR header")


# ---- writing --------------------------------------------------------------------------------------------------------

def write_car(root: CID | str, get: GetBlock, out: BinaryIO) -> int:
    """Write the DAG under `root` as a CARv1 stream to `out`. Returns the number of blocks written."""
    root = as_cid(root)
    header = encode_header([root])
    out.write(encode_varint(len(header)) + header)
    n = 0
    for cid, data in walk(root, get):
        cb = cid.to_bytes()
        out.write(encode_varint(len(cb) + len(data)))
        out.write(cb)
        out.write(data)
        n += 1
    return n


# ---- reading --------------------------------------------------------------------------------------------------------

def _read_exact(stream: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = stream.read(n - len(buf))
        if not part:
            raise CarError(f"CAR stream truncated: expected {n} bytes, got {len(buf)}")
        buf += part
    return bytes(buf)


def _read_varint(stream: BinaryIO) -> int | None:
    raw = bytearray()
    while True:
        b = stream.read(1)
        if not b:
            if raw:
                raise CarError("CAR stream truncated inside a section length")
            return None
        raw += b
        if not b[0] & 0x80:
            return decode_varint(bytes(raw))[0]
        if len(raw) > 9:
            raise CarError("CAR section length varint is too long")


def read_car(stream: BinaryIO) -> tuple[list[CID], Iterator[tuple[CID, bytes]]]:
    """Parse the header now; return the roots and a lazy iterator over (cid, bytes) sections (unverified)."""
    hlen = _read_varint(stream)
    if hlen is None or hlen > 1 << 20:
        raise CarError("not a CAR stream: missing or oversized header")
    head = _read_exact(stream, hlen)
    if encode_varint(hlen) + head == _CARV2_PRAGMA:
        fixed = _read_exact(stream, 40)  # characteristics(16) data_offset(8) data_size(8) index_offset(8)
        data_offset, data_size = struct.unpack("<QQ", fixed[16:32])
        _read_exact(stream, data_offset - len(_CARV2_PRAGMA) - 40)
        return read_car(_Limited(stream, data_size))
    try:
        header, _ = _cbor_decode(head, 0)
    except (IndexError, UnicodeDecodeError, TypeError) as e:  # TypeError: an array or map as a map key
        raise CarError(f"malformed CAR header: {e}") from None
    if not isinstance(header, dict) or header.get("version") != 1 or not isinstance(header.get("roots"), list):
        raise CarError(f"unsupported CAR header {header!r:.200}: expected a CARv1 header with roots")
    if not all(isinstance(r, CID) for r in header["roots"]):
        raise CarError("a CAR header's roots must be CIDs (tag 42)")

    def sections() -> Iterator[tuple[CID, bytes]]:
        while True:
            n = _read_varint(stream)
            if n is None:
                return
            if n > MAX_SECTION:
                raise CarError(f"CAR section of {n} bytes is larger than any block this node accepts")
            sec = _read_exact(stream, n)
            cid, pos = CID.read(sec, 0)
            yield cid, sec[pos:]

    return header["roots"], sections()


class _Limited:
    def __init__(self, stream: BinaryIO, limit: int):
        self.stream, self.left = stream, limit

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.stream.read(n) if n else b""
        self.left -= len(data)
        return data


def import_car(stream: BinaryIO, store, max_bytes: int | None = None) -> tuple[list[CID], int]:
    """Verify and store the blocks of a CAR stream, in whatever order they come. Returns (roots, blocks stored).

    A block whose bytes do not hash to its CID raises BlockVerificationError and is not stored; a stream longer
    than `max_bytes` of block data is refused (a source cannot fill the disk). Completeness is the caller's check
    (`dag.missing_blocks`).
    """
    roots, sections = read_car(stream)
    n = total = 0
    for cid, data in sections:
        total += len(data)
        if max_bytes is not None and total > max_bytes:
            raise CarError(f"CAR stream carries more than {max_bytes} bytes of blocks; refused")
        store.put(cid, data)  # verifies before writing
        n += 1
    return roots, n
