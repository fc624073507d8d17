"""The span index (attribution/spans.py) against brute-force references, its bytes attacked, its weights exact.

References written here from the definitions, not from the module: the suffix order is Python's sorted() of the
row suffixes as tuples; matching statistics and maximal spans come from scanning every row at every offset.
"""

from __future__ import annotations

import math
import random
import struct
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from openlora.attribution import spans as spans_mod
from openlora.attribution import suffix_array as suffix_array_mod
from openlora.attribution.errors import AttributionError
from openlora.attribution.spans import (INDEX_FORMAT, Occurrence, Span, SpanIndex, SpanIndexError, SpanParams,
                                        contribution_weights)
from openlora.content.importer import add_bytes
from tests.fuzz.fuzzing import fuzz

TOP = 2**32 - 1
HEADER = len(INDEX_FORMAT) + 1 + 16


# ---- references ------------------------------------------------------------------------------------------------

def ref_suffix_array(rows):
    tokens = [t for _, _, toks in rows for t in toks]
    ends = []
    for _, _, toks in rows:
        ends += [len(ends) + len(toks)] * len(toks)
    return sorted(range(len(tokens)), key=lambda p: (tuple(tokens[p:ends[p]]), p))


def ref_occurrences(rows, seq):
    seq = list(seq)
    return sorted(Occurrence(c, r, o) for c, r, toks in rows
                  for o in range(len(toks) - len(seq) + 1) if list(toks[o:o + len(seq)]) == seq)


def ref_matching(rows, comp):
    out = []
    for i in range(len(comp)):
        best = 0
        for _, _, toks in rows:
            for o in range(len(toks)):
                k = 0
                while i + k < len(comp) and o + k < len(toks) and toks[o + k] == comp[i + k]:
                    k += 1
                best = max(best, k)
        out.append(best)
    return out


def ref_spans(rows, comp, params):
    ms = ref_matching(rows, comp)
    out = []
    for i, length in enumerate(ms):
        if length >= params.min_len and (i == 0 or ms[i - 1] <= length):   # right- and left-maximal
            occ = ref_occurrences(rows, comp[i:i + length])
            assert occ
            if len(occ) <= params.max_occurrences:
                out.append(Span(i, length, tuple(occ)))
    return out


# ---- strategies -------------------------------------------------------------------------------------------------

# Few distinct ids, so repeats are common; the largest ids the format holds among them.
ALPHABETS = [(0, 1), (5, 6, 7), (0, TOP), (TOP - 1, TOP, 3), (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)]


@st.composite
def corpora(draw):
    alphabet = draw(st.sampled_from(ALPHABETS))
    tok = st.sampled_from(alphabet)
    n_rows = draw(st.integers(0, 6))
    ids = draw(st.lists(st.tuples(st.sampled_from([0, 1, 2, 7, 2**64 - 1]), st.integers(0, 3)),
                        min_size=n_rows, max_size=n_rows, unique=True))
    rows = [(c, r, draw(st.lists(tok, max_size=14))) for c, r in ids]
    # the completion: random tokens around whole rows and slices of rows (row edges, repeats)
    pieces = []
    for _ in range(draw(st.integers(0, 4))):
        if rows and draw(st.booleans()):
            toks = draw(st.sampled_from(rows))[2]
            a = draw(st.integers(0, len(toks)))
            b = draw(st.integers(a, len(toks)))
            pieces.append(toks[a:b] if draw(st.booleans()) else toks)
        else:
            pieces.append(draw(st.lists(tok, max_size=5)))
    comp = [t for piece in pieces for t in piece][:40]
    params = SpanParams(draw(st.integers(1, 4)), draw(st.integers(1, 5)))
    return rows, comp, params


# ---- the index against the references ---------------------------------------------------------------------------

@fuzz(150)
@given(corpora(), st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 5]), st.sampled_from([3, 1024]))
def test_spans_match_brute_force(case, key_tokens, fanout, block):
    rows, comp, params = case
    saved = spans_mod._KEY_TOKENS, spans_mod._FANOUT, spans_mod._BLOCK
    # the packed-key depth (1 and 2 as with huge vocabularies, 4 as usual), the search's probes per round and
    # how many completion positions are searched together
    spans_mod._KEY_TOKENS, spans_mod._FANOUT, spans_mod._BLOCK = key_tokens, fanout, block
    try:
        check_against_references(rows, comp, params)
    finally:
        spans_mod._KEY_TOKENS, spans_mod._FANOUT, spans_mod._BLOCK = saved


def check_against_references(rows, comp, params):
    index = SpanIndex.build(rows)
    assert index._sa.tolist() == ref_suffix_array(rows)
    assert index.matching_statistics(comp).tolist() == ref_matching(rows, comp)
    assert index.find_spans(comp, params) == ref_spans(rows, comp, params)
    again = SpanIndex.from_bytes(index.to_bytes())
    assert again.find_spans(comp, params) == ref_spans(rows, comp, params)
    assert again.to_bytes() == index.to_bytes()


def test_spans_stop_at_row_edges_and_repeats_are_listed():
    rows = [(1, 0, [10, 11, 12, 13]), (2, 0, [14, 15, 10, 11]), (2, 1, [10, 11, 12, 13])]
    index = SpanIndex.build(rows)
    # 12 13 14 15 crosses from row (1,0) into (2,0) in the concatenation: it must not match as one span
    got = index.find_spans([9, 10, 11, 12, 13, 14, 15, 10, 11], SpanParams(min_len=2, max_occurrences=5))
    assert got == [
        Span(1, 4, (Occurrence(1, 0, 0), Occurrence(2, 1, 0))),
        Span(5, 4, (Occurrence(2, 0, 0),)),
    ]
    # K: the 2-token span [10, 11] occurs 3 times; with K = 2 it is dropped, the other span stays
    assert index.find_spans([13, 14, 15, 10, 11, 99], SpanParams(2, 2)) == [
        Span(1, 4, (Occurrence(2, 0, 0),))]
    assert index.find_spans([10, 11, 99], SpanParams(2, 2)) == []
    assert index.find_spans([10, 11, 99], SpanParams(2, 3))[0].contributions == (1, 2)


def test_empty_index_and_empty_completion():
    for rows in ([], [(1, 0, [])], [(1, 0, []), (1, 1, [])]):
        index = SpanIndex.build(rows)
        assert index.num_tokens == 0
        assert index.find_spans([1, 2, 3], SpanParams(1, 1)) == []
        assert SpanIndex.from_bytes(index.to_bytes()).to_bytes() == index.to_bytes()
    assert SpanIndex.build([(1, 0, [1, 2])]).find_spans([], SpanParams(1, 1)) == []


def _corpus(seed: int, n_rows: int = 400):
    rng = random.Random(seed)
    base = [rng.randrange(50) for _ in range(300)]
    rows = []
    for r in range(n_rows):
        kind = r % 4
        if kind == 0:   # an exact duplicate of an earlier passage: long repeats make many doubling rounds
            toks = base[:rng.randrange(50, 300)]
        elif kind == 1:
            toks = [7] * rng.randrange(0, 60)
        else:
            toks = [rng.randrange(50) for _ in range(rng.randrange(0, 80))]
        rows.append((r % 9, r, toks))
    return rows


def test_build_is_byte_identical_on_1_and_2_threads(monkeypatch):
    rows = _corpus(3)
    one = SpanIndex.build(rows, threads=1).to_bytes()
    monkeypatch.setattr(suffix_array_mod, "PARALLEL_MIN", 0)   # make the small corpus take the threaded path
    two = SpanIndex.build(rows, threads=2).to_bytes()
    three = SpanIndex.build(iter(rows), threads=3).to_bytes()
    assert one == two == three
    assert SpanIndex.build(rows).cid() == str(add_bytes(one).cid)
    n = sum(len(toks) for _, _, toks in rows)
    assert np.frombuffer(one, "<u4", count=n, offset=len(one) - 4 * n).tolist() == ref_suffix_array(rows)
    changed = list(rows)
    changed[5] = (changed[5][0], changed[5][1], changed[5][2] + [1])
    assert SpanIndex.build(changed).cid() != SpanIndex.build(rows).cid()


def test_persisted_layout():
    data = SpanIndex.build([(3, 1, [5, 2**32 - 1]), (2**64 - 1, 0, [5])]).to_bytes()
    assert data.startswith(b"openlora-span-index/1\n")
    n, r = struct.unpack_from("<QQ", data, len(INDEX_FORMAT) + 1)
    assert (n, r) == (3, 2)
    body = data[HEADER:]
    assert struct.unpack("<6Q", body[:48]) == (3, 2**64 - 1, 1, 0, 0, 2)
    assert struct.unpack("<3I", body[48:60]) == (5, 2**32 - 1, 5)
    assert struct.unpack("<3I", body[60:72]) == (2, 0, 1)   # [5] < [5, 2**32-1] < [2**32-1]
    assert len(data) == HEADER + 24 * 2 + 8 * 3


# ---- bad input: one clear SpanIndexError, never a crash ---------------------------------------------------------

@pytest.mark.parametrize("rows, message", [
    ([(1, 0, [2**32])], "outside 0..2**32-1"),
    ([(1, 0, [-1])], "outside 0..2**32-1"),
    ([(1, 0, [1.0])], "not an integer"),
    ([(1, 0, [True])], "not an integer"),
    ([(1, 0, "abc")], "sequence of integers"),
    ([(1, 0, np.array([[1]]))], "1-D integer array"),
    ([(1, 0, np.array([1.5]))], "1-D integer array"),
    ([(1, 0, np.array([2**32], dtype=np.int64))], "outside"),
    ([(2**64, 0, [1])], "outside 0..2**64-1"),
    ([(-1, 0, [1])], "outside 0..2**64-1"),
    ([("1", 0, [1])], "must be an integer"),
    ([(1, 0, [1]), (1, 0, [2])], "appears twice"),
    ([(1, 0)], "expected (contribution_id, row_index, token_ids)"),
    (["row"], "expected"),
])
def test_build_refuses_bad_rows(rows, message):
    with pytest.raises(SpanIndexError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        SpanIndex.build(rows)


def test_bad_queries_and_params():
    index = SpanIndex.build([(1, 0, [1, 2, 3])])
    for comp in ([2**32], [-1], ["a"], "abc", 5, [1.5], np.array([1.0])):
        with pytest.raises(SpanIndexError):
            index.find_spans(comp, SpanParams(1, 1))
    for bad in ({"min_len": 0}, {"min_len": True}, {"max_occurrences": 0}, {"min_len": 2**40}, {"min_len": 2.0}):
        with pytest.raises(SpanIndexError):
            SpanParams(**bad)
    with pytest.raises(SpanIndexError):
        index.find_spans([1], params={"min_len": 1})
    with pytest.raises(SpanIndexError, match="threads"):
        SpanIndex.build([], threads=0)
    assert issubclass(SpanIndexError, AttributionError) and issubclass(SpanIndexError, ValueError)
    assert index.find_spans(np.array([0, 1, 2, 3], dtype=np.uint64), SpanParams(3, 1)) == [
        Span(1, 3, (Occurrence(1, 0, 0),))]


def _valid():
    return SpanIndex.build([(1, 0, [4, 5, 4, 5, 6]), (2, 3, [5, 4, 5]), (2, 4, [])]).to_bytes()


def _patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, *values)
    return bytes(b)


def test_from_bytes_refuses_tampered_indexes():
    data = _valid()
    n, r = 8, 3
    rows_at, tok_at = HEADER, HEADER + 24 * r
    sa_at = tok_at + 4 * n
    bad = {
        "wrong format": data.replace(b"openlora-span-index/1", b"openlora-span-index/2"),
        "not an index": b"PK\x03\x04" + data,
        "empty": b"",
        "more tokens declared": _patch(data, len(INDEX_FORMAT) + 1, "<Q", n + 1),
        "fewer rows declared": _patch(data, len(INDEX_FORMAT) + 9, "<Q", r - 1),
        "huge token count": _patch(data, len(INDEX_FORMAT) + 1, "<Q", 2**64 - 1),
        "huge row count": _patch(data, len(INDEX_FORMAT) + 9, "<Q", 2**63),
        "counts fit the format max but not the bytes": _patch(data, len(INDEX_FORMAT) + 1, "<Q", 2**32 - 1),
        "trailing byte": data + b"\0",
        "first row not at 0": _patch(data, rows_at + 16 * r, "<Q", 1),
        "row start past the end": _patch(data, rows_at + 16 * r + 16, "<Q", n + 1),
        "row starts backwards": _patch(data, rows_at + 16 * r + 8, "<Q", 6),
        "duplicate row": _patch(data, rows_at + 8 * r + 16, "<Q", 3),
        "sa entry past the end": _patch(data, sa_at, "<I", n),
        "sa entry huge": _patch(data, sa_at + 4, "<I", 2**32 - 1),
        "sa not a permutation": _patch(data, sa_at, "<I", struct.unpack_from("<I", data, sa_at + 4)[0]),
        "sa unsorted": _patch(data, sa_at, "<2I", *reversed(struct.unpack_from("<2I", data, sa_at))),
        "token changed under the sa": _patch(data, tok_at, "<I", 9),
    }
    for what, blob in bad.items():
        with pytest.raises(SpanIndexError):
            SpanIndex.from_bytes(blob)
        assert what
    for cut in range(len(data)):
        with pytest.raises(SpanIndexError):
            SpanIndex.from_bytes(data[:cut])
    for wrong_type in ("text", None, 12, [1, 2]):
        with pytest.raises(SpanIndexError):
            SpanIndex.from_bytes(wrong_type)
    no_rows = SpanIndex.build([]).to_bytes()
    with pytest.raises(SpanIndexError, match="no rows"):
        SpanIndex.from_bytes(_patch(no_rows, len(INDEX_FORMAT) + 1, "<Q", 1) + b"\0" * 8)
    assert SpanIndex.from_bytes(bytearray(data)).to_bytes() == data
    assert SpanIndex.from_bytes(memoryview(data)).to_bytes() == data


@fuzz(200)
@given(st.data())
def test_from_bytes_random_corruption_is_refused_or_consistent(data):
    blob = bytearray(_valid())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        index = SpanIndex.from_bytes(bytes(blob))
    except SpanIndexError:
        return
    # accepted: it must be a genuine index of its own rows (e.g. a changed contribution id), rebuilt identically
    rows = [(int(c), int(r), index._tokens[a:b].tolist()) for c, r, a, b in
            zip(index._contributions, index._rows, index._starts[:-1], index._starts[1:])]
    assert SpanIndex.build(rows).to_bytes() == bytes(blob)


# ---- the weight rule --------------------------------------------------------------------------------------------

def test_weights_rule_examples():
    o = Occurrence
    assert contribution_weights([]) == {}
    assert contribution_weights([Span(0, 4, (o(7, 0, 0),))]) == {7: 4}
    # overlapping spans: tokens 2..3 are shared by 1 and 2; 0..1 only 1; 4..5 only 2 -> scale 2
    w = contribution_weights([Span(0, 4, (o(1, 0, 0),)), Span(2, 4, (o(2, 0, 0), o(2, 5, 1)))])
    assert w == {1: 2 * 2 + 1 * 2, 2: 2 * 2 + 1 * 2}
    # a span held by three contributions next to one held by two: lcm(3, 2) = 6 per token
    w = contribution_weights([Span(0, 1, (o(1, 0, 0), o(2, 0, 0), o(3, 0, 0))), Span(5, 2, (o(4, 0, 0), o(1, 1, 0)))])
    assert w == {1: 2 + 3 * 2, 2: 2, 3: 2, 4: 3 * 2}
    assert list(w) == sorted(w)


@fuzz(200)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 12),
                          st.lists(st.integers(0, 6), min_size=1, max_size=5)), max_size=8))
def test_weights_are_exact(raw):
    spans = [Span(s, n, tuple(sorted(Occurrence(c, 0, i) for i, c in enumerate(cs)))) for s, n, cs in raw]
    weights = contribution_weights(spans)
    cover = {}
    for s, n, cs in raw:
        for t in range(s, s + n):
            cover.setdefault(t, set()).update(cs)
    if not cover:
        assert weights == {}
        return
    scale = math.lcm(*(len(c) for c in cover.values()))
    assert sum(weights.values()) == scale * len(cover)
    expected = {}
    for cs in cover.values():
        for c in cs:
            expected[c] = expected.get(c, 0) + Fraction(1, len(cs))
    assert {c: Fraction(w, scale) for c, w in weights.items()} == expected
    assert all(w > 0 for w in weights.values())


def test_large_vocabulary_packs_fewer_tokens_per_key():
    big = list(range(0, 140_000, 2))                   # 70,000 distinct ids: 17 bits each, 3 per key
    rows = [(1, 0, big), (2, 0, [TOP, TOP - 1, 5, 6, 7]), (2, 1, big[:40])]
    index = SpanIndex.build(rows)
    assert index._k == 3
    comp = [1] + big[100:130] + [TOP, TOP - 1, 5, 6] + big[38:40] + [3]
    assert index.find_spans(comp, SpanParams(2, 4)) == [
        Span(1, 30, (Occurrence(1, 0, 100),)),
        Span(31, 4, (Occurrence(2, 0, 0),)),
        Span(35, 2, (Occurrence(1, 0, 38), Occurrence(2, 1, 38))),
    ]
