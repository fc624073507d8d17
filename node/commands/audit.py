"""`openlora-node audit BATCH`: re-derive every receipt of a settled batch and its credits, against the chain.

What it does: finds batch BATCH (0x + 64 hex) on the deployment's Settlement contract, reads its published receipts
(receiptsUri: file://, or ipfs:// through the home's blockstore / Kubo RPC / gateways, every block verified), and
runs attribution.audit.audit_batch: receipts' Merkle root and batch id, each receipt's signature and attribution
(span index rebuilt from the Datanet version, spans and vector recomputed), debits, and the credits recomputed to
the wei and compared with the settleBatch calldata and the credits root stored on chain. Prints "ok" or every
difference (exit status 1). Works without a node home given --rpc-url, --deployment, --base and --blocks.
What it does not do: fetch a Datanet version from peers (`openlora-node datanet pull`), or send anything.
"""

from __future__ import annotations

import json
from typing import Any

import click

from openlora.node.commands.attribution import _one_line, chain, indexes, reader, with_chain_options


@click.command("audit")
@click.argument("batch")
@with_chain_options
@click.option("--base", default=None, metavar="DIR", help="Base model directory (its tokenizer; default: the "
                                                           "home's model).")
@click.option("--blocks", default=None, metavar="DIR", help="Blockstore holding the Datanet versions (default: the "
                                                             "home's).")
@click.option("--cache", is_flag=True, help="Use the home's persisted span indexes instead of rebuilding them.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@_one_line
def command(obj: Any, batch: str, rpc_url: str | None, deployment: str | None, base: str | None, blocks: str | None,
            cache: bool, as_json: bool) -> None:
    """Audit a settled batch: every receipt re-derived, credits and Merkle roots recomputed against the chain."""
    from openlora.attribution.audit import audit_batch, parse_batch_id
    batch_id = parse_batch_id(batch)
    cfg, w3, dep = chain(obj, rpc_url, deployment)
    lazy: dict[str, Any] = {}

    def index_for(d: int, v: str) -> Any:      # the tokenizer loads only when a receipt has span evidence
        if "f" not in lazy:
            lazy["f"] = indexes(obj, cfg, base, blocks, cache)
        return lazy["f"](d, v)
    report = audit_batch(w3, dep, batch_id, reader(cfg), index_for)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(f"batch {report.batch_id}: {report.receipt_count} receipt(s), total {report.total} wei, node "
                   f"{report.node}, tx {report.tx_hash} (block {report.block})")
        click.echo(f"receipts: {report.receipts_uri}")
        for p in report.problems:
            click.echo(f"  - {p}")
        for rid, diffs in report.receipts.items():
            for d in diffs:
                click.echo(f"  - {rid}: {d}")
        n_ok = sum(1 for v in report.receipts.values() if not v)
        click.echo(("ok: " if report.ok else "FAILED: ") + f"{n_ok}/{len(report.receipts)} receipt(s) re-derived, "
                   f"credits and roots {'match the chain' if not report.problems else 'differ'}")
    if not report.ok:
        raise SystemExit(1)
