"""The dashboard's curator view: a Datanet's pending contributions with their duplicate flags, every contribution's
status and weight, the versions published, and its usage (adapters registered on it, this node's requests to them).

What it does: reads the DatanetRegistry and AdapterRegistry (datanets.registry, events), assesses pending
contributions against the accepted ones from the content this node holds (datanets.Registry.assess with the
config's limits and near-duplicate threshold, as `datanet pending`), and sums this node's receipts per adapter.
Blocking; node/dashboard.py runs it in a worker thread. Amounts and weights are decimal strings.
What it does not do: fetch content from peers (`openlora-node datanet pending` does), or review and publish.
"""

from __future__ import annotations

from typing import Any

from openlora.content.errors import ContentError
from openlora.node.dashboard_data import MAX_METADATA_BYTES, DashboardError, Sources, _chain_call
from openlora.node.errors import NodeError
from openlora.safejson import loads as safe_loads

MAX_ADAPTER_EVENTS = 10_000         # AdapterRegistered events read for a Datanet's usage
MAX_CONTRIBUTIONS = 2_000           # newest contributions listed (each is one chain read)
MAX_ASSESSED = 20                   # pending contributions checked for duplicates per query (oldest first)


# ---- curator --------------------------------------------------------------------------------------------------

def _metadata(src: Sources, cid: str) -> dict[str, str]:
    """The Datanet's name/description/license from its metadata record, when this node holds it."""
    import io

    from openlora.content.dag import cat
    if src.blocks is None or not cid:
        return {}
    try:
        out = io.BytesIO()
        cat(cid, src.blocks.get, out, max_bytes=MAX_METADATA_BYTES)
        meta = safe_loads(out.getvalue(), max_bytes=MAX_METADATA_BYTES, max_depth=4)
    except Exception:  # noqa: BLE001 - not held here, too big, not JSON: the view shows the CID only
        return {}
    if not isinstance(meta, dict):
        return {}
    return {k: str(meta[k])[:500] for k in ("name", "description", "license") if isinstance(meta.get(k), str)}


def _assess(src: Sources, reg: Any, datanet_id: int, c: Any) -> dict[str, Any]:
    """Duplicate flags of a pending contribution against the accepted rows (datanets.Registry.assess), when this
    node holds the content; otherwise why not."""
    from openlora.datanets.errors import DatanetError
    if src.blocks is None:
        return {"readable": False, "why": "this node has no blockstore"}
    from openlora.datanets.dedup import DedupParams
    from openlora.node.commands._datanet_support import _limits
    kw: dict[str, Any] = {"limits": _limits(src.cfg)}       # config.toml's [datanets], as `datanet pending`
    if src.cfg is not None:
        kw["dedup"] = DedupParams(threshold_bps=src.cfg.datanets.near_duplicate_threshold_bps)
    try:
        entry = reg.assess(datanet_id, c.id, src.blocks.get, **kw)
    except (DatanetError, NodeError, ContentError, KeyError, ValueError) as e:
        return {"readable": False, "why": str(e)[:300]}
    rows = entry["rows"]
    return {"readable": True, "rows": len(rows), "tokens": sum(r["tokens"] for r in rows),
            "exact_duplicates": sum(r.get("duplicate") == "exact" for r in rows),
            "near_duplicates": sum(r.get("duplicate") == "near" for r in rows),
            "weight": str(entry["weight"]), "license": entry.get("license")}


def curator(src: Sources, store: Any, datanet_id: int) -> dict[str, Any]:
    """The curator view of Datanet `datanet_id`: pending contributions with duplicate flags, every contribution's
    status, the published versions, and its usage (adapters registered on it; this node's requests to them)."""
    from openlora.datanets.errors import DatanetError
    from openlora.datanets.registry import Registry
    w3, dep = src.chain()

    def read():
        reg = Registry(w3, dep)
        try:
            info = reg.datanet(datanet_id)
        except DatanetError as e:
            raise DashboardError(404, "datanet_not_found", str(e)) from None
        first = max(1, info.contribution_count - MAX_CONTRIBUTIONS + 1)
        contributions = [reg.contribution(datanet_id, i) for i in range(first, info.contribution_count + 1)]
        versions = [reg.version(datanet_id, v) for v in range(1, info.versions + 1)]
        return reg, info, contributions, versions
    reg, info, contributions, versions = _chain_call(read, f"Datanet {datanet_id}")
    waiting = [c for c in contributions if c.status == "pending"]
    pending = [{"id": c.id, "contributor": c.contributor, "cid": c.cid, "size": c.size,
                **(_assess(src, reg, datanet_id, c) if i < MAX_ASSESSED else
                   {"readable": False, "why": f"not checked here (more than {MAX_ASSESSED} pending): "
                                              f"`openlora-node datanet pending {datanet_id}`"})}
               for i, c in enumerate(waiting)]
    latest = versions[-1].weights if versions else {}
    adapters = _chain_call(lambda: _adapters_on(w3, dep, datanet_id), "the adapters registered on the Datanet")
    served = _served(store, [a["cid"] for a in adapters]) if store is not None else None
    for a in adapters:
        a.update(served.get(a["cid"], {"requests": 0, "tokens": 0, "value": "0"}) if served is not None else {})
    return {
        "datanet_id": datanet_id, "curator": info.curator, "created_at": info.created_at,
        "metadata_cid": info.metadata_cid, "metadata": _metadata(src, info.metadata_cid),
        "pending": pending, "contribution_count": info.contribution_count,
        "contributions": [{"id": c.id, "contributor": c.contributor, "cid": c.cid, "size": c.size,
                           "status": c.status, "weight": str(latest.get(c.id, 0))} for c in contributions],
        "versions": [{"version": v.version, "manifest_cid": v.manifest_cid, "published_at": v.published_at,
                      "total_weight": str(v.total_weight), "contributions": len(v.weights)} for v in versions],
        "usage": {"adapters": adapters, "node_receipts": served is not None},
    }


def _adapters_on(w3: Any, dep: Any, datanet_id: int) -> list[dict[str, Any]]:
    reg = dep.contract(w3, "AdapterRegistry")
    out = []
    for ev in reg.events.AdapterRegistered().get_logs(from_block=dep.block)[:MAX_ADAPTER_EVENTS]:
        a = ev["args"]
        ids = [int(i) for i in a["datanetIds"]]
        if datanet_id in ids:
            out.append({"cid": a["cid"], "author": a["author"], "base_model": a["baseModel"],
                        "price_per_token": str(a["pricePerToken"]),
                        "weight_bps": int(a["weightsBps"][ids.index(datanet_id)]), "block": ev["blockNumber"]})
    return out


def _served(store: Any, cids: list[str]) -> dict[str, dict[str, Any]]:
    """This node's receipts for the adapters `cids`: requests, tokens and their summed price (exact)."""
    from sqlalchemy import select
    from openlora.node.storage import receipts
    out: dict[str, dict[str, Any]] = {}
    if not cids:
        return out
    with store.engine.connect() as c:
        q = select(receipts.c.adapter_cid, receipts.c.prompt_tokens, receipts.c.completion_tokens,
                   receipts.c.price).where(receipts.c.adapter_cid.in_(cids))
        for cid, p, comp, price in c.execute(q):
            d = out.setdefault(cid, {"requests": 0, "tokens": 0, "value": 0})
            d["requests"] += 1
            d["tokens"] += int(p) + int(comp)
            d["value"] += int(price)
    for d in out.values():
        d["value"] = str(d["value"])
    return out
