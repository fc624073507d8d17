"""The dashboard's sources and its contributor view, as JSON-able dicts (the curator's: node/dashboard_curator.py).

What it does: reads public chain data (the token's symbol and decimals, settled credits and claims through
attribution.payouts, the published receipts of the batches that credit an address, from this node's own store
only) and the node's own receipt store, and returns plain dicts in which every amount is a decimal string (never a
float, never a JSON number). The functions here are blocking (chain reads,
database reads, blockstore reads): node/dashboard.py runs them in worker threads, one cache in front.
What it does not do: speak HTTP (node/dashboard.py), send transactions (a claim is sent by the visitor's wallet or
by `openlora-node claim`), or decide who is paid (the receipts and the chain say it; the static per-Datanet and
per-contribution breakdown below is a read of the same weights pricing used).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address

from openlora.content.errors import ContentError
from openlora.node.errors import NodeError, RequestRejected
from openlora.safejson import loads as safe_loads

MAX_PUBLISHED_BYTES = 64 << 20      # as `payouts`: a published batch, ~600 bytes a receipt
MAX_METADATA_BYTES = 64 << 10       # a Datanet's metadata record
MAX_RECEIPTS_SHOWN = 100            # newest receipts listed for one address
PUBLISHED_CACHE = 32                # published receipts files kept parsed (immutable: content-addressed)


class DashboardError(RequestRejected):
    """A dashboard query that cannot be answered: `status` and `code` say how node/api.py reports it."""


@dataclass
class Sources:
    """Where the dashboard reads from. Every part is optional: a node without a chain still shows its operator view."""
    w3: Any = None                  # sync web3 `Web3` of the node's chain
    deployment: Any = None          # attribution.deployment.Deployment
    blocks: Any = None              # content.blockstore.Blockstore: published receipts (ipfs://), Datanet content
    cfg: Any = None                 # NodeConfig: Datanet limits and dedup threshold
    publish_dirs: tuple[Path, ...] = ()   # where this node writes its published receipts (<home>/receipts)
    _published: OrderedDict = field(default_factory=OrderedDict)
    _token: dict | None = None
    _block_time: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def chain(self) -> tuple[Any, Any]:
        if self.w3 is None or self.deployment is None:
            raise DashboardError(404, "no_chain", "this node has no chain deployment configured (free local mode): "
                                                  "there are no settled payouts or Datanets to show")
        return self.w3, self.deployment


def sources_from(cfg: Any, chain: Any, network: Any) -> Sources:
    """The node's sources: its chain (node.wiring.Chain or None) and its network's blockstore (or None)."""
    blocks = getattr(getattr(network, "store", None), "blocks", None)
    dirs = (Path(cfg.home) / "receipts",)            # node.settlement.start_settlement's publish_dir
    if chain is None:
        return Sources(blocks=blocks, cfg=cfg, publish_dirs=dirs)
    return Sources(w3=chain.w3, deployment=chain.deployment, blocks=blocks, cfg=cfg, publish_dirs=dirs)


def _chain_call(fn, what: str):
    """Run a chain read; a transport or contract-call error is a 503 that names what was read (never the RPC URL,
    which may carry a key). Anything else is a bug and propagates (the API answers 500 with a reference)."""
    import requests
    from web3.exceptions import Web3Exception

    from openlora.attribution.errors import AttributionError
    from openlora.datanets.errors import DatanetError
    try:
        return fn()
    except NodeError:
        raise
    except DatanetError as e:       # e.g. no DatanetRegistry at the deployment's address: the wrong network
        raise DashboardError(503, "chain_unavailable", f"reading {what}: {str(e)[:300]}") from None
    except (OSError, TimeoutError, requests.RequestException, Web3Exception, AttributionError) as e:
        raise DashboardError(503, "chain_unavailable", f"reading {what} from the chain failed "
                                                       f"({type(e).__name__})") from None


def token_info(src: Sources) -> dict[str, Any]:
    """{address, symbol, decimals} of the settlement token, read once from the chain."""
    w3, dep = src.chain()
    if src._token is None:
        def read():
            t = dep.contract(w3, "OpenLoRAToken")
            return {"address": t.address, "symbol": str(t.functions.symbol().call()),
                    "decimals": int(t.functions.decimals().call())}
        src._token = _chain_call(read, "the token's symbol and decimals")
    return src._token


def block_time(src: Sources, block: int) -> int:
    with src._lock:
        hit = src._block_time.get(block)
    if hit is None:
        hit = int(src.w3.eth.get_block(block)["timestamp"])
        with src._lock:
            if len(src._block_time) > 4096:
                src._block_time.clear()
            src._block_time[block] = hit
    return hit


def share_of(receipt: Any, who: str) -> int:
    """`who`'s gross share of a receipt's price (before the protocol fee), as `payouts` computes it."""
    total = sum(w for _, w in receipt.attribution)
    mine = sum(w for a, w in receipt.attribution if a == who)
    return receipt.price * mine // total if total else 0


def read_receipts_file(src: Sources, uri: str) -> bytes:
    """The bytes of a published receipts file, read only from where this node keeps them: a file:// URI inside the
    node's own receipts folder (a regular file, no link, no FIFO or device, at most MAX_PUBLISHED_BYTES), or an
    ipfs:// CID whose blocks this node's blockstore already holds (read with the same bound). Anything else is
    refused with ValueError: a batch's receiptsUri is chosen by whoever settled it, and a public page must not make
    the node read /dev/zero, a file elsewhere on its disk, or the network."""
    import io
    from urllib.parse import unquote, urlparse

    from openlora.safejson import UnsafeJSONError, read_regular_file
    if not isinstance(uri, str) or len(uri) > 4096:
        raise ValueError("not a receipts URI")
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if not src.publish_dirs:
            raise ValueError("this node has no receipts folder")
        path = Path(unquote(parsed.path))
        if not path.is_absolute() or ".." in path.parts or not any(
                path.parent == d or path.parent.resolve() == d.resolve() for d in src.publish_dirs):
            raise ValueError(f"{uri[:200]}: not in this node's receipts folder")
        try:
            return read_regular_file(path, MAX_PUBLISHED_BYTES)
        except UnsafeJSONError as e:
            raise ValueError(str(e)) from None
    if parsed.scheme == "ipfs":
        from openlora.content.cid import as_cid
        from openlora.content.dag import cat, missing_blocks
        if src.blocks is None:
            raise ValueError("this node has no blockstore")
        cid = as_cid(parsed.netloc or parsed.path.lstrip("/"))
        if not src.blocks.has(cid) or missing_blocks(cid, src.blocks):
            raise ValueError(f"{uri[:200]}: not held by this node")
        out = io.BytesIO()
        cat(cid, src.blocks.get, out, max_bytes=MAX_PUBLISHED_BYTES)
        return out.getvalue()
    raise ValueError(f"{uri[:200]}: neither file:// in this node's receipts folder nor ipfs://")


def published_receipts(src: Sources, uri: str) -> list | None:
    """The receipts of a published batch file (read_receipts_file), parsed with bounds; None when it cannot be read
    here or is not a receipts file."""
    from openlora.attribution.receipts import ReceiptError, receipt_from_json
    with src._lock:
        if uri in src._published:
            src._published.move_to_end(uri)
            return src._published[uri]
    try:
        doc = safe_loads(read_receipts_file(src, uri), max_bytes=MAX_PUBLISHED_BYTES)
        receipts = [receipt_from_json(x) for x in doc["receipts"]]
    except (OSError, ValueError, KeyError, TypeError, ReceiptError, ContentError):
        return None
    with src._lock:
        src._published[uri] = receipts
        while len(src._published) > PUBLISHED_CACHE:
            src._published.popitem(last=False)
    return receipts


# ---- contributor ----------------------------------------------------------------------------------------------

class _Static:
    """Splits an address's gross share of a receipt into roles (operator, author, each Datanet) and, within a
    Datanet, into its contributions, by the same chain weights attribution.pricing uses (the latest published
    version; terms and weights read once per query). Integer arithmetic; remainders go to the last part."""

    def __init__(self, src: Sources, who: str, shares: Any, operator: str | None):
        self.src, self.who, self.shares, self.operator = src, who, shares, operator
        self.terms: dict[str | None, Any] = {}
        self.weights: dict[int, dict[str, int]] = {}
        self.mine: dict[int, dict[int, int]] = {}       # datanet -> {contribution id: weight} of `who`

    def _terms(self, cid: str | None):
        from openlora.attribution.pricing import PricingError, adapter_terms
        if cid not in self.terms:
            try:
                self.terms[cid] = adapter_terms(self.src.w3, self.src.deployment, cid)
            except PricingError:
                self.terms[cid] = None
        return self.terms[cid]

    def _datanet(self, d: int) -> dict[str, int]:
        from openlora.attribution.pricing import contributor_weights
        if d not in self.weights:
            self.weights[d] = contributor_weights(self.src.w3, self.src.deployment, d)
            reg = self.src.deployment.contract(self.src.w3, "DatanetRegistry")
            mine: dict[int, int] = {}
            n = int(reg.functions.versionCount(d).call())
            if n:
                _, _, _, ids, ws = reg.functions.getVersion(d, n).call()
                for i, w in zip(ids, ws):
                    if w and to_checksum_address(reg.functions.getContribution(d, int(i)).call()[0]) == self.who:
                        mine[int(i)] = int(w)
            self.mine[d] = mine
        return self.weights[d]

    def parts(self, receipt: Any, amount: int) -> list[tuple[str, Any, int]]:
        """[(role, key, wei)]: role "operator" | "author" | "datanet" (key: Datanet id) | "other"."""
        terms = self._terms(receipt.adapter_cid)
        if terms is None or not amount:
            return [("other", None, amount)] if amount else []
        sh = self.shares
        comps: list[tuple[str, Any, int]] = []
        scale = 10**18
        if self.operator is not None and to_checksum_address(receipt.node) == self.who:
            comps.append(("operator", None, sh.operator_bps * scale))
        author = to_checksum_address(terms.author) if terms.author else None
        if author == self.who:
            comps.append(("author", None, sh.author_bps * scale))
        for d, bps in terms.datanet_weights:
            weights = self._datanet(d)
            total = sum(weights.values())
            if total and weights.get(self.who):
                comps.append(("datanet", d, sh.contributors_bps * bps * scale * weights[self.who] // (10_000 * total)))
        comps = [c for c in comps if c[2] > 0]
        if not comps:
            return [("other", None, amount)]
        total_c = sum(c[2] for c in comps)
        out, given = [], 0
        for i, (role, key, c) in enumerate(comps):
            part = amount - given if i == len(comps) - 1 else amount * c // total_c
            given += part
            out.append((role, key, part))
        return out

    def by_contribution(self, d: int, amount: int) -> dict[int, int]:
        mine = self.mine.get(d) or {}
        total = sum(mine.values())
        out, given = {}, 0
        for i, (cid, w) in enumerate(sorted(mine.items())):
            part = amount - given if i == len(mine) - 1 else amount * w // total
            given += part
            out[cid] = part
        return out


def _receipt_row(r: Any, share: int, status: str, batch: str | None) -> dict[str, Any]:
    return {"request_id": r.request_id, "adapter": r.adapter_cid or "base model", "created_at": r.created_at,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens, "price": str(r.price),
            "share": str(share), "status": status, "batch_id": batch, "requester": r.requester, "node": r.node,
            "matched": None, "spans": [], "completion_ids": None, "segments": None}


MAX_SEGMENT_TOKENS = 8192


def segments(texts: list[str], spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A completion's token texts cut into runs, each marked with the contribution its span matched (the first
    occurrence's) or None: what the page highlights. `spans`: [{start, length, occurrences: [[contribution, ...]]}]
    in completion-token positions; out-of-range parts are ignored."""
    marks: list[Any] = [None] * len(texts)
    for sp in spans[:4096]:
        try:
            start, length = int(sp["start"]), int(sp["length"])
            occ = sp.get("occurrences") or []
            who = int(occ[0][0]) if occ else -1
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        for i in range(max(0, start), min(len(texts), start + max(0, length))):
            if marks[i] is None:
                marks[i] = who
    out: list[dict[str, Any]] = []
    for text, m in zip(texts, marks):
        if out and out[-1]["contribution"] == m:
            out[-1]["text"] += text
        else:
            out.append({"text": text, "contribution": m})
    return out


def _merge_report(rep: dict[str, Any], receipts: list[dict[str, Any]], datanets: dict, roles: dict) -> set[str]:
    """Fold attribution.payouts.contributor_report's settled split (matched spans vs static, per Datanet and per
    contribution, with each receipt's spans) into the view's own, for the receipts that carry evidence; returns
    the request ids of those that do not (the caller splits them, and the node's unsettled ones, by _Static)."""
    for k in ("author", "operator"):
        v = int(rep.get("gross", {}).get(k, "0"))
        if v:
            roles[k] = roles.get(k, 0) + v
    for d, entry in rep.get("by_datanet", {}).items():
        if not str(d).isdigit():
            continue          # receipts without evidence: the caller splits them by the static weights itself
        key = int(d)
        dn = datanets.setdefault(key, {"matched": 0, "static": 0, "contributions": {}})
        dn["matched"] += int(entry.get("span", "0"))
        dn["static"] += int(entry.get("static", "0"))
        for c, ce in entry.get("contributions", {}).items():
            ckey = int(c) if str(c).isdigit() else None
            cn = dn["contributions"].setdefault(ckey, {"matched": 0, "static": 0})
            cn["matched"] += int(ce.get("span", "0"))
            cn["static"] += int(ce.get("static", "0"))
    by_id = {r["request_id"]: r for r in receipts}
    with_evidence = set()
    for x in rep.get("receipts", []):
        row = by_id.get(x.get("request_id"))
        if row is not None and x.get("evidence"):
            with_evidence.add(row["request_id"])
            row["matched"] = x.get("span")
            row["spans"] = x.get("spans") or []
            row["completion_ids"] = x.get("completion_ids")
    return {rid for rid, r in by_id.items() if r["status"] != "unsettled" and rid not in with_evidence}


def contributor(src: Sources, store: Any, address: str, shares: Any, node: str | None) -> dict[str, Any]:
    """Everything the contributor view shows for `address` (checksummed by the caller). Blocking."""
    from openlora.attribution.payouts import claim_items, payouts_of
    w3, dep = src.chain()
    token = token_info(src)
    report = _chain_call(lambda: payouts_of(w3, dep, address, from_block=dep.block), "the settled batches")
    st = dep.contract(w3, "Settlement")
    static = _Static(src, address, shares, node)
    claimed = sum(p.amount for p in report.payouts if p.claimed)
    batches, receipts, by_adapter = [], [], {}
    roles: dict[str, int] = {}
    datanets: dict[Any, dict[str, Any]] = {}
    unreadable = []
    report_fn = _report_function()
    settled_objs: dict[str, tuple[Any, int]] = {}

    def account(r: Any, share: int, split: bool = True, count: bool = True) -> None:
        key = r.adapter_cid or "base model"
        if count:
            by_adapter[key] = by_adapter.get(key, 0) + share
        if not split:
            return
        for role, k, part in static.parts(r, share):
            if role == "datanet":
                dn = datanets.setdefault(k, {"matched": 0, "static": 0, "contributions": {}})
                dn["static"] += part
                for cid, v in static.by_contribution(k, part).items():
                    cn = dn["contributions"].setdefault(cid, {"matched": 0, "static": 0})
                    cn["static"] += v
            else:
                roles[role] = roles.get(role, 0) + part

    def read_batches():
        for p in report.payouts:
            ev = st.events.BatchSettled().process_receipt(w3.eth.get_transaction_receipt(p.tx_hash))
            uri = ev[0]["args"]["receiptsUri"] if ev else ""
            bid = "0x" + p.batch_id.hex()
            batches.append({"batch_id": bid, "block": p.block, "time": block_time(src, p.block), "tx_hash": p.tx_hash,
                            "node": p.node, "amount": str(p.amount), "claimed": p.claimed, "receipts_uri": uri})
            rs = published_receipts(src, uri)
            if rs is None:
                unreadable.append(bid)
                continue
            for r in rs:
                share = share_of(r, address)
                if share:
                    account(r, share, split=report_fn is None)
                    settled_objs[r.request_id] = (r, share)
                    receipts.append(_receipt_row(r, share, "claimed" if p.claimed else "settled", bid))
    _chain_call(read_batches, "the settled batches' receipts")
    if report_fn is not None:
        rep = _chain_call(lambda: report_fn(w3, dep, address, lambda uri: read_receipts_file(src, uri)),
                          "the settled receipts' attribution")
        for rid in _merge_report(rep, receipts, datanets, roles):
            r, share = settled_objs[rid]
            _chain_call(lambda r=r, share=share: account(r, share, count=False), "the adapters' terms")
    pending = None
    if store is not None:
        pending = 0
        for r in store.unsettled_receipts():
            share = share_of(r, address)
            if share:
                pending += share
                _chain_call(lambda r=r, share=share: account(r, share), "the adapters' terms")
                receipts.append(_receipt_row(r, share, "unsettled", None))
    series, cumulative = [], 0
    for b in sorted(batches, key=lambda b: (b["block"], b["batch_id"])):
        cumulative += int(b["amount"])
        series.append({"time": b["time"], "block": b["block"], "cumulative": str(cumulative)})
    items = claim_items(report.payouts)
    calldata = None
    if items:
        calldata = st.encode_abi("claimMany", args=[address, items])
    per_datanet = []
    for d in sorted(datanets, key=lambda k: (k is None, k or 0)):
        dn = datanets[d]
        per_datanet.append({"datanet_id": d, "static": str(dn["static"]), "matched": str(dn["matched"]),
                            "contributions": [{"id": i, "static": str(v["static"]), "matched": str(v["matched"])}
                                              for i, v in sorted(dn["contributions"].items(),
                                                                 key=lambda kv: (kv[0] is None, kv[0] or 0))]})
    receipts.sort(key=lambda x: (-x["created_at"], x["request_id"]))
    return {
        "address": address, "token": token, "chain_id": dep.chain_id,
        "settled": str(report.earned), "claimed": str(claimed), "claimable": str(report.claimable),
        "unsettled_local": None if pending is None else str(pending),
        "earned": str(report.earned + (pending or 0)),
        "batches": batches, "series": series, "skipped": report.skipped, "unreadable_batches": unreadable,
        "by_adapter": {k: str(v) for k, v in sorted(by_adapter.items())},
        "by_role": {k: str(v) for k, v in sorted(roles.items())},
        "by_datanet": per_datanet, "attribution": "spans" if report_fn is not None else "static",
        "receipts": receipts[:MAX_RECEIPTS_SHOWN], "receipts_total": len(receipts),
        "claim": {"settlement": st.address, "items": len(items), "amount": str(report.claimable),
                  "calldata": calldata,
                  "command": f"openlora-node claim --address {address}" if items else None},
    }


def _report_function() -> Any:
    """attribution.payouts.contributor_report (matched spans vs static share per Datanet and contribution, the
    function `payouts` prints) where this version of attribution/ has it; else None and the view estimates the
    static split itself (_Static)."""
    from openlora.attribution import payouts
    return getattr(payouts, "contributor_report", None)
