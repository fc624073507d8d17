"""`openlora-node demo`: the devnet demo's moving parts: the demo adapter, and signed traffic.

What it does: `demo adapter` makes sure the devnet's demo adapter exists: trained by the Model Factory from the
demo Datanet's latest version on the node's base model (`factory train`, the first time only: the adapter is kept
in the home's blockstore and named in <home>/devnet/demo-adapter.json), registered with its lineage by the demo
author (Anvil account 8; `factory publish`) when the chain does not know it yet. `demo traffic` sends signed requests (the SDK, EIP-712, vouchers) from the devnet's two demo
requesters (Anvil accounts 2 and 3; their lanes to the node are funded here when empty) to a running node, mixing
the base model and every adapter the node lists; one request in two is on the demo Datanet's topic (a completion
prompt made of the start of a Datanet row), so that an adapter trained on the Datanet reproduces its text and the
receipts' attribution names the contributors. One line per request: who, which model, tokens, price, receipt id.
What it does not do: run on anything but a devnet (the requesters' keys come from Anvil's public test mnemonic).
"""

from __future__ import annotations

import itertools
import random
import re
import time
from pathlib import Path

import click

from openlora.node.errors import NodeError

GENERAL_PROMPTS = [
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "Give me a tip for learning a new language.",
    "Name three colours of the rainbow.",
]


def topic_prompts(words: int = 8) -> list[str]:
    """Starts of the demo Datanet's accepted rows (the LoRA and attribution notes), `words` words each."""
    from openlora.devnet import demo_texts
    rows = list(demo_texts.LORA) + list(demo_texts.ATTRIBUTION)
    out = []
    for row in rows:
        parts = row.split()
        if len(parts) > words + 4:
            out.append(" ".join(parts[:words]))
    return out


def _chain(home: Path, rpc_url: str | None):
    from web3 import Web3

    from openlora.attribution.deployment import DeploymentError, read_deployment
    from openlora.node.commands.devnet import _node_deployment_file
    from openlora.node.config import CONFIG_FILENAME, load_config
    url = rpc_url
    if url is None and (home / CONFIG_FILENAME).is_file():
        url = load_config(home).chain.rpc_url
    url = url or "http://127.0.0.1:8545"
    try:
        dep = read_deployment(_node_deployment_file(home))
    except (DeploymentError, OSError) as e:
        raise NodeError(f"no devnet deployment in {home} ({e}); run `openlora-node devnet up` first") from None
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30})), dep, url


def _spans_said(receipt: dict) -> str:
    """'2 spans' (matched against the adapter's Datanet version), 'static' (none matched) or 'no Datanet' (the base
    model, or an adapter registered without lineage: no evidence)."""
    evidence = receipt.get("evidence")
    if not isinstance(evidence, dict):
        return "no Datanet"
    spans = sum(len(d.get("spans") or []) for d in evidence.get("datanets") or [] if isinstance(d, dict))
    return f"{spans} span{'s' if spans != 1 else ''}" if spans else "static"


@click.group("demo")
def command() -> None:
    """The devnet demo: the demo adapter, signed traffic from the demo requesters."""


DEMO_PRICE = 2 * 10**12       # wei per token for the demo adapter (the base model costs the node's price only)


def _demo_recipe() -> dict:
    """The Model Factory's demo recipe (factory.config.DEMO_RECIPE) as `factory train` options."""
    from openlora.factory.config import DEMO_RECIPE as r
    return {"rank": r.rank, "alpha": r.alpha, "targets": ",".join(r.targets), "epochs": r.epochs, "lr": r.lr,
            "batch": r.batch, "max_len": r.max_len, "seed": r.seed, "eval_split": r.eval_split,
            "threads": r.threads, "samples": r.samples}


def _invoke_echoed(ctx: click.Context, cmd: click.Command, **kwargs) -> str:
    """Run another command of this CLI; what it prints on stdout is shown and returned (its progress line goes to
    stderr as usual)."""
    import contextlib
    import io
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            ctx.invoke(cmd, **kwargs)
    finally:
        click.echo(buf.getvalue(), nl=False)
    return buf.getvalue()


@command.command()
@click.option("--retrain", is_flag=True, help="Train again even when the demo adapter exists.")
@click.pass_context
def adapter(ctx: click.Context, retrain: bool) -> None:
    """Train (first run only) and register the demo adapter from the demo Datanet; print its CID."""
    import json
    import os

    from openlora.attribution.lineage import LineageError, read_adapter
    from openlora.content.blockstore import Blockstore
    from openlora.devnet.deploy import dev_accounts
    from openlora.devnet.seed import ROLES
    from openlora.fsutil import atomic_write
    from openlora.node.commands import factory

    obj = ctx.obj
    w3, dep, _ = _chain(obj.home, None)
    datanet_id = (dep.extra or {}).get("datanet_id")
    if not isinstance(datanet_id, int):
        raise NodeError("this deployment has no demo Datanet; run `openlora-node devnet up` on a fresh devnet")
    record = obj.home / "devnet" / "demo-adapter.json"
    author = dev_accounts()[ROLES["author"]]
    key_file = obj.home / "devnet" / "demo-author.key"        # Anvil's public test mnemonic: devnet only
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(author.key.hex() + "\n")
    cid = None
    if record.is_file() and not retrain:
        from openlora.safejson import UnsafeJSONError, load_file
        try:
            cid = load_file(record, max_bytes=1 << 16).get("cid")
        except (UnsafeJSONError, OSError, AttributeError):
            cid = None
        if not isinstance(cid, str) or not Blockstore(obj.home / "ipfs").has(cid):
            cid = None
    if cid is None:
        click.echo(f"training the demo adapter from Datanet {datanet_id} (first run only)", err=True)
        printed = _invoke_echoed(ctx, factory.train, datanet_id=datanet_id, version=None, base=None,
                                 author=author.address, peers=(), gateways=(), timeout=30.0, quiet=False,
                                 as_json=False, **_demo_recipe())
        found = re.search(r"^adapter (\S+)$", printed, re.M)
        if found is None:
            raise NodeError("factory train printed no adapter CID; see above")
        cid = found.group(1)
        atomic_write(record, json.dumps({"cid": cid, "datanet_id": datanet_id, "recipe": _demo_recipe()},
                                        indent=1, sort_keys=True) + "\n")
    try:
        read_adapter(w3, dep, cid)
        click.echo(f"demo adapter {cid} (registered)")
        return
    except LineageError:
        pass                                                   # not on chain yet: publish it
    ctx.invoke(factory.publish, cid=cid, price=DEMO_PRICE, peers=(), linger=0.0, timeout=30.0, key_file=key_file,
               password_file=None, as_json=False)
    click.echo(f"demo adapter {cid} (registered at {DEMO_PRICE} wei/token)")


@command.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The node's HTTP API.")
@click.option("--requests", "count", default=0, show_default=True, type=click.IntRange(0),
              help="How many requests to send (0: until Ctrl-C).")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0, 3600),
              help="Seconds between requests.")
@click.option("--max-tokens", default=40, show_default=True, type=click.IntRange(1, 4096))
@click.option("--rpc-url", default=None, help="The devnet's RPC (default: the home's chain.rpc_url).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the prompt and model choice.")
@click.pass_obj
def traffic(obj, url: str, count: int, interval: float, max_tokens: int, rpc_url: str | None, seed: int) -> None:
    """Send signed requests from the two demo requesters to the node at --url, mixing base and adapters."""
    from openlora.devnet.seed import ROLES, fund_node_lane
    from openlora.node.sdk import OpenLoRAClient, OpenLoRAError

    w3, dep, rpc = _chain(obj.home, rpc_url)
    probe = OpenLoRAClient(url)
    try:
        info = probe.node_info()
        listed = probe._json("GET", "/v1/models")["data"]
    except (OpenLoRAError, OSError) as e:
        raise NodeError(f"cannot reach the node at {url}: {e}; start it first (make start)") from None
    base = info["base_model"]
    adapters = [m["id"] for m in listed if m.get("openlora", {}).get("kind") == "adapter"]
    clients = []
    for role in ("requester", "requester2"):
        addr, key = fund_node_lane(w3, dep, info["address"], requester_role=role, progress=click.echo)
        clients.append((addr, OpenLoRAClient(url, key, rpc_url=rpc)))
    click.echo(f"demo traffic to {url}: base {base}, adapters {adapters or 'none'}; Ctrl-C stops", err=True)
    rng = random.Random(seed)
    topics, general = topic_prompts(), GENERAL_PROMPTS
    sent = failed = 0
    try:
        for i in itertools.count():
            if count and i >= count:
                break
            addr, client = clients[i % 2]
            on_topic = i % 2 == 0
            model = rng.choice(adapters) if adapters and (on_topic or rng.random() < 0.3) else base
            try:
                if on_topic:
                    out = client.completions(model=model, prompt=rng.choice(topics), max_tokens=max_tokens,
                                             temperature=0.0)
                    text = out["choices"][0]["text"]
                else:
                    out = client.chat(model=model, messages=[{"role": "user", "content": rng.choice(general)}],
                                      max_tokens=max_tokens, temperature=0.0)
                    text = out["choices"][0]["message"]["content"]
                meta = out.get("openlora", {})
                try:   # the receipt is durable before the response ends: its price and attribution evidence
                    receipt = client.receipt(meta["request_id"]) if meta.get("receipt") else {}
                except (OpenLoRAError, OSError, KeyError):
                    receipt = {}
                sent += 1
                shown = "base" if model == base else f"adapter {model[:16]}..."
                click.echo(f"{addr[:8]} {shown:30} {out['usage']['completion_tokens']:3} tokens "
                           f"price {receipt.get('price', '?')} wei  {_spans_said(receipt)}  "
                           f"receipt {meta.get('request_id')}  {' '.join(text.split())[:60]!r}")
            except OpenLoRAError as e:
                failed += 1
                click.echo(f"{addr[:8]} {model[:24]}: refused: {e}", err=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    click.echo(f"sent {sent} requests ({failed} refused)", err=True)
    if failed and not sent:
        raise NodeError("every request was refused; see the lines above")
