"""`openlora-node payouts [--address A] [--rpc-url URL --deployment FILE] [--json]`: what an address earned, what
settled, what it can still claim, and per Datanet and contribution how much came through matched spans and how
much through the static share.

What it does: reads the chain alone (attribution.payouts: BatchSettled events + the settleBatch calldata) for the
settled credits of the address, per batch with claimed / claimable; breaks them down per adapter from the
published receipts where this machine can read them (file:// receiptsUri, or ipfs://CID from the home's blockstore,
its Kubo RPC or its gateways; every block verified against its CID); per Datanet and contribution, matched-span
share vs static share and the receipts behind them (attribution.payouts.contributor_report, which the dashboard
calls too); and, when this home has a receipt database, adds what this node served that is not settled yet.
Default address: the node's own (keystore). With --rpc-url and --deployment it needs no node home nor keystore
(then --address is required).
What it does not do: send anything (`openlora-node claim` does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import click

from openlora.node.errors import NodeError
from openlora.safejson import loads as safe_loads

MAX_PUBLISHED_BYTES = 64 << 20  # a published batch: ~600 bytes a receipt, batch_max_receipts (256) by default

TOKEN = 10**18


class PayoutsError(NodeError):
    """The deployment, the chain or an address is not usable; one line says which."""


def fmt(wei: int) -> str:
    return f"{wei} wei ({wei / TOKEN:,.6f} oUSD)"


def chain_context(obj: Any) -> tuple[Any, Any, Any]:
    """(cfg, w3, deployment) for the node home, or a one-line error: no config, no deployment, chain down."""
    from openlora.attribution.deployment import DeploymentError, read_deployment
    from openlora.node.config import load_config
    cfg = load_config(obj.home)
    try:
        dep = read_deployment(cfg.path(cfg.chain.deployment_file))
    except DeploymentError as e:
        raise PayoutsError(str(e)) from None
    return cfg, connect_checked(cfg.chain.rpc_url, dep, PayoutsError), dep


def connect_checked(url: str, dep: Any, error: type[Exception]) -> Any:
    """A web3 connection to `url` whose chain id is the deployment's; `error` (one line, the URL redacted) when the
    chain is unreachable or another chain answers."""
    from openlora.attribution.chain import connect, redact
    w3 = connect(url)
    try:
        chain_id = w3.eth.chain_id
    except Exception as e:  # noqa: BLE001 - any transport error
        raise error(f"chain not reachable at {redact(url)}: {type(e).__name__}") from None
    if chain_id != dep.chain_id:
        raise error(f"{redact(url)} has chain id {chain_id}, the deployment file says {dep.chain_id}")
    return w3


def resolve_address(cfg: Any, address: str | None) -> str:
    from eth_utils import is_address, to_checksum_address
    if address is None and cfg is not None:
        from openlora.node.keystore import read_address
        return read_address(cfg.keystore_path)
    if not is_address(address):
        raise PayoutsError(f"--address {address!r} is not an Ethereum address")
    return to_checksum_address(address)


def _share(receipt: Any, who: str) -> int:
    total_w = sum(w for _, w in receipt.attribution)
    mine = sum(w for a, w in receipt.attribution if a == who)
    return receipt.price * mine // total_w if total_w else 0


def read_published(uri: str, cfg: Any = None) -> str:
    """The text of a published receipts file: a file:// URI or path, or ipfs://CID read from the home's blockstore
    (fetched first through the configured Kubo RPC / gateways when incomplete; blocks verified against their CIDs).
    Raises OSError / ValueError / node.ipfs errors when it cannot be read here."""
    import io

    parsed = urlparse(uri)
    if parsed.scheme != "ipfs":
        return (Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)).read_text()
    from openlora.content.blockstore import Blockstore
    from openlora.content.cid import as_cid
    from openlora.content.dag import cat, missing_blocks
    from openlora.node.ipfs.errors import FetchError
    from openlora.node.ipfs.fetchers import fetch_from_any, fetchers_from_config

    cid = as_cid(parsed.netloc or parsed.path.lstrip("/"))
    if cfg is None:
        raise ValueError(f"{uri}: no node home to read IPFS blocks from")
    blocks = Blockstore(cfg.home / "ipfs")
    if not blocks.has(cid) or missing_blocks(cid, blocks):
        fetchers = fetchers_from_config(cfg)
        if not fetchers:
            raise ValueError(f"{uri}: not in this home's blockstore and no source had it "
                             f"(no Kubo RPC or gateway configured)")
        try:
            fetch_from_any(cid, fetchers, blocks)
        except FetchError as e:
            raise ValueError(f"{uri}: not in this home's blockstore and {e}") from None
    out = io.BytesIO()
    cat(cid, blocks.get, out)
    return out.getvalue().decode("utf-8")


def by_adapter(w3: Any, dep: Any, report: Any, cfg: Any = None) -> dict[str, int] | None:
    """Gross share per adapter (before the protocol fee) from the published receipts of the address's batches;
    None when some batch's receipts are not readable here."""
    from openlora.attribution.receipts import ReceiptError, receipt_from_json
    from openlora.node.ipfs.errors import IpfsError
    st = dep.contract(w3, "Settlement")
    out: dict[str, int] = {}
    for p in report.payouts:
        ev = st.events.BatchSettled().process_receipt(w3.eth.get_transaction_receipt(p.tx_hash))
        uri = ev[0]["args"]["receiptsUri"] if ev else ""
        try:
            receipts = [receipt_from_json(x) for x in
                        safe_loads(read_published(uri, cfg), max_bytes=MAX_PUBLISHED_BYTES)["receipts"]]
        except (OSError, ValueError, KeyError, TypeError, ReceiptError, IpfsError):
            return None
        for r in receipts:
            key = r.adapter_cid or "base model"
            out[key] = out.get(key, 0) + _share(r, report.recipient)
    return out


def unsettled_here(cfg: Any, who: str) -> int | None:
    """What this node's own receipts not settled yet owe `who` (gross); None without a local database."""
    url = cfg.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    from openlora.node.storage import Store
    store = Store(url)
    try:
        return sum(_share(r, who) for r in store.unsettled_receipts())
    finally:
        store.close()


@click.command("payouts")
@click.option("--address", default=None, help="Address to report (default: this node's, from its keystore).")
@click.option("--rpc-url", default=None, help="Chain RPC URL (default: the home's chain.rpc_url); with "
                                              "--deployment no node home is needed.")
@click.option("--deployment", default=None, metavar="FILE", help="Deployment file with the contracts' addresses "
                                                                  "(default: the home's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def command(obj: Any, address: str | None, rpc_url: str | None, deployment: str | None, as_json: bool) -> None:
    """Show what an address has earned, settled and can claim (per batch, adapter, Datanet and contribution)."""
    from openlora.attribution.errors import AttributionError
    from openlora.attribution.payouts import contributor_report, payouts_of
    from openlora.node.commands.attribution import chain, reader
    if rpc_url is None and deployment is None:
        cfg, w3, dep = chain_context(obj)
    else:
        cfg, w3, dep = chain(obj, rpc_url, deployment)
    if cfg is None and address is None:
        raise PayoutsError("give --address: there is no node home (and keystore) to take the address from")
    who = resolve_address(cfg, address)
    report = payouts_of(w3, dep, who, from_block=dep.block)
    claimed = sum(p.amount for p in report.payouts if p.claimed)
    adapters = by_adapter(w3, dep, report, cfg)
    pending = unsettled_here(cfg, who) if cfg is not None else None
    try:
        detail = contributor_report(w3, dep, who, reader(cfg))
    except AttributionError as e:
        raise PayoutsError(str(e).splitlines()[0]) from None
    if as_json:
        click.echo(json.dumps({
            "address": who, "settled": str(report.earned), "claimed": str(claimed),
            "claimable": str(report.claimable), "unsettled_local": None if pending is None else str(pending),
            "batches": [{"batch_id": "0x" + p.batch_id.hex(), "block": p.block, "tx_hash": p.tx_hash,
                         "amount": str(p.amount), "claimed": p.claimed} for p in report.payouts],
            "by_adapter": None if adapters is None else {k: str(v) for k, v in adapters.items()},
            "gross": detail["gross"], "by_datanet": detail["by_datanet"], "receipts": detail["receipts"],
            "unreadable": detail["unreadable"], "skipped": report.skipped}, indent=2))
        return
    click.echo(f"address:    {who}")
    if pending is not None:
        click.echo(f"earned, not settled yet (this node's receipts): {fmt(pending)}")
    click.echo(f"settled:    {fmt(report.earned)} in {len(report.payouts)} batch(es)")
    click.echo(f"claimed:    {fmt(claimed)}")
    click.echo(f"claimable:  {fmt(report.claimable)}" + ("  -> openlora-node claim" if report.claimable else ""))
    for p in report.payouts:
        click.echo(f"  batch 0x{p.batch_id.hex()[:16]}..  block {p.block:>6}  {p.amount:>24} wei  "
                   f"{'claimed' if p.claimed else 'claimable'}  tx {p.tx_hash}")
    if adapters:
        click.echo("by adapter (gross, before the protocol fee):")
        for k, v in sorted(adapters.items()):
            click.echo(f"  {k}: {fmt(v)}")
    elif adapters is None:
        click.echo("by adapter: some batches' published receipts are not readable here")
    g = detail["gross"]
    if any(int(v) for v in g.values()):
        click.echo(f"by role (gross): matched spans {fmt(int(g['span']))}, static shares {fmt(int(g['static']))}, "
                   f"author {fmt(int(g['author']))}, operator {fmt(int(g['operator']))}")
    for d, dn in sorted(detail["by_datanet"].items()):
        click.echo(f"datanet {d}: matched spans {fmt(int(dn['span']))}, static {fmt(int(dn['static']))}")
        for c, cn in sorted(dn["contributions"].items()):
            click.echo(f"  contribution #{c}: matched spans {fmt(int(cn['span']))}, static {fmt(int(cn['static']))}, "
                       f"{len(cn['receipts'])} receipt(s)" + (f" e.g. {cn['receipts'][0]}" if cn["receipts"] else ""))
    if report.skipped:
        click.echo(f"skipped {len(report.skipped)} batch(es) settled through another contract: "
                   + ", ".join(report.skipped))
