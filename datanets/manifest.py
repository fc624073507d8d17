"""Version manifests: which contributions a Datanet version holds, their rows and weights, content-addressed.

What it does: `build(...)` reads each accepted contribution from blocks (record, file, then every row by its own
CID, all verified), counts each row's tokens under a named tokenizer, flags duplicate rows (exact and near, dedup.py)
in contribution-id order (a row that repeats an earlier row of the same version is flagged, whoever contributed it
first), and writes a manifest: canonical JSON (sorted keys, no floats) of

    {"format": "openlora-datanet-version/1", "chain": {"chain_id", "registry"}, "datanet_id", "version",
     "tokenizer", "dedup": {shingle, num_perm, bands, threshold_bps},
     "contributions": [{"id", "contributor", "cid", "license", "data_format", "weight",
                        "rows": [{"cid", "tokens"[, "duplicate_of", "duplicate", "similarity_bps"]}]}],
     "total_weight"}

A contribution's weight is the sum of its non-duplicate rows' tokens; `total_weight` is the sum of the weights.
`add(manifest, blockstore)` stores it (its CID is the version's id on chain). `verify(cid, get)` re-reads the
manifest and every block it names, recomputes everything with the manifest's own tokenizer and dedup parameters,
and raises VerificationError naming exactly what differs (or a block that is missing or corrupt).
What it does not do: compare with the chain (registry.py does: manifest CID, weights and contributors on chain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from openlora.content.importer import add_bytes
from openlora.datanets.contribution import Limits, canonical_json, load, read_file
from openlora.datanets.dedup import DedupIndex, DedupParams
from openlora.datanets.errors import DatanetError, VerificationError
from openlora.datanets.tokenize import WORDS_V1, check_tokenizer, count_tokens
from openlora.safejson import UnsafeJSONError, loads as safe_loads

MANIFEST_FORMAT = "openlora-datanet-version/1"
MAX_MANIFEST_BYTES = 256 << 20


@dataclass(frozen=True)
class Accepted:
    """An accepted contribution as the chain lists it."""
    id: int
    contributor: str
    cid: str


def build(datanet_id: int, version: int, accepted: list[Accepted], get: Callable, *, chain_id: int = 0,
          registry: str = "", tokenizer: str = WORDS_V1, dedup: DedupParams = DedupParams(),
          limits: Limits = Limits(), keep_order: bool = False) -> dict[str, Any]:
    """The manifest of `accepted` (in contribution-id order unless keep_order). See the module docstring."""
    check_tokenizer(tokenizer)
    index = DedupIndex(dedup)
    entries = []
    for a in (accepted if keep_order else sorted(accepted, key=lambda x: x.id)):
        loaded = load(a.cid, get, limits)
        rows, weight = [], 0
        for n, r in enumerate(loaded.prepared.rows):
            try:
                stored = read_file(r.cid, get, limits.max_row_bytes)
            except DatanetError as e:
                raise VerificationError(f"contribution #{a.id} ({a.cid}) row {n}: {e}") from None
            if stored != r.data:  # cannot happen when the CID matched; kept as a guard against importer bugs
                raise VerificationError(f"contribution #{a.id} row {n} ({r.cid}): stored bytes differ from the file's")
            tokens = count_tokens(tokenizer, r.text)
            row: dict[str, Any] = {"cid": r.cid, "tokens": tokens}
            dup = index.check_and_add(r.cid, r.text)
            if dup is None:
                weight += tokens
            else:
                row.update(duplicate=dup.kind, duplicate_of=dup.of, similarity_bps=dup.similarity_bps)
            rows.append(row)
        entries.append({"id": a.id, "contributor": a.contributor, "cid": a.cid, "license": loaded.license,
                        "data_format": loaded.prepared.format, "weight": weight, "rows": rows})
    return {"format": MANIFEST_FORMAT, "chain": {"chain_id": chain_id, "registry": registry},
            "datanet_id": datanet_id, "version": version, "tokenizer": tokenizer, "dedup": dedup.as_dict(),
            "contributions": entries, "total_weight": sum(e["weight"] for e in entries)}


def add(manifest: dict[str, Any], blockstore: Any) -> str:
    """Store the manifest's canonical JSON in `blockstore`; returns its CID."""
    return str(add_bytes(canonical_json(manifest), blockstore.put_trusted).cid)


def read(cid: str, get: Callable) -> dict[str, Any]:
    try:
        m = safe_loads(read_file(cid, get, MAX_MANIFEST_BYTES), max_bytes=MAX_MANIFEST_BYTES, max_depth=8)
    except UnsafeJSONError as e:
        raise VerificationError(f"manifest {cid} is not JSON: {e}") from None
    except DatanetError as e:
        raise VerificationError(f"manifest {e}") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise VerificationError(f"{cid} is not a {MANIFEST_FORMAT} manifest")
    return m


def _diff(path: str, claimed: Any, actual: Any, out: list[str]) -> None:
    if isinstance(claimed, dict) and isinstance(actual, dict):
        for k in sorted(set(claimed) | set(actual)):
            _diff(f"{path}.{k}" if path else k, claimed.get(k), actual.get(k), out)
    elif isinstance(claimed, list) and isinstance(actual, list):
        if len(claimed) != len(actual):
            out.append(f"{path}: manifest lists {len(claimed)}, content gives {len(actual)}")
        for i, (c, a) in enumerate(zip(claimed, actual)):
            label = f"{path}[{i}]"
            if isinstance(a, dict) and "id" in a and "cid" in a:
                label = f"{path}[{i}] (#{a['id']} {a['cid']})"
            _diff(label, c, a, out)
    elif claimed != actual or type(claimed) is not type(actual):
        out.append(f"{path}: manifest says {claimed!r}, content gives {actual!r}")


def verify(cid: str, get: Callable, limits: Limits = Limits()) -> dict[str, Any]:
    """Recompute manifest `cid` from its content; returns the manifest or raises VerificationError (what differs)."""
    m = read(cid, get)
    try:
        accepted = [Accepted(int(c["id"]), str(c["contributor"]), str(c["cid"])) for c in m["contributions"]]
        d = m["dedup"]
        params = DedupParams(int(d["shingle"]), int(d["num_perm"]), int(d["bands"]), int(d["threshold_bps"]))
        expected = build(int(m["datanet_id"]), int(m["version"]), accepted, get, chain_id=int(m["chain"]["chain_id"]),
                         registry=str(m["chain"]["registry"]), tokenizer=str(m["tokenizer"]), dedup=params,
                         limits=limits)
    except VerificationError:
        raise
    except DatanetError as e:
        raise VerificationError(f"manifest {cid}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise VerificationError(f"manifest {cid} is malformed: {type(e).__name__}: {e}") from None
    diffs: list[str] = []
    _diff("", m, expected, diffs)
    if diffs:
        more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
        raise VerificationError(f"manifest {cid} does not match its content: {'; '.join(diffs[:5])}{more}")
    return m
