"""dag-pb and UnixFS encoding: the bytes Kubo writes for file and directory nodes.

What it does: encode and decode PBNode/PBLink (dag-pb, links before data, as the canonical form requires) and the
UnixFS `Data` message (type, data, filesize, blocksizes), with only the fields Kubo's default `ipfs add` writes;
`decode_node` is strict and raises `DagError` naming the CID on anything malformed.
What it does not do: mode/mtime/HAMT-sharded directories (rejected when decoding), chunking or layout
(`node.ipfs.importer`), or network access.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openlora.content.cid import CID, decode_varint, encode_varint
from openlora.content.errors import DagError

# UnixFS Data.DataType
T_RAW, T_DIRECTORY, T_FILE, T_METADATA, T_SYMLINK, T_HAMT = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Link:
    cid: CID
    name: str
    tsize: int  # cumulative size of the linked DAG's blocks (Kubo's Tsize)


@dataclass(frozen=True)
class UnixFSData:
    type: int
    data: bytes = b""
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class PBNode:
    links: tuple[Link, ...] = field(default_factory=tuple)
    data: bytes | None = None


def _field(num: int, wire: int) -> bytes:
    return encode_varint((num << 3) | wire)


def _bytes_field(num: int, value: bytes) -> bytes:
    return _field(num, 2) + encode_varint(len(value)) + value


def encode_unixfs(d: UnixFSData) -> bytes:
    out = bytearray(_field(1, 0) + encode_varint(d.type))
    if d.data:
        out += _bytes_field(2, d.data)
    if d.filesize is not None:
        out += _field(3, 0) + encode_varint(d.filesize)
    for bs in d.blocksizes:  # proto2 repeated uint64, not packed (as go-unixfs and js ipfs-unixfs write it)
        out += _field(4, 0) + encode_varint(bs)
    return bytes(out)


def encode_node(node: PBNode) -> bytes:
    out = bytearray()
    for link in node.links:
        body = _bytes_field(1, link.cid.to_bytes()) + _bytes_field(2, link.name.encode("utf-8")) \
            + _field(3, 0) + encode_varint(link.tsize)
        out += _bytes_field(2, body)
    if node.data is not None:
        out += _bytes_field(1, node.data)
    return bytes(out)


def _iter_fields(buf: bytes | memoryview):
    pos = 0
    while pos < len(buf):
        key, pos = decode_varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = decode_varint(buf, pos)
            yield num, wire, val
        elif wire == 2:
            ln, pos = decode_varint(buf, pos)
            if pos + ln > len(buf):
                raise ValueError("length-delimited field runs past the end")
            yield num, wire, bytes(buf[pos:pos + ln])
            pos += ln
        else:
            raise ValueError(f"unsupported wire type {wire}")


def decode_unixfs(buf: bytes, cid: CID | None = None) -> UnixFSData:
    typ, data, filesize, blocksizes = None, b"", None, []
    try:
        for num, wire, val in _iter_fields(buf):
            if num == 1 and wire == 0:
                typ = val
            elif num == 2 and wire == 2:
                data = val
            elif num == 3 and wire == 0:
                filesize = val
            elif num == 4 and wire == 0:
                blocksizes.append(val)
            elif num == 4 and wire == 2:  # tolerate packed encoding
                p = 0
                while p < len(val):
                    v, p = decode_varint(val, p)
                    blocksizes.append(v)
            elif num in (5, 6, 7, 8):
                continue  # hashType/fanout/mode/mtime: not needed to read a file
            else:
                raise ValueError(f"unexpected UnixFS field {num}")
    except ValueError as e:
        raise DagError(cid, f"block {cid}: malformed UnixFS data: {e}") from None
    if typ is None:
        raise DagError(cid, f"block {cid}: UnixFS data has no type")
    return UnixFSData(typ, data, filesize, tuple(blocksizes))


def decode_node(buf: bytes | memoryview, cid: CID | None = None) -> PBNode:
    links: list[Link] = []
    data = None
    try:
        for num, wire, val in _iter_fields(buf):
            if num == 2 and wire == 2:
                lcid, name, tsize = None, "", 0
                for lnum, lwire, lval in _iter_fields(val):
                    if lnum == 1 and lwire == 2:
                        lcid = CID.from_bytes(lval)
                    elif lnum == 2 and lwire == 2:
                        name = lval.decode("utf-8")
                    elif lnum == 3 and lwire == 0:
                        tsize = lval
                    else:
                        raise ValueError(f"unexpected PBLink field {lnum}")
                if lcid is None:
                    raise ValueError("a link without a hash")
                links.append(Link(lcid, name, tsize))
            elif num == 1 and wire == 2:
                data = val
            else:
                raise ValueError(f"unexpected PBNode field {num}")
    except (ValueError, UnicodeDecodeError) as e:
        raise DagError(cid, f"block {cid}: malformed dag-pb node: {e}") from None
    return PBNode(tuple(links), data)


def file_node(links: list[Link], blocksizes: list[int]) -> bytes:
    """Encode an intermediate file node over `links` (children in order) whose file sizes are `blocksizes`."""
    data = UnixFSData(T_FILE, filesize=sum(blocksizes), blocksizes=tuple(blocksizes))
    return encode_node(PBNode(tuple(links), encode_unixfs(data)))


def directory_node(links: list[Link]) -> bytes:
    """Encode a UnixFS directory over `links`, sorted by name bytes as Kubo and js-unixfs sort them."""
    ordered = sorted(links, key=lambda ln: ln.name.encode("utf-8"))
    return encode_node(PBNode(tuple(ordered), encode_unixfs(UnixFSData(T_DIRECTORY))))
