"""Per-request attribution and its re-derivation: one function computes, the node and every verifier call it.

What it does: `attribute(...)` takes the adapter's terms, the Datanet versions it was trained on (with their static
weights from chain), a span index per version, the completion's token ids, the span parameters and the shares, and
returns the attribution vector and the `Evidence` that explains it (the rule: attribution.evidence). `verify(...)`
re-derives a receipt from public data (chain, version content, the base tokenizer through the caller's index
provider) and returns exactly what differs (an empty list: match). `lineage_versions` reads which Datanet versions
an adapter was trained on (attribution.lineage).
What it does not do: tokenize or build indexes (the caller passes `index_for`; node/attribution_index.py builds
and caches them), read receipt files (receipts.py parses, node/commands/attribution.py fetches), or sign.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address

from openlora.attribution import pricing
from openlora.attribution.evidence import RULE, DatanetEvidence, Evidence, EvidenceError, SpanRef, completion_hash
from openlora.attribution.receipts import Receipt, checksum, recover_signer
from openlora.attribution.spans import Occurrence, Span, SpanParams, contribution_weights


def span_refs(spans: Any) -> tuple[SpanRef, ...]:
    """attribution.spans Span objects -> SpanRef, sorted by (start, length)."""
    out = [SpanRef(int(s.start), int(s.length),
                   tuple(sorted((int(o.contribution), int(o.row), int(o.offset)) for o in s.occurrences)))
           for s in spans]
    return tuple(sorted(out, key=lambda s: (s.start, s.length)))


def to_spans(refs: tuple[SpanRef, ...]) -> list:
    """SpanRef -> attribution.spans Span (for contribution_weights)."""
    return [Span(r.start, r.length, tuple(Occurrence(c, row, off) for c, row, off in r.occurrences)) for r in refs]


def span_weights(refs: tuple[SpanRef, ...]) -> dict[int, int]:
    """{contribution id: exact integer weight} of the spans (attribution.spans.contribution_weights)."""
    if not refs:
        return {}
    return {int(k): int(v) for k, v in contribution_weights(to_spans(refs)).items() if v}


def contributors_by_datanet(ev: Evidence | None, static: Mapping[int, Mapping[str, int]],
                            owners: Mapping[int, Mapping[int, str]]) -> dict[int, dict[str, int]]:
    """THE RULE: per Datanet, {contributor address: weight} — span weights when the evidence has spans for it,
    else `static[d]`. `owners[d]` maps contribution id -> contributor address (the version's contributions)."""
    out = {d: dict(w) for d, w in static.items()}
    for e in (ev.datanets if ev is not None else ()):
        weights = span_weights(e.spans)
        if not weights:
            continue
        by_addr: dict[str, int] = {}
        for cid_id, w in weights.items():
            who = owners.get(e.datanet_id, {}).get(cid_id)
            if who is None:
                raise EvidenceError(f"a span names contribution #{cid_id}, which datanet {e.datanet_id}'s version "
                                    f"{e.version_cid} does not hold")
            by_addr[who] = by_addr.get(who, 0) + w
        out[e.datanet_id] = by_addr
    return out


_CIDS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def index_cid(index: Any) -> str:
    """index.cid(), remembered per index object: it hashes the whole serialised index (23 ms at 1M tokens), and the
    same loaded index answers every request."""
    try:
        return _CIDS[index]
    except (KeyError, TypeError):
        pass
    cid = str(index.cid())
    try:
        _CIDS[index] = cid
    except TypeError:
        pass
    return cid


# index_for(datanet_id, version manifest CID) -> attribution.spans.SpanIndex over that version's rows, tokenized
# with the base model's tokenizer
IndexFor = Callable[[int, str], Any]


@dataclass(frozen=True)
class Attributed:
    vector: tuple[tuple[str, int], ...]
    evidence: Evidence
    contributors: dict[int, dict[str, int]]      # per Datanet: {contributor: weight} the vector was built from


def attribute(terms: pricing.AdapterTerms, versions: Mapping[int, pricing.VersionWeights], index_for: IndexFor,
              completion_ids: Sequence[int], *, min_len: int, max_occurrences: int, shares: pricing.Shares,
              tokenizer: str, operator: str, latest: Mapping[int, Mapping[str, int]] | None = None) -> Attributed:
    """The vector and evidence of one completion (see attribution.evidence for the rule). `versions` holds the
    version each of the adapter's Datanets was trained on; a Datanet without one (no lineage on chain) goes by
    `latest[d]` (its latest version's weights, as before span attribution) and has no evidence entry."""
    params = SpanParams(min_len=min_len, max_occurrences=max_occurrences)
    ids = tuple(int(t) for t in completion_ids)
    entries, static, owners = [], {}, {}
    for d, _bps in terms.datanet_weights:
        v = versions.get(d)
        if v is None:
            static[d] = dict((latest or {}).get(d, {}))
            continue
        index = index_for(d, v.manifest_cid)
        spans = index.find_spans(list(ids), params) if ids else []
        entries.append(DatanetEvidence(d, v.manifest_cid, index_cid(index), span_refs(spans)))
        static[d], owners[d] = v.by_contributor(), v.owners
    ev = Evidence(rule=RULE, min_len=min_len, max_occurrences=max_occurrences,
                  shares=(shares.author_bps, shares.operator_bps, shares.contributors_bps), tokenizer=tokenizer,
                  completion_hash=completion_hash(ids), datanets=tuple(entries), completion_ids=ids)
    contributors = contributors_by_datanet(ev, static, owners)
    return Attributed(pricing.attribution_vector(terms, contributors, operator, shares), ev, contributors)


def registered_terms(w3: Any, dep: Any, cid: str | None) -> pricing.AdapterTerms:
    """An adapter's terms as registered, retired or not (a receipt of a since-retired adapter stays checkable)."""
    if cid is None:
        return pricing.BASE_MODEL
    from openlora.attribution.eip712 import adapter_id
    try:
        a = dep.contract(w3, "AdapterRegistry").functions.getAdapter(adapter_id(cid)).call()
    except Exception:  # noqa: BLE001 - ContractLogicError for UnknownAdapter
        raise pricing.PricingError(f"adapter {cid} is not registered in AdapterRegistry") from None
    return pricing.AdapterTerms(cid=cid, author=to_checksum_address(a[0]), price_per_token=int(a[3]),
                                datanet_weights=tuple((int(d), int(w)) for d, w in zip(a[6], a[7])))


def lineage_versions(w3: Any, dep: Any, cid: str | None) -> dict[int, pricing.VersionWeights]:
    """{datanet id: the version it was trained on (manifest CID, owners, static weights)} from the adapter's
    lineage on chain (attribution.lineage); {} when it has none (registered without lineage, or the base model)."""
    if cid is None:
        return {}
    from openlora.attribution.lineage import read_lineage
    lin = read_lineage(w3, dep, cid)
    if lin is None:
        return {}
    return {d: pricing.version_weights(w3, dep, d, v) for d, v in lin.datanet_versions}


def verify(r: Receipt, w3: Any, dep: Any, index_for: IndexFor, *,
           completion_ids: Sequence[int] | None = None) -> list[str]:
    """Everything that differs between receipt `r` and what public data gives (empty: match). `completion_ids`
    supplies the tokens when the receipt carries only their hash."""
    diffs: list[str] = []
    try:
        signer = recover_signer(r)
        if signer != checksum(r.node):
            diffs.append(f"node signature: recovers {signer}, the receipt's node is {r.node}")
    except Exception as e:  # noqa: BLE001 - a malformed signature is a difference, not a crash
        diffs.append(f"node signature: {e}")
    terms = registered_terms(w3, dep, r.adapter_cid)
    ev = r.evidence
    if ev is None:
        if not terms.datanet_weights:       # the base model: everything to the node, whatever its shares
            want = pricing.attribution_vector(terms, {}, r.node, pricing.Shares())
            if tuple(r.attribution) != want:
                diffs.append(f"attribution: receipt {_fmt(r.attribution)}, recomputed {_fmt(want)}")
        elif lineage_versions(w3, dep, r.adapter_cid):
            diffs.append("the adapter has a lineage on chain, but the receipt carries no span evidence: the node "
                         "attributed it with static weights (its version's rows were not available to it?)")
        else:   # an adapter without lineage: the static rule; its weights depend on the node's shares (not
            # recorded), so only who may be paid is checked
            allowed = {checksum(r.node)} | ({checksum(terms.author)} if terms.author else set())
            for d, _ in terms.datanet_weights:
                allowed |= set(pricing.contributor_weights(w3, dep, d))
            strangers = sorted({a for a, _ in r.attribution} - allowed)
            if strangers:
                diffs.append(f"attribution pays {', '.join(strangers)}, neither the node, the author nor a "
                             f"contributor of the adapter's Datanets")
        return diffs
    ids = ev.completion_ids if ev.completion_ids is not None else \
        (tuple(completion_ids) if completion_ids is not None else None)
    if ids is None:
        return diffs + ["the receipt carries only the completion's hash: give the published receipt file, which "
                        "holds its token ids"]
    if completion_hash(ids) != ev.completion_hash:
        return diffs + ["completion token ids do not hash to the evidence's completion_hash"]
    if len(ids) != r.completion_tokens:
        diffs.append(f"completion_tokens: receipt says {r.completion_tokens}, the evidence holds {len(ids)} ids")
    if ev.rule != RULE:
        return diffs + [f"rule: {ev.rule!r} is not one this verifier knows ({RULE!r})"]
    given = getattr(index_for, "tokenizer", None)      # the verifier's base tokenizer identity, when it says
    if given is not None and given != ev.tokenizer:
        return diffs + [f"tokenizer: the receipt was attributed with {ev.tokenizer}, the base model given here has "
                        f"{given} (give the adapter's base model with --base)"]
    try:
        shares = pricing.Shares(*ev.shares)
    except pricing.PricingError as e:
        return diffs + [f"shares: {e}"]
    versions = {d: v for d, v in lineage_versions(w3, dep, r.adapter_cid).items() if d in dict(terms.datanet_weights)}
    claimed = {e.datanet_id: e for e in ev.datanets}
    for d, _ in terms.datanet_weights:
        have = versions[d].manifest_cid if d in versions else None
        if have != (claimed[d].version_cid if d in claimed else None):
            diffs.append(f"datanet {d}: the receipt uses version {claimed[d].version_cid if d in claimed else None}, "
                         f"the adapter's lineage on chain names {have}")
    extra = set(claimed) - {d for d, _ in terms.datanet_weights}
    if extra:
        diffs.append(f"evidence names datanet(s) {sorted(extra)} that the adapter is not trained on")
    latest = {d: pricing.contributor_weights(w3, dep, d) for d, _ in terms.datanet_weights if d not in versions}
    built: dict[int, Any] = {}

    def index(d: int, cid: str) -> Any:
        built[d] = index_for(d, cid)
        return built[d]
    try:
        again = attribute(terms, versions, index, ids, min_len=ev.min_len, max_occurrences=ev.max_occurrences,
                          shares=shares, tokenizer=ev.tokenizer, operator=r.node, latest=latest)
    except EvidenceError as e:
        return diffs + [str(e)]
    mine = {e.datanet_id: e for e in again.evidence.datanets}
    for d in sorted(set(mine) & set(claimed)):
        a, b = claimed[d], mine[d]
        if a.index_cid != b.index_cid:
            diffs.append(f"datanet {d}: index CID {a.index_cid} in the receipt, {b.index_cid} rebuilt from version "
                         f"{b.version_cid} with tokenizer {ev.tokenizer}")
        if a.spans != b.spans:
            diffs.append(f"datanet {d} spans: " + _span_diff(a.spans, b.spans))
    if tuple(r.attribution) != again.vector:
        diffs.append(f"attribution: receipt {_fmt(r.attribution)}, recomputed {_fmt(again.vector)}")
    return diffs


def _fmt(vector: Sequence[tuple[str, int]]) -> str:
    total = sum(w for _, w in vector) or 1
    return "[" + ", ".join(f"{a} {w * 10_000 // total / 100:.2f}%" for a, w in vector) + "]"


def _span_diff(claimed: Sequence[Any], actual: Sequence[Any]) -> str:
    def show(s: Any) -> str:
        occ = ", ".join(f"#{c} row {row} offset {off}" for c, row, off in s.occurrences[:3])
        more = f" +{len(s.occurrences) - 3}" if len(s.occurrences) > 3 else ""
        return f"[{s.start}, +{s.length}) at {occ}{more}"
    only_c = [s for s in claimed if s not in actual]
    only_a = [s for s in actual if s not in claimed]
    parts = []
    if only_c:
        parts.append(f"the receipt claims {len(only_c)} span(s) not found: " + "; ".join(show(s) for s in only_c[:3]))
    if only_a:
        parts.append(f"{len(only_a)} span(s) found but not in the receipt: " + "; ".join(show(s) for s in only_a[:3]))
    return " / ".join(parts)
