"""The span index of a Datanet version: a suffix array over its rows' token ids, and span matching against it.

What it does:
- `SpanIndex.build(rows)` takes the version's accepted rows, `(contribution_id, row_index, token_ids)` in manifest
  order, and sorts every suffix of every row (a suffix ends at its row's end: no span ever crosses two rows).
  The order is total (token ids compared as unsigned integers, a suffix that is a proper prefix of another sorts
  first, identical suffixes sort by position), so the array is unique: the same rows give the same bytes, on any
  thread count and any machine. Built with numpy by prefix doubling over the suffixes not yet told apart
  (O(n log n) per round, log(longest row) rounds at worst; on text most suffixes are told apart in a few).
- `to_bytes()` / `from_bytes()` persist it (format below); `from_bytes` treats its input as untrusted and checks
  everything, including that the suffix array really is the sorted order of the tokens (one linear pass), so a
  loaded index answers exactly as a rebuilt one. `cid()` is the CIDv1 of those bytes, as Kubo would give them.
- `find_spans(completion, params)` returns the maximal spans of the completion (neither extendable left nor
  right) of at least `min_len` tokens that occur in the index, with every occurrence (contribution, row, offset),
  dropping a span that occurs more than `max_occurrences` times (boilerplate, not provenance). The query looks up
  every position's first 4 tokens at once in packed u64 keys, then runs a vectorised 5-ary search per position
  (matching statistics), then searches each maximal span's occurrence run within K + 1 entries of it.
- `contribution_weights(spans)` turns spans into exact integer weights per contribution (the rule is in its
  docstring and in docs/attribution.md).

Persisted format (all integers little-endian):
    b"openlora-span-index/1\\n"                    the format line
    u64 num_tokens, u64 num_rows
    u64[num_rows] contribution ids, u64[num_rows] row indices, u64[num_rows] row starts (token offset of each row)
    u32[num_tokens] token ids (the rows concatenated in order), u32[num_tokens] suffix array (token positions)

What it does not do: tokenise (callers pass token ids from the adapter's base tokenizer), read a Datanet version
(the caller feeds its rows), combine span weights with the static Datanet weights, or build receipts.
Never imports torch.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from openlora.attribution.errors import AttributionError
from openlora.attribution.suffix_array import check_suffix_array, suffix_array

INDEX_FORMAT = "openlora-span-index/1"
SPAN_RULE = "openlora-span-weights/1"   # the name of contribution_weights' rule, for receipts to carry

MAX_TOKEN = 2**32 - 1          # token ids are stored as u32
MAX_TOKENS = 2**32 - 1         # positions are stored as u32
MAX_ROWS = 2**32 - 1
MAX_ID = 2**64 - 1             # contribution ids and row indices are stored as u64
MAX_COMPLETION = 1 << 20       # tokens of one completion find_spans accepts

_MAGIC = INDEX_FORMAT.encode("ascii") + b"\n"
_COUNTS = struct.Struct("<QQ")
_HEADER = len(_MAGIC) + _COUNTS.size
_I64 = np.int64
_FANOUT = 4                    # probes per query and search round (a 5-ary search: fewer numpy rounds)
_CHUNK, _LONG_CHUNK = 16, 256  # ids compared per step: first, then each further step
_BLOCK = 1024                  # completion positions searched together (bounds memory on long completions)
_KEY_TOKENS = 4                # tokens packed into each suffix's u64 key (fewer when ids need more than 16 bits)


class SpanIndexError(AttributionError, ValueError):
    """Rows, index bytes, a completion or parameters that the span index cannot accept; the message says why."""


@dataclass(frozen=True, order=True)
class Occurrence:
    contribution: int   # the on-chain contribution id
    row: int            # the row's index inside that contribution
    offset: int         # token offset of the span inside the row


@dataclass(frozen=True)
class Span:
    start: int                             # token position in the completion
    length: int                            # tokens
    occurrences: tuple[Occurrence, ...]    # sorted; at most SpanParams.max_occurrences

    @property
    def contributions(self) -> tuple[int, ...]:
        """The distinct contribution ids that contain this span, ascending."""
        return tuple(sorted({o.contribution for o in self.occurrences}))


@dataclass(frozen=True)
class SpanParams:
    min_len: int = 12            # measured: docs/attribution.md "Choosing L"
    max_occurrences: int = 16    # more occurrences than this: boilerplate, the span is dropped

    def __post_init__(self) -> None:
        for name, value, hi in (("min_len", self.min_len, 1 << 20), ("max_occurrences", self.max_occurrences, 1 << 16)):
            if type(value) is not int or not 1 <= value <= hi:
                raise SpanIndexError(f"span parameter {name} must be an integer in 1..{hi}, got {value!r}")


def _check_id(value: object, what: str) -> int:
    if type(value) is not int and not isinstance(value, np.integer):
        raise SpanIndexError(f"{what} must be an integer, got {type(value).__name__}")
    value = int(value)  # type: ignore[arg-type]
    if not 0 <= value <= MAX_ID:
        raise SpanIndexError(f"{what} {value} is outside 0..2**64-1")
    return value


def _token_array(tokens: object, what: str) -> np.ndarray:
    """Token ids as int64, each checked to be an integer in 0..2**32-1."""
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise SpanIndexError(f"{what}: token ids must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > MAX_TOKEN):
            raise SpanIndexError(f"{what}: a token id is outside 0..2**32-1")
        return tokens.astype(_I64, copy=False)
    if isinstance(tokens, (str, bytes, bytearray)) or not isinstance(tokens, Sequence):
        raise SpanIndexError(f"{what}: token ids must be a sequence of integers, got {type(tokens).__name__}")
    for t in tokens:
        if type(t) is not int and not isinstance(t, np.integer):
            raise SpanIndexError(f"{what}: token id {t!r} is not an integer")
        if not 0 <= t <= MAX_TOKEN:
            raise SpanIndexError(f"{what}: token id {t} is outside 0..2**32-1")
    return np.fromiter(tokens, dtype=_I64, count=len(tokens))


class SpanIndex:
    """A Datanet version's suffix array with its row map; built by `build`, read by `from_bytes`."""

    def __init__(self, tokens: np.ndarray, sa: np.ndarray, contributions: np.ndarray, row_indices: np.ndarray,
                 starts: np.ndarray, rowend: np.ndarray) -> None:
        # Private: use build() or from_bytes(), which check their input.
        self._tokens = tokens                 # [n] u32
        self._sa = sa                         # [n] u32
        self._contributions = contributions   # [r] u64
        self._rows = row_indices              # [r] u64
        self._starts = np.append(starts.astype(_I64), _I64(tokens.size))  # [r + 1] i64: row starts, then n
        self._vocab, self._bits, self._k, self._keys, self._ids = _prefix_keys(tokens, sa, rowend, self._starts)

    # ---- building and bytes -----------------------------------------------------------------------------------

    # ---- building and bytes -----------------------------------------------------------------------------------

    @classmethod
    def build(cls, rows: Iterable[tuple[int, int, Sequence[int]]], *, threads: int = 1) -> "SpanIndex":
        if type(threads) is not int or not 1 <= threads <= 256:
            raise SpanIndexError(f"threads must be an integer in 1..256, got {threads!r}")
        contributions: list[int] = []
        row_indices: list[int] = []
        lengths: list[int] = []
        chunks: list[np.ndarray] = []
        total = 0
        for i, item in enumerate(rows):
            if not isinstance(item, tuple) or len(item) != 3:
                raise SpanIndexError(f"row {i}: expected (contribution_id, row_index, token_ids)")
            c, r, toks = item
            contributions.append(_check_id(c, f"row {i}: contribution id"))
            row_indices.append(_check_id(r, f"row {i}: row index"))
            arr = _token_array(toks, f"row {i} (contribution {c}, row {r})")
            total += arr.size
            if total > MAX_TOKENS:
                raise SpanIndexError(f"the rows hold more than {MAX_TOKENS} tokens, the most one span index holds")
            if len(contributions) > MAX_ROWS:
                raise SpanIndexError(f"more than {MAX_ROWS} rows")
            lengths.append(arr.size)
            chunks.append(arr.astype(np.uint32))
        contrib = np.array(contributions, dtype=np.uint64)
        rowidx = np.array(row_indices, dtype=np.uint64)
        _check_unique_rows(contrib, rowidx)
        tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint32)
        del chunks
        lens = np.array(lengths, dtype=_I64)
        starts = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(_I64) if lens.size else np.zeros(0, dtype=_I64)
        rowend = np.repeat((starts + lens).astype(np.uint32), lens)   # [n] end of each position's row
        sa = suffix_array(tokens, rowend, int(lens.max()), threads) if tokens.size else np.zeros(0, np.uint32)
        return cls(tokens, sa, contrib, rowidx, starts, rowend)

    def to_bytes(self) -> bytes:
        r = self._contributions.size
        return b"".join((
            _MAGIC, _COUNTS.pack(self._tokens.size, r),
            self._contributions.astype("<u8").tobytes(), self._rows.astype("<u8").tobytes(),
            self._starts[:-1].astype("<u8").tobytes(),
            self._tokens.astype("<u4").tobytes(), self._sa.astype("<u4").tobytes(),
        ))

    @classmethod
    def from_bytes(cls, data: bytes) -> "SpanIndex":
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SpanIndexError(f"span index bytes expected, got {type(data).__name__}")
        data = memoryview(data).cast("B")
        if len(data) < _HEADER or bytes(data[:len(_MAGIC)]) != _MAGIC:
            head = bytes(data[:len(_MAGIC)]).split(b"\n", 1)[0][:40]
            raise SpanIndexError(f"not a span index of format {INDEX_FORMAT!r} (it starts with {head!r})")
        n, r = _COUNTS.unpack_from(data, len(_MAGIC))
        if n > MAX_TOKENS or r > MAX_ROWS:
            raise SpanIndexError(f"span index declares {n} tokens and {r} rows; at most {MAX_TOKENS} of each")
        expected = _HEADER + 24 * r + 8 * n
        if len(data) != expected:
            raise SpanIndexError(f"span index is {len(data)} bytes; its counts ({n} tokens, {r} rows) need {expected}")
        if r == 0 and n:
            raise SpanIndexError("span index has tokens but no rows")
        off = _HEADER
        contrib = np.frombuffer(data, dtype="<u8", count=r, offset=off)
        rowidx = np.frombuffer(data, dtype="<u8", count=r, offset=off + 8 * r)
        starts = np.frombuffer(data, dtype="<u8", count=r, offset=off + 16 * r)
        tokens = np.frombuffer(data, dtype="<u4", count=n, offset=off + 24 * r)
        sa = np.frombuffer(data, dtype="<u4", count=n, offset=off + 24 * r + 4 * n)
        if r:
            if int(starts[0]) != 0:
                raise SpanIndexError("span index: the first row must start at token 0")
            if int(starts[-1]) > n:
                raise SpanIndexError(f"span index: a row starts at {int(starts[-1])}, past its {n} tokens")
            if r > 1 and bool((starts[1:] < starts[:-1]).any()):
                raise SpanIndexError("span index: row starts go backwards")
        _check_unique_rows(contrib, rowidx)
        starts64 = starts.astype(_I64)
        lens = np.diff(np.append(starts64, _I64(n)))
        rowend = np.repeat((starts64 + lens).astype(np.uint32), lens)
        problem = check_suffix_array(tokens, sa, rowend)
        if problem:
            raise SpanIndexError(f"span index: {problem}")
        return cls(tokens, sa, contrib, rowidx, starts64, rowend)

    def cid(self) -> str:
        from openlora.content.importer import add_bytes
        return str(add_bytes(self.to_bytes()).cid)

    @property
    def num_tokens(self) -> int:
        return int(self._tokens.size)

    @property
    def num_rows(self) -> int:
        return int(self._contributions.size)

    @property
    def nbytes(self) -> int:
        """Bytes of memory the loaded index holds (arrays and lookup tables)."""
        return sum(int(a.nbytes) for a in (self._tokens, self._sa, self._contributions, self._rows, self._starts,
                                           self._vocab, self._keys, self._ids))

    # ---- queries ----------------------------------------------------------------------------------------------

    def _compare(self, cq: np.ndarray, qi: np.ndarray, qlen: np.ndarray, p: np.ndarray, depth: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Compare queries cq[qi : qi + qlen] (dense ids, see _query_ids) with the suffixes at p (each ending at
        its row's end), each pair known to agree on its first depth[i] tokens.

        Returns (lcp, sign): the common prefix length, and sign 0 when the query is a prefix of the suffix (or
        equal), +1 when the suffix sorts before the query, -1 when after. Reads whole windows of _CHUNK, then
        _LONG_CHUNK, ids (row gathers from sliding-window views: one index per row, not per token); a row's end
        reads as id 0, which sorts before every token."""
        ps = p + np.searchsorted(self._starts, p, side="right") - 1   # position in _ids (one 0 after each row)
        lcp = np.empty(qi.size, dtype=_I64)
        sign = np.zeros(qi.size, dtype=np.int8)
        todo = np.arange(qi.size)
        base = depth.astype(_I64)
        room = qlen - base                                             # query tokens left to compare
        width = _CHUNK
        while todo.size:
            b, r = base[todo], room[todo]
            qw = sliding_window_view(cq, width)[qi[todo] + b]           # [t, width]
            sw = sliding_window_view(self._ids, width)[ps[todo] + b]    # [t, width]
            diff = qw != sw
            at = diff.argmax(axis=1)
            rows = np.arange(todo.size)
            differs = diff[rows, at] & (at < r)
            ends = ~differs & (r <= width)            # the query is used up first: a prefix of the suffix
            f = np.flatnonzero(differs)
            lcp[todo[f]] = b[f] + at[f]
            sign[todo[f]] = np.where(qw[f, at[f]] > sw[f, at[f]], 1, -1)
            e = np.flatnonzero(ends)
            lcp[todo[e]] = b[e] + r[e]
            rest = todo[~(differs | ends)]
            base[rest] += width
            room[rest] -= width
            todo = rest
            width = _LONG_CHUNK
        return lcp, sign

    def _search(self, cq: np.ndarray, qi: np.ndarray, qlen: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                upper: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each query, the first SA index in [lo, hi) whose suffix sorts after it (where upper[i]) or does
        not sort before it (lower bound); the answer lies in [lo, hi] by the caller's choice of bounds, where
        every suffix shares `depth` tokens with the query. Returns (index, llcp, rlcp): the common prefix of the query with the
        suffix just before the index and at the index (`depth` where that suffix is outside [lo, hi)).
        Each probe starts comparing at min(llcp, rlcp), which every suffix between the bounds shares (the
        classic Manber-Myers bound), and `_FANOUT` probes per query split the range each round."""
        lo, hi = lo.copy(), hi.copy()
        llcp = np.full(lo.size, depth, dtype=_I64)
        rlcp = llcp.copy()
        fan = _FANOUT
        steps = np.arange(1, fan + 1, dtype=_I64)
        while True:
            act = np.flatnonzero(lo < hi)
            if not act.size:
                return lo, llcp, rlcp
            a_lo = lo[act]
            probe = a_lo[:, None] + ((hi[act] - a_lo)[:, None] * steps[None, :]) // (fan + 1)   # [a, fan] sorted
            q = np.repeat(act, fan)
            lcp, sign = self._compare(cq, qi[q], qlen[q], self._sa[probe.ravel()].astype(_I64),
                                      np.minimum(llcp[q], rlcp[q]))
            lcp = lcp.reshape(-1, fan)
            right = np.where(upper[q], sign >= 0, sign > 0).reshape(-1, fan)   # the probe sorts before: go right
            r = right.sum(axis=1)          # probes are sorted, so the first r go right
            moved = np.flatnonzero(r > 0)
            lo[act[moved]] = probe[moved, r[moved] - 1] + 1
            llcp[act[moved]] = lcp[moved, r[moved] - 1]
            stop = np.flatnonzero(r < fan)
            hi[act[stop]] = probe[stop, r[stop]]
            rlcp[act[stop]] = lcp[stop, r[stop]]

    def matching_statistics(self, completion: Sequence[int]) -> np.ndarray:
        """ms[i] = the length of the longest prefix of completion[i:] that occurs in one row of the index."""
        return self._matching(_completion(completion))[0]

    def _query_ids(self, comp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dense [m] u64: 1 + the token's place in vocab, 0 for a token the index lacks; cq [m + pad]: the same
        ids as _compare reads them, a lacking token as V + 1 (after every token: it never matches, and any
        consistent place keeps the search right), then padding)."""
        v = self._vocab.size
        j = np.minimum(np.searchsorted(self._vocab, comp), v - 1)
        dense = np.where(self._vocab[j] == comp, j + 1, 0).astype(np.uint64)
        cq = np.full(comp.size + _LONG_CHUNK, v + 2, dtype=self._ids.dtype)
        cq[:comp.size] = np.where(dense == 0, v + 1, dense)
        return dense, cq

    def _prefix_ranges(self, dense: np.ndarray, every_depth: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every completion position i and depth d in 1..k: the SA range [lo, hi) [m, k] of the suffixes that
        begin with comp[i : i + d] (searchsorted on the packed keys), and whether that prefix occurs at all.
        Without every_depth only depth k is looked up (the other columns say nothing)."""
        m, k, bits = dense.size, self._k, self._bits
        at = np.arange(m)[:, None] + np.arange(k)[None, :]                        # [m, k]
        fields = np.where(at < m, dense[np.minimum(at, m - 1)], np.uint64(0))     # [m, k]
        shifts = np.array([(k - 1 - d) * bits for d in range(k)], dtype=np.uint64)
        packed = np.cumsum(fields << shifts[None, :], axis=1, dtype=np.uint64)   # [m, k] prefix d+1, then zeros
        ones = np.array([(1 << int(x)) - 1 for x in shifts], dtype=np.uint64)
        if not every_depth:
            packed, ones = packed[:, k - 1:], ones[k - 1:]
        lo = np.searchsorted(self._keys, packed.ravel(), side="left").reshape(packed.shape)
        hi = np.searchsorted(self._keys, (packed | ones[None, :]).ravel(), side="right").reshape(packed.shape)
        if not every_depth:
            lo = np.concatenate((np.zeros((m, k - 1), dtype=lo.dtype), lo), axis=1)
            hi = np.concatenate((np.zeros((m, k - 1), dtype=hi.dtype), hi), axis=1)
        exists = np.cumprod(fields != 0, axis=1).astype(bool) & (hi > lo)       # [m, k]
        return lo, hi, exists

    def _matching(self, comp: np.ndarray, every_depth: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ms [m], lo/hi [m, k], pos [m]): the matching statistics of comp; the SA range of comp[i : i + d + 1]
        for each depth d < k; for positions whose first k tokens occur, where comp[i:] sorts in the array; and
        the completion's ids as _compare reads them.
        Without every_depth, ms values below k are 0 (for callers that only want spans longer than k)."""
        m, k = comp.size, self._k
        if not m or not self._tokens.size:
            z = np.zeros(m, dtype=_I64)
            return z, np.zeros((m, k), _I64), np.zeros((m, k), _I64), z, z
        dense, cq = self._query_ids(comp)
        lo, hi, exists = self._prefix_ranges(dense, every_depth)
        ms = exists.sum(axis=1).astype(_I64) if every_depth else np.where(exists[:, k - 1], k, 0)
        pos = lo[:, k - 1].copy()
        deep_all = np.flatnonzero(exists[:, k - 1] & (np.arange(m) + k < m))
        for b in range(0, deep_all.size, _BLOCK):   # blocks bound the search's temporaries on long completions
            deep = deep_all[b:b + _BLOCK]
            at, llcp, rlcp = self._search(cq, deep, m - deep, lo[deep, k - 1], hi[deep, k - 1],
                                          np.zeros(deep.size, bool), k)
            pos[deep] = at
            ms[deep] = np.maximum(llcp, rlcp)   # the longest match is with a neighbour of where comp[i:] sorts
        return ms, lo, hi, pos, cq

    def find_spans(self, completion: Sequence[int], params: SpanParams = SpanParams()) -> list[Span]:
        if not isinstance(params, SpanParams):
            raise SpanIndexError(f"params must be SpanParams, got {type(params).__name__}")
        comp = _completion(completion)
        k, cap = self._k, params.max_occurrences
        ms, plo, phi, pos, cq = self._matching(comp, every_depth=params.min_len <= k)
        if not ms.size:
            return []
        prev = np.concatenate(([-1], ms[:-1]))
        starts = np.flatnonzero((ms >= params.min_len) & (prev <= ms))   # right-maximal by ms, left-maximal
        if not starts.size:
            return []
        lens = ms[starts]
        depth = np.minimum(lens, k) - 1
        lo, hi = plo[starts, depth], phi[starts, depth]        # exact ranges for spans of up to k tokens
        for b in range(0, int((lens > k).sum()), _BLOCK):
            long_ = np.flatnonzero(lens > k)[b:b + _BLOCK]
            # A longer span's occurrences are a run around pos (where comp[s:] sorts), inside the depth-k range.
            # Only runs of up to `cap` matter: search [pos - cap - 1, pos) and [pos, pos + cap + 1), both at once.
            s, n_ = starts[long_], lens[long_]
            p0, klo, khi = pos[s], plo[s, k - 1], phi[s, k - 1]
            wlo, whi = np.maximum(klo, p0 - cap - 1), np.minimum(khi, p0 + cap + 1)
            two = np.concatenate
            got = self._search(cq, two((s, s)), two((n_, n_)), two((wlo, p0)), two((p0, whi)),
                               np.repeat([False, True], s.size), k)[0]
            a, z = got[:s.size], got[s.size:]
            over = ((a == wlo) & (wlo > klo)) | ((z == whi) & (whi < khi))   # a run reaching a window's far end
            lo[long_] = a
            hi[long_] = np.where(over, a + cap + 1, z)
        spans = []
        for s, length, a, z in zip(starts.tolist(), lens.tolist(), lo.tolist(), hi.tolist()):
            if z - a > params.max_occurrences:
                continue
            p = self._sa[a:z].astype(_I64)
            row = np.searchsorted(self._starts, p, side="right") - 1
            occ = sorted(Occurrence(int(c), int(r), int(o)) for c, r, o in
                         zip(self._contributions[row], self._rows[row], p - self._starts[row]))
            spans.append(Span(s, length, tuple(occ)))
        return spans


def _prefix_keys(tokens: np.ndarray, sa: np.ndarray, rowend: np.ndarray, starts: np.ndarray
                 ) -> tuple[np.ndarray, int, int, np.ndarray, np.ndarray]:
    """The lookup tables a loaded index derives from its arrays (not persisted):
    - vocab [V]: the distinct token ids, sorted; a token's dense id is 1 + its place there;
    - keys [n] u64: keys[x] packs the dense ids of the first k tokens of the suffix at sa[x], `bits` bits each,
      first token highest, 0 past the row's end. The suffix order sorts these keys too, so one searchsorted finds
      the range of any prefix of up to k tokens (k = 4 for vocabularies under 65,536 distinct ids, fewer above);
    - ids [n + rows + pad]: the dense ids of the rows, each row followed by a 0, for _compare's windows
      (u16 when the vocabulary allows it, else u32)."""
    n = tokens.size
    if not n:
        return np.zeros(0, dtype=_I64), 1, 1, np.zeros(0, dtype=np.uint64), np.zeros(_LONG_CHUNK, dtype=np.uint16)
    first = tokens[sa]                                     # [n] ascending
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(first[1:], first[:-1], out=new[1:])
    vocab = first[new].astype(_I64)
    dense = np.empty(n, dtype=np.uint32)                   # [n] by position
    dense[sa] = np.cumsum(new, dtype=np.uint32)
    del first, new
    bits = int(vocab.size).bit_length()
    k = max(1, min(_KEY_TOKENS, 64 // bits))
    p = sa.astype(_I64)
    end = rowend[p]
    keys = np.zeros(n, dtype=np.uint64)
    for d in range(k):
        q = p + d
        field = np.where(q < end, dense[np.minimum(q, n - 1)], 0).astype(np.uint64)
        keys |= field << np.uint64((k - 1 - d) * bits)
    del p, end
    r = starts.size - 1
    width = np.uint16 if vocab.size + 2 <= 0xFFFF else np.uint32 if vocab.size + 2 <= 0xFFFFFFFF else np.uint64
    ids = np.zeros(n + r + _LONG_CHUNK, dtype=width)
    lens = np.diff(starts)
    ids[np.arange(n, dtype=_I64) + np.repeat(np.arange(r, dtype=_I64), lens)] = dense
    return vocab, bits, k, keys, ids


def _check_unique_rows(contrib: np.ndarray, rowidx: np.ndarray) -> None:
    if contrib.size < 2:
        return
    o = np.lexsort((rowidx, contrib))
    c, r = contrib[o], rowidx[o]
    dup = np.flatnonzero((c[1:] == c[:-1]) & (r[1:] == r[:-1]))
    if dup.size:
        k = o[dup[0] + 1]
        raise SpanIndexError(f"row (contribution {int(contrib[k])}, row {int(rowidx[k])}) appears twice")


def _completion(completion: Sequence[int]) -> np.ndarray:
    try:
        size = len(completion)
    except TypeError:
        raise SpanIndexError(f"completion must be a sequence of token ids, got {type(completion).__name__}") from None
    if size > MAX_COMPLETION:
        raise SpanIndexError(f"completion of {size} tokens; at most {MAX_COMPLETION}")
    return _token_array(completion, "completion")


def contribution_weights(spans: Sequence[Span]) -> dict[int, int]:
    """Exact integer weights per contribution from a completion's spans (rule "openlora-span-weights/1").

    Rule: every completion token covered by at least one span is worth the same; it goes to the union of the
    distinct contributions of all spans that cover it, split equally. Overlapping spans therefore never count a
    token twice, and a contribution that holds any span covering a token shares that token. To stay in integers,
    every token is worth S = lcm of the numbers of contributions sharing a token, so a token shared by k
    contributions gives S // k to each. sum(weights) == S * (number of covered tokens), exactly.
    Contributions with zero weight are left out; the dict is ordered by contribution id. No spans: {}.
    """
    cover: dict[int, set[int]] = {}
    for span in spans:
        contribs = {o.contribution for o in span.occurrences}
        if not contribs:
            continue
        for t in range(span.start, span.start + span.length):
            cover.setdefault(t, set()).update(contribs)
    if not cover:
        return {}
    scale = math.lcm(*{len(s) for s in cover.values()})
    weights: dict[int, int] = {}
    for s in cover.values():
        share = scale // len(s)
        for c in s:
            weights[c] = weights.get(c, 0) + share
    return {c: weights[c] for c in sorted(weights)}
