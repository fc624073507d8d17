"""CIDs against the reference importer (npm ipfs-unixfs-importer with Kubo's --cid-version=1 --raw-leaves options)
and against fixed vectors recorded from it (tests/ipfs/data/vectors.json, checked without Node.js)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from openlora.content.cid import CID
from openlora.content.importer import CHUNK_SIZE, ImportParams, add_bytes, add_path

VECTORS = json.loads((Path(__file__).parent / "data" / "vectors.json").read_text())
EMPTY_FILE = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
EMPTY_DIR = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic bytes that do not repeat with the chunk size (so leaves differ)."""
    return random.Random(seed).randbytes(n)


def test_well_known_empty_file_and_dir(tmp_path):
    assert str(add_bytes(b"").cid) == EMPTY_FILE
    (tmp_path / "e").mkdir()
    assert str(add_path(tmp_path / "e").cid) == EMPTY_DIR


def test_cid_text_round_trip():
    c = CID.parse(EMPTY_DIR)
    assert str(c) == EMPTY_DIR and CID.from_bytes(c.to_bytes()) == c
    # CIDv0 text of the empty directory is the same node
    assert CID.parse("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn") == c


@pytest.mark.parametrize("vec", VECTORS["files"], ids=lambda v: f"{v['size']}b-c{v['chunk']}-l{v['max_links']}")
def test_fixed_vectors(vec):
    params = ImportParams(chunk_size=vec["chunk"], max_links=vec["max_links"])
    assert str(add_bytes(pattern(vec["size"], vec["seed"]), params=params).cid) == vec["cid"]


SIZES = [0, 1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 17,
         174 * CHUNK_SIZE, 174 * CHUNK_SIZE + 1]


def test_files_of_many_sizes_match_reference(tmp_path, reference_cids):
    rng = random.Random(8)
    sizes = SIZES + [rng.randrange(1, 6 * CHUNK_SIZE) for _ in range(6)]
    paths = []
    for i, n in enumerate(sizes):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(os.urandom(n))
        paths.append(p)
    ref = reference_cids(paths)
    ours = [str(add_path(p).cid) for p in paths]
    assert ours == ref


@pytest.mark.parametrize("chunk,links", [(3, 4), (5, 3)])
def test_balanced_layout_edges_at_depth_with_small_parameters(tmp_path, reference_cids, chunk, links):
    """The layout at k = 1..4 levels: links^k chunks and links^k + 1 (the 174^k + 1 edge, scaled down)."""
    counts = sorted({c for k in range(1, 5) for c in (links ** k - 1, links ** k, links ** k + 1)} | {2, 7})
    paths, sizes = [], []
    for c in counts:
        for extra in (0, 1):  # a full last chunk and a short one
            n = c * chunk - (extra if c > 1 else 0)
            p = tmp_path / f"c{c}-{extra}.bin"
            p.write_bytes(os.urandom(n))
            paths.append(p)
            sizes.append(n)
    params = ImportParams(chunk_size=chunk, max_links=links)
    assert [str(add_path(p, params=params).cid) for p in paths] == reference_cids(paths, chunk, links)


def test_directories_match_reference(tmp_path, reference_cids):
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "empty-file").write_bytes(b"")
    (root / "sub" / "big.bin").write_bytes(os.urandom(3 * CHUNK_SIZE + 5))
    (root / "sub" / "deeper" / "\u00fcnicode \u2603.txt").write_bytes(b"snow")
    (root / "sub" / "B-upper").write_bytes(b"x")
    (root / ".hidden").write_bytes(b"skipped as Kubo skips it without --hidden")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(40):
        (flat / f"n{i:03d}").write_bytes(pattern(i * 97, i))
    empty = tmp_path / "just-empty"
    empty.mkdir()
    dirs = [root, flat, empty]
    assert [str(add_path(d).cid) for d in dirs] == reference_cids(dirs)
