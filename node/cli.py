"""The `openlora-node` command line: the whole user interface of the node.

What it does: parses global options (--home, --log-format, --log-level), runs `init`, `start`, `account`,
`version`, and mounts the command groups that live in `node/commands/<group>.py` (each exports a click command
named `command`). Every user-facing error is printed as one line on stderr with exit code 1; nothing is written to
disk by a command that fails.
What it does not do: hold logic of its own beyond argument handling; the work is in the modules it calls.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from openlora.content.errors import ContentError
from openlora.fsutil import atomic_write
from openlora.node import __version__
from openlora.node.errors import NodeError

log = logging.getLogger("openlora.cli")

# Command groups mounted lazily from node/commands/<module>.py (each exports `command`); only what exists is listed
# (tests/node/test_cli.py checks that every name here loads).
GROUPS: dict[str, str] = {
    "adapters": "Import, fetch, list and pin LoRA adapters (content-addressed by CID).",
    "cid": "Print the IPFS CID (Kubo-identical) of a file or directory.",
    "devnet": "Start, stop and inspect the local Anvil devnet with the contracts deployed.",
    "payouts": "Show what an address has earned, settled and can claim (per Datanet and contribution).",
    "attribution": "Verify a receipt's attribution: rebuild the span index, recompute spans and vector.",
    "audit": "Audit a settled batch: every receipt re-derived, credits and Merkle roots against the chain.",
    "claim": "Claim settled payouts.",
    "request": "Send a signed inference request to a node.",
    "demo": "The devnet demo: signed traffic from the demo requesters.",
    "datanet": "Contribute data to Datanets, review it, publish and verify content-addressed versions.",
    "factory": "Train LoRA adapters from a Datanet version, reproducibly; verify and publish them.",
}


class Context:
    def __init__(self, home: str | None, log_format: str | None, log_level: str | None):
        from openlora.node.config import resolve_home
        self.home = resolve_home(home)
        self.log_format = log_format
        self.log_level = log_level


class OpenLoRACLI(click.Group):
    """Imports a command group's module only when that group runs (or --help lists it): `--version` stays fast."""

    @staticmethod
    def _load(name: str) -> click.Command:
        return getattr(importlib.import_module(f"openlora.node.commands.{name}"), "command")

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(GROUPS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        return self._load(name) if cmd is None and name in GROUPS else cmd


@click.group(cls=OpenLoRACLI, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Home directory: --home, else $OPENLORA_HOME, else ~/.openlora.")
@click.option("--home", metavar="DIR", help="Node home directory (config.toml, keystore, data).")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log format (default: config, else text).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Log level.")
@click.version_option(__version__, "--version", prog_name="openlora-node")
@click.pass_context
def cli(ctx: click.Context, home: str | None, log_format: str | None, log_level: str | None) -> None:
    """openlora-node: serve thousands of LoRA adapters on one base model, paid by Proof-of-Attribution.

    \b
    First run:   openlora-node init --password-file PW
    Then:        openlora-node start --password-file PW
    """
    import os
    from openlora.node import logs
    ctx.obj = Context(home, log_format, log_level)
    logs.configure(log_level or "info", log_format or os.environ.get("OPENLORA_LOG_FORMAT") or "text")


password_file_option = click.option(
    "--password-file", type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the keystore password (else $OPENLORA_PASSWORD_FILE, $OPENLORA_PASSWORD, or a prompt).")


@cli.command()
@password_file_option
@click.option("--model", "model_path", default=None, metavar="PATH",
              help='Set model.path in config.toml (an HF model directory, "demo" or "smollm2"), also in an existing '
                   "one (its other lines and comments are kept).")
@click.pass_obj
def init(obj: Context, password_file: Path | None, model_path: str | None) -> None:
    """Create the home directory, a commented default config.toml and an encrypted node keystore.

    Existing files are kept: running init twice changes nothing (but --model).
    """
    from openlora.node.config import CONFIG_FILENAME, DEFAULT_CONFIG_TOML, parse_config
    from openlora.node.keystore import PasswordSource, create_keystore, read_address

    home = obj.home
    cfg_path = home / CONFIG_FILENAME
    if cfg_path.exists():
        cfg = _load_config(obj)  # validates an existing config before anything is created beside it
        click.echo(f"config:   {cfg_path} (exists, kept)")
    else:
        cfg = parse_config(DEFAULT_CONFIG_TOML, home, environ={})
    ks_path = cfg.keystore_path
    if ks_path.exists():
        address = read_address(ks_path)
        click.echo(f"keystore: {ks_path} (exists, kept)")
    else:
        password = PasswordSource(password_file).read(confirm=True)
        home.mkdir(parents=True, exist_ok=True)
        address = create_keystore(ks_path, password)
        click.echo(f"keystore: {ks_path} (created, encrypted)")
    if not cfg_path.exists():
        atomic_write(cfg_path, DEFAULT_CONFIG_TOML)
        click.echo(f"config:   {cfg_path} (created)")
    if model_path is not None:
        from openlora.node.config import set_config_values
        if set_config_values(home, "model", {"path": model_path}):
            click.echo(f"config:   model.path = {model_path!r}")
        _load_config(obj)      # the changed file still parses and validates
    click.echo(f"address:  {address}")


@cli.command()
@click.pass_obj
def account(obj: Context) -> None:
    """Show the node's Ethereum address (no password needed)."""
    from openlora.node.keystore import read_address
    cfg = _load_config(obj)
    click.echo(read_address(cfg.keystore_path))


@cli.command()
def version() -> None:
    """Show the versions of openlora-node and of the libraries that matter for serving."""
    import importlib.metadata as md
    click.echo(f"openlora-node {__version__}")
    click.echo(f"python {sys.version.split()[0]}")
    for dist in ("torch", "transformers", "peft", "triton", "flash-attn", "web3", "libp2p", "aiohttp", "sqlalchemy"):
        try:
            click.echo(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            click.echo(f"{dist} (not installed)")


@cli.command()
@password_file_option
@click.option("--exit-after", type=float, default=None, hidden=True, help="Stop after N seconds (tests).")
@click.pass_obj
def start(obj: Context, password_file: Path | None, exit_after: float | None) -> None:
    """Start the node: unlock the keystore, load the base model, and serve until Ctrl-C."""
    from openlora.node.keystore import PasswordSource, unlock
    from openlora.node.runner import run_node
    cfg = _load_config(obj)
    acct = unlock(cfg.keystore_path, PasswordSource(password_file).read())
    run_node(cfg, acct, exit_after=exit_after)


def _load_config(obj: Context):
    from openlora.node import logs
    from openlora.node.config import load_config
    cfg = load_config(obj.home)
    logs.configure(obj.log_level or cfg.node.log_level, obj.log_format or cfg.node.log_format)
    return cfg


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="openlora-node", standalone_mode=False)
    except (NodeError, ContentError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
