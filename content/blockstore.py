"""The local blockstore: one file per block under `<home>/ipfs/blocks`, plus a list of pinned roots.

What it does: `put` verifies a block against its CID before anything is written, then writes it atomically (temp
file + rename, so a crash never leaves a partial block under a CID's name); `get` re-verifies on read, so a block
corrupted on disk is an error naming the CID, never silently served. Roots (adapters) are recorded under
`<home>/ipfs/roots/<cid>.json` with their metadata.
What it does not do: decide what to delete, nor any DAG logic (`content.dag`); the node's disk tier
(node/ipfs/disk_tier.py) bounds the store by bytes and deletes through `delete` and `remove_root`.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterator

from openlora.content.cid import CID, as_cid, verify_block
from openlora.content.errors import BlockNotFoundError, BlockVerificationError


class Blockstore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blocks_dir = self.root / "blocks"
        self.roots_dir = self.root / "roots"
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        self.roots_dir.mkdir(parents=True, exist_ok=True)
        self._dirs: set[str] = set()  # shard directories known to exist (saves a mkdir per block)

    def _path(self, cid: CID) -> Path:
        name = str(cid)
        return self.blocks_dir / name[-2] / name  # 32 shard directories (base32 chars)

    def has(self, cid: CID | str) -> bool:
        return self._path(as_cid(cid)).is_file()

    def get(self, cid: CID | str) -> bytes:
        cid = as_cid(cid)
        try:
            data = self._path(cid).read_bytes()
        except FileNotFoundError:
            raise BlockNotFoundError(cid, f"block {cid} is not in the local blockstore ({self.root})") from None
        try:
            verify_block(cid, data)
        except BlockVerificationError:
            raise BlockVerificationError(cid, f"block {cid} in {self.root} is corrupt on disk (its bytes no longer "
                                              f"hash to the CID); delete it and fetch it again") from None
        return data

    def size(self, cid: CID | str) -> int:
        try:
            return self._path(as_cid(cid)).stat().st_size
        except FileNotFoundError:
            raise BlockNotFoundError(cid, f"block {cid} is not in the local blockstore") from None

    def put(self, cid: CID | str, data: bytes | memoryview) -> None:
        """Verify `data` against `cid`, then store it. Raises BlockVerificationError and stores nothing on mismatch."""
        cid = as_cid(cid)
        verify_block(cid, data)
        self._write(cid, data)

    def put_trusted(self, cid: CID, data: bytes) -> None:
        """Store a block this process has just hashed: computed its CID (the importer) or verified it (exchange)."""
        self._write(cid, data)

    def _write(self, cid: CID, data: bytes | memoryview) -> None:
        path = self._path(cid)
        if path.is_file():
            return
        shard = path.parent.name
        if shard not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(shard)
        # A temp name unique per process and thread (cheaper than mkstemp); rename makes the block appear whole.
        tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def delete(self, cid: CID | str) -> None:
        self._path(as_cid(cid)).unlink(missing_ok=True)

    def __iter__(self) -> Iterator[CID]:
        for sub in sorted(self.blocks_dir.iterdir()):
            for f in sorted(sub.iterdir()):
                if not f.name.startswith("."):
                    yield CID.parse(f.name)

    # ---- roots (what the node holds as whole DAGs, e.g. adapters) --------------------------------------------------

    def add_root(self, cid: CID | str, meta: dict) -> None:
        cid = as_cid(cid)
        path = self.roots_dir / f"{cid}.json"
        tmp = self.roots_dir / f".{cid}.{os.getpid()}.{threading.get_ident()}.tmp"   # unique per writer
        try:
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def root_meta(self, cid: CID | str) -> dict | None:
        """The metadata recorded for root `cid`, or None when it is not a root."""
        try:
            return json.loads((self.roots_dir / f"{as_cid(cid)}.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def update_root(self, cid: CID | str, **fields) -> None:
        """Merge `fields` into the metadata of an existing root (no-op when `cid` is not a root)."""
        meta = self.root_meta(cid)
        if meta is not None:
            self.add_root(cid, {**meta, **fields})

    def remove_root(self, cid: CID | str) -> None:
        """Forget root `cid` (its blocks stay until deleted). One unlink: a crash leaves it recorded or not."""
        (self.roots_dir / f"{as_cid(cid)}.json").unlink(missing_ok=True)

    def roots(self) -> dict[str, dict]:
        out = {}
        for f in sorted(self.roots_dir.glob("*.json")):
            try:
                out[f.stem] = json.loads(f.read_text())
            except (OSError, ValueError):
                out[f.stem] = {}
        return out

    def has_root(self, cid: CID | str) -> bool:
        return (self.roots_dir / f"{as_cid(cid)}.json").is_file()
