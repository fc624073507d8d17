"""Where adapter files come from: the pluggable source interface of the adapter manager's lowest tier.

What it does: defines `AdapterSource`, the one method a source implements (make an adapter directory available on
local disk), and `LocalDirSource`, which serves adapters already on disk. The IPFS/p2p fetchers in node/ implement
the same protocol and are handed to the engine by node's wiring; the engine never imports them.
What it does not do: validate adapters (the adapter loader does, before anything reaches memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


class AdapterSourceError(Exception):
    """A source could not provide the adapter; the message says which adapter and why."""


@runtime_checkable
class AdapterSource(Protocol):
    name: str

    def fetch(self, ref: str) -> Path:
        """Return a local directory holding the adapter `ref` (a CID, or a name the source knows).

        Blocking; called from a loader thread, never from the engine loop. Raises AdapterSourceError.
        The directory holds adapter_config.json and adapter_model.safetensors (and, from IPFS, manifest.json).
        """
        ...


class LocalDirSource:
    """Adapters that are plain directories: `ref` is a path, or a name under `root`."""

    name = "local"

    def __init__(self, root: Path | None = None):
        self.root = root

    def fetch(self, ref: str) -> Path:
        path = Path(ref)
        if not path.is_absolute() and self.root is not None:
            path = self.root / ref
        if not (path / "adapter_config.json").is_file():
            raise AdapterSourceError(f"adapter {ref!r}: no adapter_config.json in {path}")
        return path
