"""`openlora-node claim [--address A] [--key-file F] [--password-file P]`: claim every settled credit.

What it does: finds the address's unclaimed credits from the chain (attribution.payouts) and sends
`Settlement.claimMany` (in chunks of 64 batches), signed locally with the node's keystore (password as for
`start`) or with --key-file (a JSON keystore, opened with the same password source, or a file holding a 0x hex
private key). The tokens always go to the address; the signer only pays the gas. Default address: the signer's.
What it does not do: settle batches (the node's settlement loop does) or claim for batches it cannot prove.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from openlora.node.commands.payouts import PayoutsError, chain_context, fmt, resolve_address

CHUNK = 64


def _signer(cfg: Any, key_file: Path | None, password_file: Path | None) -> Any:
    from eth_account import Account

    from openlora.node.keystore import PasswordSource, unlock
    if key_file is None:
        return unlock(cfg.keystore_path, PasswordSource(password_file).read())
    try:
        text = key_file.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise PayoutsError(f"cannot read key file {key_file}: {e.strerror}") from None
    if text.startswith("{"):
        return unlock(key_file, PasswordSource(password_file).read())
    try:
        return Account.from_key(text)
    except (ValueError, TypeError):
        raise PayoutsError(f"{key_file} holds neither a JSON keystore nor a hex private key") from None


@click.command("claim")
@click.option("--address", default=None, help="Address whose credits to claim (default: the signer's).")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Key that signs (JSON keystore or hex private key). Default: the node's keystore.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Keystore password file (else $OPENLORA_PASSWORD_FILE, $OPENLORA_PASSWORD, or a prompt).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def command(obj: Any, address: str | None, key_file: Path | None, password_file: Path | None,
            as_json: bool) -> None:
    """Claim everything an address can claim from settled batches."""
    from openlora.attribution.chain import send_signed
    from openlora.attribution.payouts import claim_items, payouts_of
    cfg, w3, dep = chain_context(obj)
    signer = _signer(cfg, key_file, password_file)
    who = resolve_address(cfg, address or signer.address)
    report = payouts_of(w3, dep, who, from_block=dep.block)
    items = claim_items(report.payouts)
    st = dep.contract(w3, "Settlement")
    txs, total = [], 0
    for i in range(0, len(items), CHUNK):
        chunk = items[i:i + CHUNK]
        try:
            tx, _ = send_signed(w3, st.functions.claimMany(who, chunk), signer)
            rcpt = w3.eth.wait_for_transaction_receipt(tx, timeout=120)
        except Exception as e:  # noqa: BLE001 - a revert or transport error: one line
            raise PayoutsError(f"claimMany failed after {len(txs)} transaction(s): {type(e).__name__}: {e}") from None
        if rcpt["status"] != 1:
            raise PayoutsError(f"claimMany reverted in tx 0x{bytes(tx).hex()}")
        txs.append("0x" + bytes(tx).hex())
        total += sum(amount for _, amount, _ in chunk)
    if as_json:
        click.echo(json.dumps({"address": who, "claimed": str(total), "batches": len(items), "txs": txs}))
    elif not items:
        click.echo(f"nothing to claim for {who}")
    else:
        click.echo(f"claimed {fmt(total)} for {who} from {len(items)} batch(es) in {', '.join(txs)}")
