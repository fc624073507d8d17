"""The price of a served request and its attribution vector, from what the chain says about the adapter.

What it does: `adapter_terms(w3, dep, cid)` reads an adapter's author, price per token and Datanet weights from
AdapterRegistry (the base model, cid None, has no author and no Datanets); `contributor_weights(w3, dep, id)`
reads a Datanet's weights as {contributor: weight} (its latest published version's, else declared sizes); `price_of` prices a request
((adapter price + node price) x tokens); `attribution_vector` turns the terms, the contributors and the configured
`Shares` (author / operator / contributors, in bps) into integer (recipient, weight) pairs that split a price
exactly as intended. Reads use a sync web3 `Web3` (call them from a thread in asyncio code).
`version_weights(w3, dep, id, n)` reads version n of a Datanet (manifest CID, per-contribution contributor and
weight): the static weights of span attribution (attribution/attribute.py applies the rule, attribution/evidence.py
documents it; `attribution_vector` is then called with the weights it chose per Datanet).
What it does not do: match spans (attribution.spans), cache chain reads (the caller does), or turn weights into
wei (attribution.split does, per batch).

Unattributable parts go to the author (else the operator): a Datanet with no accepted contribution yet, and
the author's share when there is no author (the base model). The contributors' part of an adapter is split
between its Datanets by their registered bps, and inside a Datanet by accepted weight / total accepted weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address

from openlora.attribution.deployment import Deployment
from openlora.attribution.eip712 import adapter_id
from openlora.attribution.errors import AttributionError
from openlora.attribution.receipts import checksum

BPS = 10_000
_MAX_EXACT_SCALE = 2**64  # above this common denominator, contributor weights are floored at 1e-18 precision
_FLOOR_SCALE = 10**18


class PricingError(AttributionError, ValueError):
    """The adapter is unknown or retired, or the shares are not a split of 10,000 bps."""


@dataclass(frozen=True)
class AdapterTerms:
    """What the chain says about an adapter (or the defaults for the base model: cid None)."""
    cid: str | None
    author: str | None
    price_per_token: int
    datanet_weights: tuple[tuple[int, int], ...]  # (datanetId, bps), bps summing to 10,000


BASE_MODEL = AdapterTerms(cid=None, author=None, price_per_token=0, datanet_weights=())


@dataclass(frozen=True)
class Shares:
    """How a request's price is split, in bps summing to 10,000 (a node setting)."""
    author_bps: int = 2_000
    operator_bps: int = 3_000
    contributors_bps: int = 5_000

    def __post_init__(self) -> None:
        parts = (self.author_bps, self.operator_bps, self.contributors_bps)
        if any(p < 0 for p in parts) or sum(parts) != BPS:
            raise PricingError(f"shares author/operator/contributors = {parts} bps must be >= 0 and sum to {BPS}")


def adapter_terms(w3: Any, dep: Deployment, cid: str | None) -> AdapterTerms:
    """The terms of adapter `cid` from AdapterRegistry; BASE_MODEL for None. Unknown or retired: PricingError."""
    if cid is None:
        return BASE_MODEL
    reg = dep.contract(w3, "AdapterRegistry")
    aid = adapter_id(cid)
    if not reg.functions.isActive(aid).call():
        try:
            reg.functions.getAdapter(aid).call()
        except Exception:  # noqa: BLE001 - web3 raises ContractLogicError for UnknownAdapter
            raise PricingError(f"adapter {cid} is not registered in AdapterRegistry "
                               f"{dep.address('AdapterRegistry')}") from None
        raise PricingError(f"adapter {cid} is retired: nodes no longer serve it")
    a = reg.functions.getAdapter(aid).call()
    # (author, retired, registeredAt, pricePerToken, cid, baseModel, datanetIds, weightsBps)
    return AdapterTerms(cid=cid, author=to_checksum_address(a[0]), price_per_token=int(a[3]),
                        datanet_weights=tuple((int(d), int(w)) for d, w in zip(a[6], a[7])))


def contributor_weights(w3: Any, dep: Deployment, datanet_id: int) -> dict[str, int]:
    """{contributor: summed weight} of one Datanet: the weights of its latest published version (derived from
    content, docs/datanets.md); a Datanet that never published a version falls back to the accepted
    contributions' declared sizes (pending/rejected weigh 0)."""
    reg = dep.contract(w3, "DatanetRegistry")
    out: dict[str, int] = {}
    latest = int(reg.functions.versionCount(datanet_id).call())
    if latest:
        # (manifestCid, publishedAt, totalWeight, contributionIds, weights)
        version = reg.functions.getVersion(datanet_id, latest).call()
        pairs = [(int(i), int(w)) for i, w in zip(version[3], version[4])]
    else:
        count = int(reg.functions.getDatanet(datanet_id).call()[2])
        pairs = [(i, int(reg.functions.weightOf(datanet_id, i).call())) for i in range(1, count + 1)]
    for cid_id, w in pairs:
        if w:
            who = to_checksum_address(reg.functions.getContribution(datanet_id, cid_id).call()[0])
            out[who] = out.get(who, 0) + w
    return out


def price_of(terms: AdapterTerms, node_price_per_token: int, prompt_tokens: int, completion_tokens: int) -> int:
    """(adapter price per token + node price per token) x (prompt + completion tokens), in wei."""
    if min(node_price_per_token, prompt_tokens, completion_tokens) < 0:
        raise PricingError("prices and token counts cannot be negative")
    return (terms.price_per_token + node_price_per_token) * (prompt_tokens + completion_tokens)


def attribution_vector(terms: AdapterTerms, contributors_by_datanet: dict[int, dict[str, int]], operator: str,
                       shares: Shares) -> tuple[tuple[str, int], ...]:
    """Integer (recipient, weight) pairs, sorted by address, merged per recipient and reduced by their gcd.

    A price p is split as p * weight / sum(weights). Exact when the Datanets' total weights have a small common
    multiple (always so on the devnet); otherwise contributor weights are floored at 1e-18 relative precision.
    """
    operator = checksum(operator)     # memoised: this runs for every served request, on the same few addresses
    fallback = checksum(terms.author) if terms.author else operator
    totals = {d: sum(contributors_by_datanet.get(d, {}).values()) for d, _ in terms.datanet_weights}
    scale = 1
    for t in totals.values():
        if t:
            scale = math.lcm(scale, t)
    exact = scale <= _MAX_EXACT_SCALE
    if not exact:
        scale = _FLOOR_SCALE
    unit = BPS * scale  # weight of "all of one share"
    out: dict[str, int] = {}

    def add(who: str, w: int) -> None:
        if w:
            key = checksum(who)
            out[key] = out.get(key, 0) + w

    add(operator, shares.operator_bps * unit)
    add(fallback, shares.author_bps * unit)
    if not terms.datanet_weights:
        add(fallback, shares.contributors_bps * unit)
    for d, bps in terms.datanet_weights:
        part = shares.contributors_bps * bps * scale  # this Datanet's share of the contributors' part
        if not totals[d]:
            add(fallback, part)
            continue
        given = 0
        for who, w in sorted(contributors_by_datanet[d].items()):
            share = part * w // totals[d]
            add(who, share)
            given += share
        add(fallback, part - given)  # zero when exact
    g = 0
    for w in out.values():
        g = math.gcd(g, w)
    return tuple(sorted(((k, v // g) for k, v in out.items()), key=lambda x: int(x[0], 16)))


@dataclass(frozen=True)
class VersionWeights:
    """A published Datanet version as the chain records it: per contribution, its contributor and static weight."""
    datanet_id: int
    version: int
    manifest_cid: str
    owners: dict[int, str]       # contribution id -> contributor (checksummed)
    weights: dict[int, int]      # contribution id -> weight (derived from content, docs/datanets.md)

    def by_contributor(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cid_id, w in self.weights.items():
            if w:
                out[self.owners[cid_id]] = out.get(self.owners[cid_id], 0) + w
        return out


def version_weights(w3: Any, dep: Deployment, datanet_id: int, version: int) -> VersionWeights:
    """Version `version` of Datanet `datanet_id` as published on chain: its manifest CID, and per contribution its
    contributor and static weight. PricingError when the Datanet has no such version."""
    reg = dep.contract(w3, "DatanetRegistry")
    if not 1 <= version <= int(reg.functions.versionCount(datanet_id).call()):
        raise PricingError(f"datanet {datanet_id} has no published version {version}")
    v = reg.functions.getVersion(datanet_id, version).call()   # (manifestCid, publishedAt, totalWeight, ids, weights)
    ids = [int(i) for i in v[3]]
    owners = {i: checksum(reg.functions.getContribution(datanet_id, i).call()[0]) for i in ids}
    return VersionWeights(datanet_id, version, v[0], owners, {i: int(w) for i, w in zip(ids, v[4])})
