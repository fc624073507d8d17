"""The suffix array of a span index (attribution/spans.py): construction by prefix doubling, and its check.

What it does: `suffix_array(tokens, rowend, maxlen, threads)` sorts every suffix of the concatenated rows, a
suffix ending at its row's end (`rowend[p]`), in the span index's total order (token ids as unsigned integers, a
proper prefix first, identical suffixes by position), with numpy only: one sort by first token, then rounds that
sort only the suffixes not yet told apart by (rank, rank h tokens later) for h = 1, 2, 4, ... (Larsson-Sadakane's
refinement of prefix doubling). `check_suffix_array` verifies a given array in one linear vectorised pass.
What it does not do: read or write the persisted format, or search (attribution/spans.py does both).
Never imports torch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

_I64 = np.int64
PARALLEL_MIN = 1 << 20        # fewer active suffixes than this: one sort, no threads


def _argsort_groups(key: np.ndarray, group_first: np.ndarray, threads: int) -> np.ndarray:
    """argsort(key) where key is already grouped in ascending runs by its high part: the runs are independent,
    so the array can be cut at run starts (`group_first` flags them) and the pieces sorted in threads
    (numpy's sort releases the GIL). Equal keys may come out in any order: callers never depend on it."""
    n = key.size
    if threads <= 1 or n < PARALLEL_MIN:
        return np.argsort(key)
    firsts = np.flatnonzero(group_first)
    cuts = [0]
    for t in range(1, threads):
        j = int(np.searchsorted(firsts, n * t // threads))
        cut = int(firsts[j]) if j < firsts.size else n
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(n)
    pieces = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(lambda ab: np.argsort(key[ab[0]:ab[1]]) + ab[0], pieces))
    return np.concatenate(parts)


def suffix_array(tokens: np.ndarray, rowend: np.ndarray, maxlen: int, threads: int) -> np.ndarray:
    """The suffix array of `tokens` [n] (u32) where the suffix at p ends at rowend[p] [n].

    rank[p] is the SA position of the first suffix of p's group (suffixes equal in their first h tokens, or equal
    whole when shorter). Each round sorts only the suffixes still in groups of two or more by (rank[p],
    rank[p+h] or -1 past the row's end), which gives groups equal in 2h tokens; a suffix alone in its group is final.
    """
    n = tokens.size
    order = np.argsort(tokens, kind="stable")
    first_tok = tokens[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(first_tok[1:], first_tok[:-1], out=first[1:])
    del first_tok
    idx = np.arange(n, dtype=_I64)
    gpos = np.maximum.accumulate(np.where(first, idx, 0))
    rank = np.empty(n, dtype=_I64)
    rank[order] = gpos
    sa = order.astype(_I64)
    alone = first.copy()
    alone[:-1] &= first[1:]
    active = sa[~alone]
    del order, first, alone, gpos, idx
    h = 1
    while active.size and h < maxlen:
        p = active
        nxt = p + h
        inrow = nxt < rowend[p]
        key1 = rank[p]
        key2 = np.where(inrow, rank[np.minimum(nxt, n - 1)] + 1, 0)
        del nxt, inrow
        key = key1.astype(np.uint64) * np.uint64(n + 1) + key2.astype(np.uint64)
        gfirst = np.empty(p.size, dtype=bool)
        gfirst[0] = True
        np.not_equal(key1[1:], key1[:-1], out=gfirst[1:])
        o = _argsort_groups(key, gfirst, threads)
        p, key, key1 = p[o], key[o], key1[o]
        del o, key2
        j = np.arange(p.size, dtype=_I64)
        # global SA position of the j-th sorted active suffix: its group's start + its index inside the group
        g = key1 + j - np.maximum.accumulate(np.where(gfirst, j, 0))
        sa[g] = p
        sub = np.empty(p.size, dtype=bool)
        sub[0] = True
        np.not_equal(key[1:], key[:-1], out=sub[1:])
        rank[p] = np.maximum.accumulate(np.where(sub, g, 0))
        alone = sub.copy()
        alone[:-1] &= sub[1:]
        active = p[~alone]
        del key, key1, j, g, sub, alone, gfirst
        h *= 2
    if active.size:  # groups of identical whole suffixes: by position
        p = active
        key1 = rank[p]
        o = np.lexsort((p, key1))
        p, key1 = p[o], key1[o]
        j = np.arange(p.size, dtype=_I64)
        gfirst = np.empty(p.size, dtype=bool)
        gfirst[0] = True
        np.not_equal(key1[1:], key1[:-1], out=gfirst[1:])
        sa[key1 + j - np.maximum.accumulate(np.where(gfirst, j, 0))] = p
    return sa.astype(np.uint32)


def check_suffix_array(tokens: np.ndarray, sa: np.ndarray, rowend: np.ndarray) -> str | None:
    """None when `sa` is the sorted order of the suffixes, else what is wrong (one linear, vectorised pass).

    Adjacent entries a, b must satisfy: tokens[a] < tokens[b], or equal first tokens and then a's remainder
    sorts before b's (an ended remainder is smallest; two ended remainders: a < b; else rank[a+1] < rank[b+1])."""
    n = tokens.size
    if n == 0:
        return None
    if int(sa.max()) >= n:
        return "a suffix array entry is past the end of the tokens"
    seen = np.zeros(n, dtype=bool)
    seen[sa] = True
    if not seen.all():
        return "the suffix array is not a permutation of the token positions"
    del seen
    rank = np.empty(n + 1, dtype=_I64)
    rank[sa] = np.arange(n, dtype=_I64)
    a = sa[:-1].astype(_I64)
    b = sa[1:].astype(_I64)
    ta, tb = tokens[a], tokens[b]
    a_more = a + 1 < rowend[a]
    b_more = b + 1 < rowend[b]
    rank[n] = 0
    ra = rank[np.minimum(a + 1, n)]
    rb = rank[np.minimum(b + 1, n)]
    tail_ok = np.where(a_more, b_more & (ra < rb), b_more | (a < b))
    ok = (ta < tb) | ((ta == tb) & tail_ok)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        return f"the suffix array is not sorted (entries {bad} and {bad + 1})"
    return None
