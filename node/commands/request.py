"""`openlora-node request`: send one signed inference request to a node with the SDK and print the answer."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("request")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The node's HTTP API.")
@click.option("--model", required=True, help="Base model id, adapter name or adapter CID.")
@click.option("--max-tokens", default=32, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float)
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File holding the requester's private key (0x hex, or a JSON keystore). Omit with --unsigned.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Password of a JSON keystore --key-file (else $OPENLORA_PASSWORD_FILE, $OPENLORA_PASSWORD, prompt).")
@click.option("--unsigned", is_flag=True, help="Send without a signature (only nodes in free local mode accept).")
@click.option("--rpc-url", default=None, help="Chain RPC the SDK reads Settlement.debited from (bounds the voucher).")
@click.option("--ledger-dir", default=None,
              help="Where the SDK records the voucher caps it signed (default $OPENLORA_SDK_DIR, else ~/.openlora/sdk).")
@click.option("--max-price-per-token", type=int, default=None, help="Refuse to sign above this price (wei/token).")
@click.option("--max-spend", type=int, default=None, help="Refuse to sign a request that may cost more (wei).")
@click.option("--budget", type=int, default=None,
              help="Refuse to sign a voucher letting this node take more than this in total from the lane (wei).")
@click.option("--stream/--no-stream", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the raw response JSON.")
@click.argument("prompt")
def command(url, model, max_tokens, temperature, key_file, password_file, unsigned, rpc_url, ledger_dir,
            max_price_per_token, max_spend, budget, stream, as_json, prompt) -> None:
    """Send PROMPT to a node (signed with --key-file) and print the completion and its receipt id."""
    from openlora.node.errors import NodeError
    from openlora.node.keystore import PasswordSource, read_key_file
    from openlora.node.sdk import OpenLoRAClient, OpenLoRAError
    from openlora.node.sdk_ledger import SpendLimits

    if not unsigned and key_file is None:
        raise click.UsageError("give --key-file (the requester's key) or --unsigned")
    key = read_key_file(key_file, PasswordSource(password_file)).key if key_file else None
    try:
        limits = SpendLimits(max_price_per_token, max_spend, budget)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    client = OpenLoRAClient(url, key, rpc_url=rpc_url, ledger_dir=ledger_dir, limits=limits)
    try:
        result = client.completions(model=model, prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                                    stream=stream, sign=not unsigned)
        if stream:
            last = None
            for chunk in result:
                last = chunk
                if not as_json:
                    click.echo(chunk["choices"][0].get("text", ""), nl=False)
            result = last or {}
            if not as_json:
                click.echo()
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            if not stream:
                click.echo(result["choices"][0]["text"])
            meta = result.get("openlora", {})
            click.echo(f"-- request {meta.get('request_id')}, usage {result.get('usage')}", err=True)
    except OpenLoRAError as e:
        raise NodeError(str(e)) from None
