"""The evidence a receipt carries for its attribution vector, and the rule that turns spans into that vector.

What it does: `Evidence` (rule name and parameters, the tokenizer identity, the completion's token ids or their
hash, and per Datanet: version CID, index CID and the matched spans with every (contribution, row, offset)
occurrence), its canonical JSON form (`to_json` / `from_json`, strict: every field typed and bounded, for receipts
read from peers and files) and its 32-byte `evidence_hash` (what the receipt's signed hash commits to);
`attribution.attribute.contributors_by_datanet`
applies THE RULE (below).
What it does not do: build or query the span index (attribution.spans), tokenize (the caller passes token ids),
read the chain (pricing.py) or sign (receipts.py).

The rule, "openlora-spans-else-static/1". For each Datanet d of the adapter (AdapterRegistry: d and its bps):
  - S_d = the maximal spans of the completion (its own tokens only; the prompt is not searched) found in the index
    of the Datanet version the adapter was trained on (lineage), at least `min_len` tokens long and occurring at
    most `max_occurrences` times in the version (more is boilerplate, not provenance) — attribution.spans;
  - if S_d is not empty, d's part of the contributors' share is split by the span weights
    (spans.contribution_weights(S_d): exact integers per contribution), summed per contributor address;
  - otherwise by the static weights of that same version (its per-contribution weights on chain, summed per
    contributor address).
The vector is then attribution.pricing.attribution_vector(terms, those weights, operator = the receipt's node,
shares in the evidence): author / operator / contributors bps, Datanets by their registered bps, exact integers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from eth_utils import keccak

from openlora.attribution.errors import AttributionError

RULE = "openlora-spans-else-static/1"
MAX_COMPLETION_IDS = 1 << 17        # tokens of one completion (any context this node serves is far below)
MAX_TOKEN_ID = (1 << 32) - 1
MAX_DATANETS = 64
MAX_SPANS = 1 << 16
MAX_OCCURRENCES = 1 << 16         # per span (SpanParams bounds max_occurrences the same way)
MAX_STR = 256                       # a CID, a tokenizer identity, a rule name


class EvidenceError(AttributionError, ValueError):
    """Evidence that is malformed, out of bounds, or inconsistent with itself."""


@dataclass(frozen=True)
class SpanRef:
    """A matched span: completion tokens [start, start + length) occur at every (contribution, row, offset)."""
    start: int
    length: int
    occurrences: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class DatanetEvidence:
    datanet_id: int
    version_cid: str        # the version manifest's CID (the version the adapter was trained on)
    index_cid: str          # the CID of the span index's bytes (SpanIndex.cid())
    spans: tuple[SpanRef, ...]


@dataclass(frozen=True)
class Evidence:
    rule: str
    min_len: int
    max_occurrences: int
    shares: tuple[int, int, int]        # (author, operator, contributors) bps
    tokenizer: str                      # identity of the base tokenizer ("sha256:<hex of tokenizer.json>")
    completion_hash: bytes              # completion_hash(completion_ids)
    datanets: tuple[DatanetEvidence, ...]
    completion_ids: tuple[int, ...] | None = field(default=None, compare=False)   # None: only the hash is known

    def to_json(self, with_tokens: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "rule": self.rule, "min_len": self.min_len, "max_occurrences": self.max_occurrences,
            "shares": list(self.shares), "tokenizer": self.tokenizer,
            "completion_hash": "0x" + self.completion_hash.hex(),
            "datanets": [{"datanet_id": e.datanet_id, "version_cid": e.version_cid, "index_cid": e.index_cid,
                          "spans": [[s.start, s.length, [list(o) for o in s.occurrences]] for s in e.spans]}
                         for e in self.datanets]}
        if with_tokens and self.completion_ids is not None:
            d["completion_ids"] = list(self.completion_ids)
        return d

    @classmethod
    def from_json(cls, d: Any) -> "Evidence":
        """Strict: every field present, typed and bounded; completion_ids (optional) must hash to completion_hash."""
        if not isinstance(d, dict):
            raise EvidenceError("evidence must be an object")
        unknown = set(d) - {"rule", "min_len", "max_occurrences", "shares", "tokenizer", "completion_hash",
                            "datanets", "completion_ids"}
        if unknown:
            raise EvidenceError(f"evidence has unknown field(s) {sorted(unknown)[:5]}")
        shares = _list(d, "shares", 3, 3)
        ch = _str(d, "completion_hash")
        try:
            chash = bytes.fromhex(ch.removeprefix("0x"))
        except ValueError:
            chash = b""
        if len(chash) != 32 or not ch.startswith("0x"):
            raise EvidenceError("evidence completion_hash must be 0x + 32 bytes of hex")
        datanets = []
        for i, e in enumerate(_list(d, "datanets", 0, MAX_DATANETS)):
            if not isinstance(e, dict) or set(e) != {"datanet_id", "version_cid", "index_cid", "spans"}:
                raise EvidenceError(f"evidence datanets[{i}] must be an object of datanet_id, version_cid, "
                                    f"index_cid, spans")
            spans = []
            for j, s in enumerate(_list(e, "spans", 0, MAX_SPANS)):
                where = f"datanets[{i}].spans[{j}]"
                if not isinstance(s, list) or len(s) != 3 or not isinstance(s[2], list) \
                        or not 1 <= len(s[2]) <= MAX_OCCURRENCES:
                    raise EvidenceError(f"evidence {where} must be [start, length, [[contribution, row, offset], "
                                        f"...]] with 1..{MAX_OCCURRENCES} occurrences")
                occ = []
                for o in s[2]:
                    if not isinstance(o, list) or len(o) != 3:
                        raise EvidenceError(f"evidence {where}: an occurrence must be [contribution, row, offset]")
                    occ.append((_int(o[0], where, 1, 2**64 - 1), _int(o[1], where, 0, 2**32),
                                _int(o[2], where, 0, 2**40)))
                spans.append(SpanRef(_int(s[0], where, 0, MAX_COMPLETION_IDS),
                                     _int(s[1], where, 1, MAX_COMPLETION_IDS), tuple(occ)))
            datanets.append(DatanetEvidence(_int(e["datanet_id"], f"datanets[{i}].datanet_id", 0, 2**256 - 1),
                                            _str(e, "version_cid"), _str(e, "index_cid"), tuple(spans)))
        ids = None
        if "completion_ids" in d:
            raw = _list(d, "completion_ids", 0, MAX_COMPLETION_IDS)
            if not all(type(t) is int and 0 <= t <= MAX_TOKEN_ID for t in raw):
                raise EvidenceError(f"evidence completion_ids must be integers in 0..{MAX_TOKEN_ID}")
            ids = tuple(raw)
            if completion_hash(ids) != chash:
                raise EvidenceError("evidence completion_ids do not hash to its completion_hash")
        ev = cls(rule=_str(d, "rule"), min_len=_int(d.get("min_len"), "min_len", 1, MAX_COMPLETION_IDS),
                 max_occurrences=_int(d.get("max_occurrences"), "max_occurrences", 1, MAX_OCCURRENCES),
                 shares=tuple(_int(x, "shares", 0, 10_000) for x in shares),  # type: ignore[arg-type]
                 tokenizer=_str(d, "tokenizer"), completion_hash=chash, datanets=tuple(datanets),
                 completion_ids=ids)
        check(ev)
        return ev


def _int(v: Any, where: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise EvidenceError(f"evidence {where} must be an integer in {lo}..{hi}")
    return v


def _str(d: dict, key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not 0 < len(v) <= MAX_STR or not v.isprintable():
        raise EvidenceError(f"evidence {key} must be a printable string of 1..{MAX_STR} characters")
    return v


def _list(d: dict, key: str, lo: int, hi: int) -> list:
    v = d.get(key)
    if not isinstance(v, list) or not lo <= len(v) <= hi:
        raise EvidenceError(f"evidence {key} must be a list of {lo}..{hi} items")
    return v


def check(ev: Evidence) -> None:
    """Consistency that needs no index: spans inside the completion, sorted, at most max_occurrences each, lengths
    at least min_len, shares summing to 10,000, Datanets unique."""
    if sum(ev.shares) != 10_000:
        raise EvidenceError(f"evidence shares {ev.shares} must sum to 10000 bps")
    seen = set()
    for e in ev.datanets:
        if e.datanet_id in seen:
            raise EvidenceError(f"evidence names datanet {e.datanet_id} twice")
        seen.add(e.datanet_id)
        last = -1
        for s in e.spans:
            if s.start < last:
                raise EvidenceError(f"evidence spans of datanet {e.datanet_id} are not sorted by start")
            last = s.start
            if s.length < ev.min_len or len(s.occurrences) > ev.max_occurrences:
                raise EvidenceError(f"evidence span at {s.start} (length {s.length}, {len(s.occurrences)} "
                                    f"occurrences) breaks min_len {ev.min_len} / max_occurrences {ev.max_occurrences}")
            if ev.completion_ids is not None and s.start + s.length > len(ev.completion_ids):
                raise EvidenceError(f"evidence span at {s.start} (length {s.length}) runs past the completion "
                                    f"({len(ev.completion_ids)} tokens)")


def completion_hash(ids: Any) -> bytes:
    """keccak256 over the token ids as 4-byte big-endian words."""
    try:
        return keccak(b"".join(int(t).to_bytes(4, "big") for t in ids))
    except OverflowError:
        raise EvidenceError(f"a token id is outside 0..{MAX_TOKEN_ID}") from None


def evidence_hash(ev: Evidence) -> bytes:
    """keccak256 of the evidence's canonical JSON without the token ids (the completion is in by its hash)."""
    return keccak(json.dumps(ev.to_json(with_tokens=False), sort_keys=True, separators=(",", ":")).encode())
