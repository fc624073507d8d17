"""Blockstore verification, DAG walking/assembly with every failure named by CID, and CAR round trips against the
reference importer's CAR (written by @ipld/car)."""

from __future__ import annotations

import io
import os

import pytest

from openlora.content.blockstore import Blockstore
from openlora.content.car import CarError, import_car, read_car, write_car
from openlora.content.cid import CID, DAG_PB, RAW
from openlora.content.dag import export, fetch_dag, missing_blocks, walk
from openlora.node.ipfs.errors import BlockNotFoundError, BlockVerificationError, DagError
from openlora.content.importer import CHUNK_SIZE, add_bytes, add_path
from openlora.content.unixfs import Link, file_node


@pytest.fixture
def store(tmp_path):
    return Blockstore(tmp_path / "store")


def test_put_refuses_a_block_that_does_not_match_its_cid(store):
    cid = CID.of(RAW, b"good")
    with pytest.raises(BlockVerificationError, match=str(cid)):
        store.put(cid, b"evil")
    assert not store.has(cid)
    store.put(cid, b"good")
    assert store.get(cid) == b"good"


def test_corruption_on_disk_is_detected_on_read(store):
    cid = CID.of(RAW, b"payload")
    store.put(cid, b"payload")
    store._path(cid).write_bytes(b"paylaod")
    with pytest.raises(BlockVerificationError, match=f"{cid}.*corrupt on disk"):
        store.get(cid)


def test_export_file_round_trip_and_missing_block_is_named(store, tmp_path):
    data = os.urandom(5 * CHUNK_SIZE + 3)
    root = add_bytes(data, store.put_trusted).cid
    out = export(root, tmp_path / "out.bin", store.get)
    assert out.read_bytes() == data
    leaves = [c for c, _ in walk(root, store.get) if c.codec == RAW]
    store.delete(leaves[2])
    assert missing_blocks(root, store) == [leaves[2]]
    with pytest.raises(BlockNotFoundError, match=str(leaves[2])):
        export(root, tmp_path / "again.bin", store.get)
    assert not (tmp_path / "again.bin").exists()  # never a short file
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_sizes_that_disagree_with_the_children_are_refused(store, tmp_path):
    a, b = b"a" * 10, b"b" * 10
    ca, cb = CID.of(RAW, a), CID.of(RAW, b)
    store.put(ca, a)
    store.put(cb, b)
    lying = file_node([Link(ca, "", 10), Link(cb, "", 10)], [10, 7])  # claims 17 bytes, holds 20
    root = CID.of(DAG_PB, lying)
    store.put(root, lying)
    with pytest.raises(DagError, match=str(cb)):
        export(root, tmp_path / "x", store.get)
    assert not (tmp_path / "x").exists()


def test_directory_export_round_trip(store, tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(os.urandom(CHUNK_SIZE * 2))
    (src / "e").write_bytes(b"")
    (src / "empty").mkdir()
    root = add_path(src, store.put_trusted).cid
    out = export(root, tmp_path / "out", store.get)
    assert (out / "a" / "b" / "f").read_bytes() == (src / "a" / "b" / "f").read_bytes()
    assert (out / "e").read_bytes() == b"" and (out / "empty").is_dir()


class DictGetter:
    def __init__(self, blocks, corrupt=()):
        self.blocks, self.corrupt, self.requests = blocks, set(corrupt), 0

    def get_many(self, cids):
        self.requests += 1
        for c in cids:
            if c in self.blocks:
                yield c, (b"X" + self.blocks[c][1:]) if c in self.corrupt else self.blocks[c]


def test_fetch_dag_verifies_and_stores_nothing_corrupt(tmp_path):
    blocks = {}
    root = add_bytes(os.urandom(3 * CHUNK_SIZE), lambda c, d: blocks.__setitem__(c, d)).cid
    leaf = next(c for c in blocks if c.codec == RAW)
    bad = Blockstore(tmp_path / "bad")
    with pytest.raises(BlockVerificationError, match=str(leaf)):
        fetch_dag(root, DictGetter(blocks, corrupt={leaf}), bad)
    assert not bad.has(leaf)
    partial = dict(blocks)
    del partial[leaf]
    with pytest.raises(BlockNotFoundError, match=str(leaf)):
        fetch_dag(root, DictGetter(partial), Blockstore(tmp_path / "partial"))
    good = Blockstore(tmp_path / "good")
    assert fetch_dag(root, DictGetter(blocks), good) == len(blocks)
    assert missing_blocks(root, good) == []


def test_car_round_trip_with_reference_car(tmp_path, reference_cids, store):
    src = tmp_path / "file.bin"
    src.write_bytes(os.urandom(4 * CHUNK_SIZE + 11))
    ref_car = tmp_path / "ref.car"
    [ref_root] = reference_cids([src], car=ref_car)
    with open(ref_car, "rb") as f:
        roots, n = import_car(f, store)
    assert [str(r) for r in roots] == [ref_root] and n == 6
    assert export(roots[0], tmp_path / "out.bin", store.get).read_bytes() == src.read_bytes()
    buf = io.BytesIO()
    assert write_car(roots[0], store.get, buf) == 6
    buf.seek(0)
    roots2, blocks = read_car(buf)
    ours = dict(blocks)
    with open(ref_car, "rb") as f:
        ref_roots, ref_blocks = read_car(f)
        assert roots2 == ref_roots and ours == dict(ref_blocks)


def test_corrupt_or_truncated_car(tmp_path, store):
    data = os.urandom(2 * CHUNK_SIZE)
    src = Blockstore(tmp_path / "src")
    root = add_bytes(data, src.put_trusted).cid
    buf = io.BytesIO()
    write_car(root, src.get, buf)
    raw = bytearray(buf.getvalue())
    raw[-5] ^= 0xFF
    with pytest.raises(BlockVerificationError):
        import_car(io.BytesIO(bytes(raw)), store)
    with pytest.raises(CarError, match="truncated"):
        import_car(io.BytesIO(buf.getvalue()[:-100]), Blockstore(tmp_path / "t"))
