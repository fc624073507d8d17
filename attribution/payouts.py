"""What an address has been credited by settled batches, and the claims to collect it, read from the chain alone.

What it does: scans `BatchSettled` events, reads each batch's credit words back from the calldata of its
`settleBatch` transaction, rebuilds the credits tree (checking it against the root the contract stored), and
returns a `Payout` per batch that credits the address, with its Merkle proof and whether it was claimed.
`claim_items(payouts)` gives the `claimMany` argument for the unclaimed ones. `contributor_report(...)` breaks an
address's earnings down per Datanet and per contribution, matched-span share vs static share, with the receipts
behind them (from the published receipts and their evidence): the CLI's `payouts` and the dashboard both call it.
What it does not do: send transactions, or read batches settled through another contract (a relayer or a
multisig): their calldata is not a direct `settleBatch` call, and they are reported in `skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

from eth_utils import to_checksum_address

from openlora.attribution.deployment import Deployment
from openlora.attribution.merkle import MAX_CREDIT, CreditTree


@dataclass(frozen=True)
class Payout:
    batch_id: bytes
    node: str
    block: int
    tx_hash: str
    amount: int
    proof: tuple[bytes, ...]
    claimed: bool


@dataclass
class PayoutReport:
    recipient: str
    payouts: list[Payout] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # tx hashes of batches that could not be read back

    @property
    def earned(self) -> int:
        return sum(p.amount for p in self.payouts)

    @property
    def claimable(self) -> int:
        return sum(p.amount for p in self.payouts if not p.claimed)


def credits_of_transaction(settlement: Any, tx_input: bytes) -> dict[str, int] | None:
    """The credit map of a direct `settleBatch` call, or None when the input is something else."""
    try:
        fn, args = settlement.decode_function_input(tx_input)
    except ValueError:
        return None
    if fn.fn_name != "settleBatch":
        return None
    out: dict[str, int] = {}
    for word in args["credits"]:
        w = int.from_bytes(word, "big")
        out[to_checksum_address((w >> 96).to_bytes(20, "big"))] = w & MAX_CREDIT
    return out


def payouts_of(w3: Any, dep: Deployment, recipient: str, from_block: int = 0) -> PayoutReport:
    """Every settled batch since `from_block` that credits `recipient` (web3.py sync `Web3`)."""
    recipient = to_checksum_address(recipient)
    st = dep.contract(w3, "Settlement")
    report = PayoutReport(recipient)
    for log in st.events.BatchSettled().get_logs(from_block=from_block):
        tx_hash = log["transactionHash"]
        credits = credits_of_transaction(st, w3.eth.get_transaction(tx_hash)["input"])
        if credits is None:
            report.skipped.append(tx_hash.to_0x_hex())
            continue
        tree = CreditTree.build(credits)
        if tree.root != log["args"]["creditsRoot"]:
            report.skipped.append(tx_hash.to_0x_hex())
            continue
        if recipient not in credits:
            continue
        amount, proof = tree.proof_for(recipient)
        batch_id = log["args"]["batchId"]
        report.payouts.append(Payout(
            batch_id=bytes(batch_id), node=log["args"]["node"], block=log["blockNumber"],
            tx_hash=tx_hash.to_0x_hex(), amount=amount, proof=tuple(proof),
            claimed=st.functions.claimed(batch_id, recipient).call()))
    return report


def claim_items(payouts: list[Payout]) -> list[tuple[bytes, int, list[bytes]]]:
    """The `items` argument of `Settlement.claimMany(recipient, items)` for the unclaimed payouts."""
    return [(p.batch_id, p.amount, list(p.proof)) for p in payouts if not p.claimed]


# ---- per Datanet and per contribution: what an address earned through matched spans and through static shares ----

def _components(r: Any, terms: Any, versions: dict, who: str) -> dict[tuple, Fraction]:
    """{(kind, datanet, contribution): fraction of receipt r's vector} for address `who`. kind: "author",
    "operator", "span", "static"; contribution None when the receipt has no evidence (its static vector was built
    from a version nobody recorded)."""
    from openlora.attribution.attribute import span_weights
    from openlora.attribution.pricing import BPS, Shares
    ev = r.evidence
    shares = Shares(*ev.shares) if ev is not None else None
    out: dict[tuple, Fraction] = {}
    total = sum(w for _, w in r.attribution)
    mine = sum(w for a, w in r.attribution if a == who)
    if not total or not mine:
        return out
    if shares is None:            # no evidence: roles and Datanets cannot be told apart exactly; one static part
        out[("static", None, None)] = Fraction(mine, total)
        return out
    fallback = terms.author or r.node
    if who == r.node:
        out[("operator", None, None)] = Fraction(shares.operator_bps, BPS)
    if who == fallback:
        out[("author", None, None)] = out.get(("author", None, None), 0) + Fraction(shares.author_bps, BPS)
    entries = {e.datanet_id: e for e in ev.datanets}
    for d, bps in terms.datanet_weights:
        part = Fraction(shares.contributors_bps * bps, BPS * BPS)
        e, v = entries.get(d), versions.get(d)
        weights = span_weights(e.spans) if e is not None else {}
        kind = "span" if weights else "static"
        if not weights and v is not None:
            weights = {c: w for c, w in v.weights.items() if w}
        owners = v.owners if v is not None else {}
        tot = sum(weights.values())
        if not tot:
            if who == fallback:
                out[("author", None, None)] = out.get(("author", None, None), 0) + part
            continue
        for c, w in weights.items():
            if owners.get(c) == who:
                out[(kind, d, c)] = part * Fraction(w, tot)
    return out


def _apportion(amount: int, parts: dict[tuple, Fraction]) -> dict[tuple, int]:
    """`amount` split by `parts` exactly (floors; the remainder to the largest part)."""
    s = sum(parts.values())
    if not parts or not s:
        return {}
    out = {k: int(amount * f / s) for k, f in parts.items()}
    out[max(parts, key=lambda k: (parts[k], str(k)))] += amount - sum(out.values())
    return out


def contributor_report(w3: Any, dep: Deployment, address: str, read_uri: Callable[[str], str | bytes],
                       from_block: int | None = None) -> dict[str, Any]:
    """What `address` earned in settled batches, per Datanet and per contribution, through matched spans and
    through static shares, with the receipts behind it. JSON-able; every amount is a decimal string of wei.

    Amounts per receipt are the address's exact share of that receipt's price (split_exact by its attribution
    vector, remainder to the node: what settlement credits before the protocol fee); inside one receipt, that
    share is apportioned to its parts (author, operator, each contribution by span or static weight) in proportion
    to the rule's fractions, floors with the remainder to the largest part, so the parts sum to it exactly. The
    batches' net credits (after the protocol fee) come from the chain (`payouts_of`). A batch whose receipts file
    cannot be read here is listed in `unreadable`.
    """
    from openlora.attribution.attribute import registered_terms
    from openlora.attribution.audit import AuditError, find_batch, parse_published
    from openlora.attribution.pricing import PricingError, version_weights
    from openlora.attribution.split import split_exact
    who = to_checksum_address(address)
    rep = payouts_of(w3, dep, who, from_block=dep.block if from_block is None else from_block)
    terms_cache: dict[Any, Any] = {}
    version_cache: dict[tuple[int, str], Any] = {}

    def versions_of(r: Any) -> dict:
        out = {}
        for e in (r.evidence.datanets if r.evidence is not None else ()):
            key = (e.datanet_id, e.version_cid)
            if key not in version_cache:
                version_cache[key] = _version_by_cid(w3, dep, e.datanet_id, e.version_cid, version_weights)
            if version_cache[key] is not None:
                out[e.datanet_id] = version_cache[key]
        return out

    by_datanet: dict[str, dict[str, Any]] = {}
    roles = {"author": 0, "operator": 0}
    receipts_out, unreadable = [], []
    for p in rep.payouts:
        try:
            log = find_batch(w3, dep, p.batch_id)
            _, receipts = parse_published(read_uri(log["args"]["receiptsUri"]), log["args"]["receiptsUri"])
        except (AuditError, OSError, ValueError) as e:
            unreadable.append({"batch_id": "0x" + p.batch_id.hex(), "error": str(e)[:300]})
            continue
        for r in receipts:
            gross = split_exact(r.price, dict(_merge(r.attribution)), r.node).get(who, 0) if r.price else 0
            if r.adapter_cid not in terms_cache:
                try:
                    terms_cache[r.adapter_cid] = registered_terms(w3, dep, r.adapter_cid)
                except PricingError:
                    terms_cache[r.adapter_cid] = None
            terms = terms_cache[r.adapter_cid]
            parts = _components(r, terms, versions_of(r), who) if terms is not None and gross else {}
            amounts = _apportion(gross, parts)
            if not gross and not any(who == a for a, _ in r.attribution):
                continue
            kinds = {"span": 0, "static": 0, "author": 0, "operator": 0}
            for (kind, d, c), amt in amounts.items():
                kinds[kind] += amt
                if kind in roles:
                    roles[kind] += amt
                    continue
                dn = by_datanet.setdefault(str(d) if d is not None else "unknown",
                                           {"span": 0, "static": 0, "contributions": {}})
                dn[kind] += amt
                cn = dn["contributions"].setdefault(str(c) if c is not None else "unknown",
                                                    {"span": 0, "static": 0, "receipts": []})
                cn[kind] += amt
                if r.request_id not in cn["receipts"]:
                    cn["receipts"].append(r.request_id)
            mine_c = {c for (kind, d, c) in amounts if kind == "span"}
            spans = []
            for e in (r.evidence.datanets if r.evidence is not None else ()):
                for s in e.spans:
                    if any(o[0] in mine_c for o in s.occurrences):
                        spans.append({"datanet_id": e.datanet_id, "start": s.start, "length": s.length,
                                      "occurrences": [list(o) for o in s.occurrences]})
            receipts_out.append({
                "request_id": r.request_id, "batch_id": "0x" + p.batch_id.hex(), "adapter_cid": r.adapter_cid,
                "price": str(r.price), "gross": str(gross), **{k: str(v) for k, v in kinds.items()},
                "evidence": r.evidence is not None, "spans": spans,
                "completion_ids": list(r.evidence.completion_ids) if r.evidence is not None and
                r.evidence.completion_ids is not None else None})
    for dn in by_datanet.values():
        dn["span"], dn["static"] = str(dn["span"]), str(dn["static"])
        for cn in dn["contributions"].values():
            cn["span"], cn["static"] = str(cn["span"]), str(cn["static"])
    claimed = sum(p.amount for p in rep.payouts if p.claimed)
    return {
        "address": who, "settled": str(rep.earned), "claimed": str(claimed), "claimable": str(rep.claimable),
        "batches": [{"batch_id": "0x" + p.batch_id.hex(), "block": p.block, "tx_hash": p.tx_hash,
                     "amount": str(p.amount), "claimed": p.claimed} for p in rep.payouts],
        "gross": {"author": str(roles["author"]), "operator": str(roles["operator"]),
                  "span": str(sum(int(d["span"]) for d in by_datanet.values())),
                  "static": str(sum(int(d["static"]) for d in by_datanet.values()))},
        "by_datanet": by_datanet, "receipts": receipts_out, "unreadable": unreadable, "skipped": rep.skipped}


def _merge(vector: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for a, w in vector:
        out[a] = out.get(a, 0) + w
    return out


def _version_by_cid(w3: Any, dep: Deployment, datanet_id: int, manifest_cid: str, version_weights: Any) -> Any:
    reg = dep.contract(w3, "DatanetRegistry")
    for n in range(int(reg.functions.versionCount(datanet_id).call()), 0, -1):
        if reg.functions.getVersion(datanet_id, n).call()[0] == manifest_cid:
            return version_weights(w3, dep, datanet_id, n)
    return None
