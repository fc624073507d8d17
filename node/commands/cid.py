"""`openlora-node cid PATH`: print the CID Kubo's `ipfs add -r --cid-version=1 --raw-leaves` gives PATH."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="cid")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--hidden", is_flag=True, help="Include names starting with '.' (Kubo's --hidden).")
def command(path: Path, hidden: bool) -> None:
    """Print the IPFS CID (CIDv1, raw leaves, Kubo-identical) of a file or directory. Stores nothing."""
    from openlora.content.importer import ImportParams, add_path
    click.echo(str(add_path(path, params=ImportParams(include_hidden=hidden)).cid))
