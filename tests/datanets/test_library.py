"""openlora.datanets without a chain: contribution files validated and normalised, rows with Kubo-identical CIDs
in a real blockstore, duplicate detection, manifests built and verified, tampering caught."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from openlora.content.blockstore import Blockstore
from openlora.content.cid import as_cid
from openlora.content.importer import add_bytes
from openlora.datanets import contribution as contrib
from openlora.datanets import manifest as mf
from openlora.datanets.dedup import DedupIndex, DedupParams
from openlora.datanets.errors import ContributionError, VerificationError
from openlora.datanets.tokenize import count_tokens, words

REPO = Path(__file__).resolve().parents[2]
ALICE, BOB = "0x" + "a1" * 20, "0x" + "b0" * 20

TEXTS = [
    "Low-rank adapters let one base model serve many fine-tuned tasks at the same time on one GPU.",
    "A settlement contract pays each contributor by pull after a batch of receipts is published.",
    "Curators review every contribution before it becomes part of a published Datanet version.",
    "Content identifiers make every row of a dataset checkable by anyone who holds the blocks.",
]


def jsonl(*texts: str) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def test_words_v1_is_documented_and_deterministic():
    assert words("Don't panic!") == ["Don", "'", "t", "panic", "!"]
    assert count_tokens("words-v1", "héllo, wörld  42") == 4
    with pytest.raises(Exception, match="unknown tokenizer 'gpt'"):
        count_tokens("gpt", "x")


def test_prepare_normalises_and_splits_formats():
    decomposed = unicodedata.normalize("NFD", "café")
    p = contrib.prepare(("\ufeff" + decomposed + " one\r\n\r\nsecond  paragraph\rstill second\n").encode(), "a.txt")
    assert p.format == "text" and [r.text for r in p.rows] == ["café one", "second  paragraph\nstill second"]
    assert b"\r" not in p.data and p.cid == str(add_bytes(p.data).cid)
    assert p.rows[0].data == '{"text":"café one"}'.encode()
    assert p.rows[0].cid == str(add_bytes(p.rows[0].data).cid)
    md = contrib.prepare(b"# Title\n\ntext\n\n```\ncode\n\nmore code\n```\n", "b.md")
    assert [r.text for r in md.rows] == ["# Title", "text", "```\ncode\n\nmore code\n```"]
    pc = contrib.prepare(b'{"prompt": "2+2?", "completion": "4"}\n\n{"text": "t"}\n', "c.jsonl")
    assert [r.text for r in pc.rows] == ["2+2?\n4", "t"]
    assert pc.rows[0].data == b'{"completion":"4","prompt":"2+2?"}'


@pytest.mark.parametrize("data,name,msg", [
    (b"", "e.txt", "the file is empty"),
    (b"  \n\n ", "w.txt", "only whitespace"),
    (b"abc\x00def", "b.txt", "binary file \\(NUL byte at offset 3\\)"),
    (b"abc\x07def", "c.txt", "control character U\\+0007"),
    (b"caf\xe9", "l.txt", "not UTF-8 \\(invalid byte 0xe9 at offset 3\\)"),
    (b'{"text": "a"}\n{"text": 1}\n', "m.jsonl", "line 2: \"text\" must be a string"),
    (b'{"text": "a"}\nnot json\n', "m.jsonl", "line 2 is not a valid JSON row"),
    (b'{"txt": "a"}\n', "k.jsonl", "found keys \\['txt'\\]"),
    (b'["a"]\n', "k.jsonl", "must be a JSON object"),
    (b'{"text": " "}\n', "k.jsonl", "the row is empty"),
])
def test_refusals_are_one_line(data, name, msg):
    with pytest.raises(ContributionError, match=msg) as info:
        contrib.prepare(data, name)
    assert "\n" not in str(info.value)


def test_limits_are_parameters():
    with pytest.raises(ContributionError, match="over the 10-byte limit"):
        contrib.prepare(b"a" * 11, "big.txt", contrib.Limits(max_bytes=10))
    with pytest.raises(ContributionError, match="more than the 2-row limit"):
        contrib.prepare(b"a\n\nb\n\nc", "rows.txt", contrib.Limits(max_rows=2))
    with pytest.raises(ContributionError, match="over the 12-byte row limit"):
        contrib.prepare(b"a long row here", "row.txt", contrib.Limits(max_row_bytes=12))


def test_dedup_exact_near_and_distinct():
    ix = DedupIndex(DedupParams())
    assert ix.check_and_add("c1", TEXTS[0]) is None
    assert ix.check_and_add("c2", TEXTS[1]) is None
    exact = ix.check_and_add("c1", TEXTS[0])
    assert exact.kind == "exact" and exact.of == "c1"
    edited = TEXTS[0].replace("many", "several").replace("GPU", "GPU!")
    near = ix.check_and_add("c3", edited)
    assert near is not None and near.kind == "near" and near.of == "c1" and near.similarity_bps >= 6000
    assert ix.check_and_add("c4", TEXTS[2]) is None
    assert ix.check_and_add("c5", TEXTS[2].upper()) is not None   # case is not a difference


def _store(bs: Blockstore, data: bytes, name: str, license: str = "CC-BY-4.0") -> str:
    return contrib.store(contrib.prepare(data, name), bs, license)


def _version(bs: Blockstore) -> tuple[str, dict]:
    c1 = _store(bs, jsonl(TEXTS[0], TEXTS[1]), "alice.jsonl")
    c2 = _store(bs, jsonl(TEXTS[2], TEXTS[0], TEXTS[1].replace("pays", "rewards")), "bob.jsonl", "CC0-1.0")
    m = mf.build(1, 1, [mf.Accepted(2, BOB, c2), mf.Accepted(1, ALICE, c1)], bs.get, chain_id=31337,
                 registry="0x" + "00" * 20)
    return mf.add(m, bs), m


def test_manifest_weights_dedup_and_verify(tmp_path):
    bs = Blockstore(tmp_path / "ipfs")
    cid, m = _version(bs)
    assert [c["id"] for c in m["contributions"]] == [1, 2]  # contribution-id order
    alice, bob = m["contributions"]
    assert alice["weight"] == count_tokens("words-v1", TEXTS[0]) + count_tokens("words-v1", TEXTS[1])
    assert [r.get("duplicate") for r in bob["rows"]] == [None, "exact", "near"]
    assert bob["rows"][1]["duplicate_of"] == alice["rows"][0]["cid"]
    assert bob["weight"] == count_tokens("words-v1", TEXTS[2]) and bob["license"] == "CC0-1.0"
    assert m["total_weight"] == alice["weight"] + bob["weight"]
    raw = contrib.read_file(cid, bs.get, 1 << 20)
    assert raw == json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert b"." not in raw.replace(b"CC-BY-4.0", b"").replace(b"CC0-1.0", b"")  # no floats
    assert mf.verify(cid, bs.get) == m


def test_verify_catches_a_tampered_row_block(tmp_path):
    bs = Blockstore(tmp_path / "ipfs")
    cid, m = _version(bs)
    row = m["contributions"][0]["rows"][1]["cid"]
    path = bs._path(as_cid(row))
    path.write_bytes(path.read_bytes().replace(b"contract", b"contrakt"))
    with pytest.raises(VerificationError, match=f"contribution #1 .* row 1: .*{row}.* corrupt"):
        mf.verify(cid, bs.get)


def test_verify_says_exactly_which_weight_differs(tmp_path):
    bs = Blockstore(tmp_path / "ipfs")
    _, m = _version(bs)
    forged = json.loads(json.dumps(m))
    forged["contributions"][1]["weight"] += 100
    forged["total_weight"] += 100
    forged["contributions"][0]["rows"][0]["tokens"] = 3
    with pytest.raises(VerificationError) as info:
        mf.verify(mf.add(forged, bs), bs.get)
    msg = str(info.value)
    assert f"contributions[1] (#2 {m['contributions'][1]['cid']}).weight: manifest says " \
           f"{m['contributions'][1]['weight'] + 100}, content gives {m['contributions'][1]['weight']}" in msg
    assert "rows[0].tokens: manifest says 3" in msg and "total_weight" in msg


def test_verify_catches_a_missing_block_and_a_foreign_row(tmp_path):
    bs = Blockstore(tmp_path / "ipfs")
    cid, m = _version(bs)
    forged = json.loads(json.dumps(m))
    forged["contributions"][0]["rows"][0]["cid"] = str(add_bytes(b'{"text":"other"}').cid)
    with pytest.raises(VerificationError, match=r"rows\[0\]\.cid: manifest says"):
        mf.verify(mf.add(forged, bs), bs.get)
    bs.delete(m["contributions"][1]["rows"][2]["cid"])
    with pytest.raises(VerificationError, match="not in the local blockstore"):
        mf.verify(cid, bs.get)


def test_datanets_never_imports_torch():
    code = ("import sys; import openlora.datanets.manifest, openlora.datanets.contribution, "
            "openlora.datanets.dedup; bad = [m for m in ('torch', 'transformers', 'openlora.node', "
            "'openlora.inference') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_minhash_is_pinned_and_distinct_rows_are_not_flagged():
    # manifests are re-verified on other machines: the signature of a text must never change
    from openlora.datanets.dedup import signature
    sig = signature("Low-rank adapters let one base model serve many tasks.", DedupParams())
    assert [int(x) for x in sig[:3]] == [128787465338534307, 1522737563504101109, 1947058256001928404]
    import random
    rnd = random.Random(3)
    vocab = [f"w{i}" for i in range(3000)] + ["the", "a", "of", "and", "to", "model", "data"]
    ix = DedupIndex()
    flagged = [ix.check_and_add(f"r{i}", " ".join(rnd.choice(vocab) for _ in range(rnd.randint(8, 40))))
               for i in range(1000)]
    assert flagged.count(None) == 1000
