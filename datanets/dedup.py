"""Duplicate rows: exact (same row CID) and near (word shingles + MinHash + LSH bands) against rows seen before.

What it does: `DedupIndex(params)` holds the rows already accepted, in order; `check(cid, text)` says whether a
row repeats one of them (`Duplicate(kind="exact"|"near", of=cid, similarity_bps)`) or is new; `add(cid, text)`
records it. Near duplicates: the row's lower-cased words-v1 word tokens form k-word shingles (the whole row when it
is shorter than k); the row's MinHash signature is, for each of `num_perm` slots i, the minimum over its
shingles of splitmix64(h ^ seed_i), h = blake2b-64 of the shingle, seed_i = blake2b-64 of "openlora-minhash-<i>",
so signatures are identical on every machine. Rows whose signatures agree on a whole LSH band are candidates; a
candidate whose estimated Jaccard similarity (the fraction of equal signature slots) is at least `threshold_bps` /
10,000 is a near duplicate (the most similar one, the earliest on ties). Defaults (2-word shingles, 0.60) catch a
one-word edit of a 15-word row (true Jaccard 0.75) and leave unrelated sentences far below (~0.05).
What it does not do: semantic similarity, or dedup across Datanets.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from openlora.datanets.tokenize import words

@dataclass(frozen=True)
class DedupParams:
    shingle: int = 2            # words per shingle
    num_perm: int = 64          # MinHash signature length
    bands: int = 16             # LSH bands (num_perm must be a multiple)
    threshold_bps: int = 6_000  # estimated Jaccard similarity, in 1/10,000, from which a row is a near duplicate

    def __post_init__(self) -> None:
        if self.shingle < 1 or self.num_perm < 1 or self.bands < 1 or self.num_perm % self.bands:
            raise ValueError(f"dedup: shingle >= 1, num_perm >= 1 and a multiple of bands >= 1 (got {self})")
        if not 0 < self.threshold_bps <= 10_000:
            raise ValueError(f"dedup: threshold_bps must be in 1..10000, got {self.threshold_bps}")

    def as_dict(self) -> dict[str, int]:
        return {"shingle": self.shingle, "num_perm": self.num_perm, "bands": self.bands,
                "threshold_bps": self.threshold_bps}


@dataclass(frozen=True)
class Duplicate:
    kind: str            # "exact" | "near"
    of: str              # the CID of the earlier row it repeats
    similarity_bps: int  # 10000 for exact


@functools.lru_cache(maxsize=8)
def _seeds(n: int) -> np.ndarray:
    raw = b"".join(hashlib.blake2b(b"openlora-minhash-%d" % i, digest_size=8).digest() for i in range(n))
    return np.frombuffer(raw, dtype="<u8").copy()


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of 64-bit integers with full avalanche (multiplications wrap mod 2^64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def signature(text: str, params: DedupParams) -> np.ndarray:
    """The row's MinHash signature, [num_perm] uint64: per slot i, min over shingles of mix(hash(shingle) ^ seed_i)."""
    toks = [t.lower() for t in words(text) if t[0].isalnum() or t[0] == "_"]
    k = params.shingle
    grams = {" ".join(toks[i:i + k]) for i in range(max(1, len(toks) - k + 1))}
    h = np.frombuffer(b"".join(hashlib.blake2b(g.encode(), digest_size=8).digest() for g in grams), dtype="<u8")
    with np.errstate(over="ignore"):
        return _mix(h[None, :] ^ _seeds(params.num_perm)[:, None]).min(axis=1)


class DedupIndex:
    def __init__(self, params: DedupParams = DedupParams()):
        self.params = params
        self._cids: set[str] = set()
        self._sigs: list[tuple[str, np.ndarray]] = []
        self._bands: dict[tuple[int, bytes], list[int]] = {}

    def _keys(self, sig: np.ndarray) -> list[tuple[int, bytes]]:
        r = self.params.num_perm // self.params.bands
        return [(i, sig[i * r:(i + 1) * r].tobytes()) for i in range(self.params.bands)]

    def check(self, cid: str, text: str, sig: np.ndarray | None = None) -> Duplicate | None:
        if cid in self._cids:
            return Duplicate("exact", cid, 10_000)
        sig = signature(text, self.params) if sig is None else sig
        cands = sorted({j for key in self._keys(sig) for j in self._bands.get(key, ())})
        best: Duplicate | None = None
        for j in cands:
            other_cid, other = self._sigs[j]
            sim = int(np.count_nonzero(other == sig)) * 10_000 // self.params.num_perm
            if sim >= self.params.threshold_bps and (best is None or sim > best.similarity_bps):
                best = Duplicate("near", other_cid, sim)
        return best

    def add(self, cid: str, text: str, sig: np.ndarray | None = None) -> None:
        if cid in self._cids:
            return
        sig = signature(text, self.params) if sig is None else sig
        self._cids.add(cid)
        self._sigs.append((cid, sig))
        for key in self._keys(sig):
            self._bands.setdefault(key, []).append(len(self._sigs) - 1)

    def check_and_add(self, cid: str, text: str) -> Duplicate | None:
        """A duplicate is returned and not added (it carries no weight); a new row is added and None returned."""
        sig = None if cid in self._cids else signature(text, self.params)
        dup = self.check(cid, text, sig)
        if dup is None:
            self.add(cid, text, sig)
        return dup
