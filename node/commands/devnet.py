"""`openlora-node devnet up | down | status`: the local Anvil devnet with the OpenLoRA contracts deployed.

What it does: argument handling and output for devnet.service; the devnet directory defaults to <home>/devnet, and
`up` also writes the deployment where the node reads it (the config's chain.deployment_file, else
<home>/deployment.json). Errors are one line (exit 1).
What it does not do: any devnet logic of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from openlora.node.errors import NodeError


class DevnetCommandError(NodeError):
    """A devnet command failed; the message says why and what to do."""


def _dir(obj, d: str | None) -> Path:
    return Path(d).expanduser().resolve() if d else obj.home / "devnet"


def _node_deployment_file(home: Path) -> Path:
    from openlora.node.config import CONFIG_FILENAME, load_config
    if (home / CONFIG_FILENAME).is_file():
        try:
            cfg = load_config(home)
            return cfg.path(cfg.chain.deployment_file)
        except NodeError:
            pass
    return home / "deployment.json"


dir_option = click.option("--dir", "devnet_dir", metavar="DIR",
                          help="Devnet directory (anvil state, pid, log, deployment). Default: <home>/devnet.")


@click.group("devnet")
def command() -> None:
    """Start, stop and inspect the local Anvil devnet with the contracts deployed."""


@command.command()
@dir_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address anvil listens on.")
@click.option("--port", default=8545, show_default=True, type=click.IntRange(1, 65535), help="Anvil RPC port.")
@click.option("--chain-id", default=31337, show_default=True, type=int)
@click.pass_obj
def up(obj, devnet_dir: str | None, host: str, port: int, chain_id: int) -> None:
    """Start anvil (fixed mnemonic, persisted state), deploy the contracts once, seed demo data."""
    from openlora.attribution.artifacts import ArtifactError
    from openlora.attribution.deployment import DeploymentError
    from openlora.devnet.chain import DevnetError
    from openlora.devnet.service import up as devnet_up
    try:
        res = devnet_up(_dir(obj, devnet_dir), host=host, port=port, chain_id=chain_id,
                        node_deployment_file=_node_deployment_file(obj.home), progress=click.echo,
                        home=obj.home)
    except (DevnetError, DeploymentError, ArtifactError) as e:
        raise DevnetCommandError(str(e)) from None
    _point_node_at(obj.home, res)
    _fund_home_node(obj.home, res)
    click.echo(f"devnet ready: {res.anvil.url} chain id {res.deployment.chain_id}, "
               f"Settlement {res.deployment.address('Settlement')}")


def _point_node_at(home: Path, res) -> None:
    """A node initialised in this home reads the chain that `up` started: chain.rpc_url and chain.chain_id in its
    config.toml follow --host/--port/--chain-id (other lines and comments are kept)."""
    from openlora.node.config import CONFIG_FILENAME, set_config_values
    if not (home / CONFIG_FILENAME).is_file():
        return
    changed = set_config_values(home, "chain", {"rpc_url": res.anvil.url, "chain_id": res.deployment.chain_id})
    if changed:
        click.echo(f"config.toml: chain.{', chain.'.join(changed)} now point at this devnet ({res.anvil.url})")


def _fund_home_node(home: Path, res) -> None:
    """When this home has a node keystore, the demo requester funds a lane to that node and its (public, devnet-only)
    key is written to <home>/devnet/demo-requester.key, so `openlora-node request` works against `start` at once."""
    import os

    from openlora.devnet.seed import fund_node_lane
    from openlora.node.config import load_config
    from openlora.node.errors import NodeError
    from openlora.node.keystore import read_address
    try:
        node = read_address(load_config(home).keystore_path)
    except NodeError:
        return                                   # no initialised node here: nothing to fund
    from web3 import Web3
    w3 = Web3(Web3.HTTPProvider(res.anvil.url, request_kwargs={"timeout": 30}))
    requester, key = fund_node_lane(w3, res.deployment, node, progress=click.echo)
    key_file = home / "devnet" / "demo-requester.key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    from openlora.devnet.base_model import MODEL_ID
    model = {"demo": "openlora/tiny-llama-s0", "smollm2": MODEL_ID}.get(
        load_config(home).model.path, "<the base model id>")
    click.echo(f"demo requester key (Anvil's public test mnemonic) in {key_file}: try\n"
               f"  openlora-node request --key-file {key_file} --model {model} \"Hello\"")


@command.command()
@dir_option
@click.pass_obj
def down(obj, devnet_dir: str | None) -> None:
    """Stop the anvil that `devnet up` started for this directory (its state is kept)."""
    from openlora.devnet.service import down as devnet_down
    info = devnet_down(_dir(obj, devnet_dir))
    click.echo(f"stopped anvil (pid {info.pid}) at {info.url}" if info else "devnet is not running")


@command.command()
@dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(obj, devnet_dir: str | None, as_json: bool) -> None:
    """Say whether the devnet runs and where the contracts are."""
    from openlora.devnet.service import status as devnet_status
    st = devnet_status(_dir(obj, devnet_dir))
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
        return
    if st["running"]:
        click.echo(f"anvil: running at {st['url']} (pid {st['pid']}, chain id {st['chain_id']}, "
                   f"block {st.get('block', '?')})")
    else:
        click.echo(f"anvil: not running (dir {st['dir']})")
    dep = st.get("deployment")
    if dep is None:
        click.echo("deployment: none")
    elif "error" in dep:
        click.echo(f"deployment: {dep['error']}")
    else:
        live = dep.get("live")
        state = "live" if live else ("not live: " + dep.get("reason", "anvil not running"))
        click.echo(f"deployment: {dep['file']} ({state})")
        for name, addr in dep["addresses"].items():
            click.echo(f"  {name:16} {addr}")
