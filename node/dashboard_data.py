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

def _receipt_row(r: Any, share: int, status: str, batch: str | None) -> dict[str, Any]:
    return {"request_id": r.request_id, "adapter": r.adapter_cid or "base model", "created_at": r.created_at,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens, "price": str(r.price),
            "share": str(share), "status": status, "batch_id": batch, "requester": r.requester, "node": r.node,
            "matched": None, "static": None, "spans": [], "completion_ids": None, "segments": None}


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


def _by_datanet(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """contributor_report's {datanet: {span, static, contributions: {id: {span, static, receipts}}}} as a sorted
    list; the key "unknown" (receipts without evidence: roles and Datanets not told apart) becomes id None."""
    def key(k: str) -> tuple:
        return (not str(k).isdigit(), int(k) if str(k).isdigit() else 0)

    out = []
    for d in sorted(rep["by_datanet"], key=key):
        dn = rep["by_datanet"][d]
        out.append({"datanet_id": int(d) if str(d).isdigit() else None, "matched": dn["span"],
                    "static": dn["static"],
                    "contributions": [{"id": int(c) if str(c).isdigit() else None, "matched": cn["span"],
                                       "static": cn["static"], "receipts": len(cn.get("receipts", []))}
                                      for c, cn in sorted(dn["contributions"].items(), key=lambda kv: key(kv[0]))]})
    return out


def contributor(src: Sources, store: Any, address: str) -> dict[str, Any]:
    """Everything the contributor view shows for `address` (checksummed by the caller). Blocking. The settled
    figures are the chain's and attribution.payouts.contributor_report's: what `openlora-node payouts --json`
    prints for the same address."""
    from openlora.attribution.errors import AttributionError
    from openlora.attribution.payouts import claim_items, contributor_report, payouts_of
    w3, dep = src.chain()
    token = token_info(src)
    report = _chain_call(lambda: payouts_of(w3, dep, address, from_block=dep.block), "the settled batches")
    st = dep.contract(w3, "Settlement")
    claimed = sum(p.amount for p in report.payouts if p.claimed)
    batches: list[dict[str, Any]] = []
    receipts: list[dict[str, Any]] = []
    by_adapter: dict[str, int] = {}
    unreadable: list[str] = []

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
                share = share_of(r, address)         # as `payouts` by_adapter: floors, every receipt of the batch
                key = r.adapter_cid or "base model"
                by_adapter[key] = by_adapter.get(key, 0) + share
                if share:
                    receipts.append(_receipt_row(r, share, "claimed" if p.claimed else "settled", bid))
    _chain_call(read_batches, "the settled batches' receipts")
    try:
        rep = _chain_call(lambda: contributor_report(w3, dep, address, lambda uri: read_receipts_file(src, uri)),
                          "the settled receipts' attribution")
    except AttributionError as e:
        raise DashboardError(503, "chain_unavailable", f"the settled receipts' attribution: "
                                                       f"{str(e).splitlines()[0][:300]}") from None
    rows = {r["request_id"]: r for r in receipts}
    for x in rep["receipts"]:
        row = rows.get(x.get("request_id"))
        if row is not None:
            row.update(share=x["gross"], matched=x["span"], static=x["static"], spans=x.get("spans") or [],
                       completion_ids=x.get("completion_ids"))
    pending = None
    if store is not None:
        pending = 0
        for r in store.unsettled_receipts():
            share = share_of(r, address)
            if share:
                pending += share
                row = _receipt_row(r, share, "unsettled", None)
                ev = getattr(r, "evidence", None)
                if ev is not None:         # its spans (every contribution's: not split per address until settled)
                    row["spans"] = [{"datanet_id": e.datanet_id, "start": sp.start, "length": sp.length,
                                     "occurrences": [list(o) for o in sp.occurrences]}
                                    for e in ev.datanets for sp in e.spans]
                    row["completion_ids"] = list(ev.completion_ids) if ev.completion_ids is not None else None
                receipts.append(row)
    series, cumulative = [], 0
    for b in sorted(batches, key=lambda b: (b["block"], b["batch_id"])):
        cumulative += int(b["amount"])
        series.append({"time": b["time"], "block": b["block"], "cumulative": str(cumulative)})
    items = claim_items(report.payouts)
    receipts.sort(key=lambda x: (-x["created_at"], x["request_id"]))
    return {
        "address": address, "token": token, "chain_id": dep.chain_id,
        "settled": str(report.earned), "claimed": str(claimed), "claimable": str(report.claimable),
        "unsettled_local": None if pending is None else str(pending),
        "earned": str(report.earned + (pending or 0)),
        "batches": batches, "series": series, "skipped": report.skipped, "unreadable_batches": unreadable,
        "by_adapter": {k: str(v) for k, v in sorted(by_adapter.items())},
        "gross": rep["gross"], "by_datanet": _by_datanet(rep),
        "receipts": receipts[:MAX_RECEIPTS_SHOWN], "receipts_total": len(receipts),
        "claim": {"settlement": st.address, "items": len(items), "amount": str(report.claimable),
                  "calldata": st.encode_abi("claimMany", args=[address, items]) if items else None,
                  "command": f"openlora-node claim --address {address}" if items else None},
    }
