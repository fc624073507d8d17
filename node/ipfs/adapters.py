"""Adapters as content-addressed directories: the manifest, importing into the blockstore, listing, materialising.

An adapter directory holds exactly three files:
  adapter_config.json        PEFT's config (base_model_name_or_path, r, lora_alpha, target_modules, ...)
  adapter_model.safetensors  the weights (only safetensors: pickled .bin/.pt files are refused)
  manifest.json              written by `adapters add` when absent; schema "openlora.adapter/1":
      {"schema", "base_model", "rank", "alpha", "target_modules", "author" (0x address or ""),
       "size" (bytes of the two other files), "files": {name: {"size", "sha256"}}}
The adapter's CID is the Kubo CID of that directory (manifest included), so the manifest is covered by it.

What it does: build and check manifests, import a directory (`add_adapter`), list roots, read a manifest out of
the DAG, and export a held adapter to `<home>/ipfs/adapters/<cid>/` checking the sha256 of every file. With a
budget (adapters.disk_store_bytes), `AdapterStore.add` refuses an adapter larger than it and evicts LRU adapters
after each add (node/ipfs/disk_tier.py).
What it does not do: fetch from the network (`node.ipfs.source`), or load weights (the engine does).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

from openlora.fsutil import sha256_file
from typing import Callable

from openlora.content.blockstore import Blockstore
from openlora.content.cid import CID, as_cid
from openlora.content.dag import cat, export, missing_blocks
from openlora.content.importer import add_tree, copy_regular_files
from openlora.content.unixfs import T_DIRECTORY, decode_node, decode_unixfs
from openlora.node.errors import NodeError
from openlora.node.ipfs.disk_tier import DiskTier, Removal, Usage, normalize_cid
from openlora.node.ipfs.errors import IpfsError
from openlora.safejson import load_file, loads, read_regular_file

SCHEMA = "openlora.adapter/1"
CONFIG, WEIGHTS, MANIFEST = "adapter_config.json", "adapter_model.safetensors", "manifest.json"
FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_JSON = 1 << 20  # adapter_config.json and manifest.json: a few hundred bytes in practice


class AdapterError(IpfsError, NodeError, ValueError):
    """An adapter directory is incomplete, unsafe, or its manifest does not match its files."""




def build_manifest(adapter_dir: Path, author: str = "", base_model: str | None = None) -> dict:
    adapter_dir = Path(adapter_dir)
    check_files(adapter_dir)
    try:
        cfg = load_file(adapter_dir / CONFIG, MAX_JSON)
    except ValueError as e:
        raise AdapterError(f"{adapter_dir / CONFIG}: not acceptable JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{adapter_dir / CONFIG}: not a JSON object")
    base = base_model or cfg.get("base_model_name_or_path") or ""
    if not base:
        raise AdapterError(f"{adapter_dir / CONFIG} names no base_model_name_or_path; pass --base-model")
    targets = cfg.get("target_modules") or []
    files = {n: {"size": (adapter_dir / n).stat().st_size, "sha256": sha256_file(adapter_dir / n)}
             for n in (CONFIG, WEIGHTS)}
    return {"schema": SCHEMA, "base_model": base, "rank": int(cfg.get("r", 0)),
            "alpha": cfg.get("lora_alpha"), "target_modules": sorted(targets) if isinstance(targets, list)
            else targets, "author": author, "size": sum(f["size"] for f in files.values()), "files": files}


def check_files(adapter_dir: Path) -> None:
    if not adapter_dir.is_dir():
        raise AdapterError(f"{adapter_dir}: not a directory")
    for name in (CONFIG, WEIGHTS):
        if not (adapter_dir / name).is_file():
            raise AdapterError(f"{adapter_dir}: {name} is missing (an adapter is {CONFIG} + {WEIGHTS})")
    for f in adapter_dir.iterdir():
        if f.suffix in FORBIDDEN_SUFFIXES:
            raise AdapterError(f"{f}: pickled weights are never imported; convert the adapter to safetensors")


def check_manifest(adapter_dir: Path, manifest: dict) -> None:
    if manifest.get("schema") != SCHEMA:
        raise AdapterError(f"{adapter_dir / MANIFEST}: schema {manifest.get('schema')!r}, expected {SCHEMA!r}")
    for name in (CONFIG, WEIGHTS):
        files = manifest.get("files")
        entry = files.get(name) if isinstance(files, dict) else None
        want = entry.get("sha256") if isinstance(entry, dict) else None
        got = sha256_file(adapter_dir / name)
        if want != got:
            raise AdapterError(f"{adapter_dir / name}: sha256 {got} differs from the manifest's {want}")


Validator = Callable[[Path, dict], None]


def add_adapter(adapter_dir: Path, store: Blockstore, author: str = "", base_model: str | None = None,
                validate: Validator | None = None) -> tuple[CID, dict]:
    """Import an adapter directory into `store`; returns (CID, manifest). Writes nothing into `adapter_dir`.

    Its files are first copied into a private scratch directory beside the blockstore, never following a symlink
    (content/importer.py); everything is checked and imported from that copy, so what `validate(copy, manifest)`
    (e.g. `engine_validator`, the engine's own loader) accepted is exactly what gets the CID."""
    adapter_dir = Path(adapter_dir)
    scratch = Path(tempfile.mkdtemp(prefix=".import-", dir=store.root))
    try:
        try:
            listed = copy_regular_files(adapter_dir, scratch, (CONFIG, WEIGHTS, MANIFEST))
        except AdapterError:
            raise
        except IpfsError as e:
            raise AdapterError(str(e)) from None
        for name in listed:
            if Path(name).suffix in FORBIDDEN_SUFFIXES:
                raise AdapterError(f"{adapter_dir / name}: pickled weights are never imported; convert the adapter "
                                   f"to safetensors")
        try:
            return _add_copy(scratch, store, author, base_model, validate)
        except (AdapterError, ValueError) as e:     # messages name the user's directory, not the scratch copy
            raise AdapterError(str(e).replace(str(scratch), str(adapter_dir))) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _add_copy(adapter_dir: Path, store: Blockstore, author: str, base_model: str | None,
              validate: Validator | None) -> tuple[CID, dict]:
    check_files(adapter_dir)
    mpath = adapter_dir / MANIFEST
    if mpath.is_file():
        try:
            mbytes = read_regular_file(mpath, MAX_JSON)
            manifest = loads(mbytes, max_bytes=MAX_JSON)
        except ValueError as e:
            raise AdapterError(f"{mpath}: not acceptable JSON ({e})") from None
        if not isinstance(manifest, dict):
            raise AdapterError(f"{mpath}: not a JSON object")
        check_manifest(adapter_dir, manifest)
    else:
        manifest = build_manifest(adapter_dir, author, base_model)
        mbytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    if validate is not None:
        validate(adapter_dir, manifest)
    tree = {CONFIG: adapter_dir / CONFIG, WEIGHTS: adapter_dir / WEIGHTS, MANIFEST: mbytes}
    entry = add_tree(tree, store.put_trusted)
    store.add_root(entry.cid, {"kind": "adapter", "manifest": manifest, "tsize": entry.tsize})
    return entry.cid, manifest


def read_manifest(cid: CID | str, get) -> dict:
    """Read manifest.json out of the adapter DAG (blocks from `get`, verified by it)."""
    cid = as_cid(cid)
    node = decode_node(get(cid), cid)
    if node.data is None or decode_unixfs(node.data, cid).type != T_DIRECTORY:
        raise AdapterError(f"{cid} is not a directory, so not an adapter")
    links = {ln.name: ln for ln in node.links}
    for name in (CONFIG, WEIGHTS, MANIFEST):
        if name not in links:
            raise AdapterError(f"{cid} is not an adapter: it has no {name}")
    if links[MANIFEST].tsize > MAX_JSON:
        raise AdapterError(f"{cid}: manifest.json is implausibly large ({links[MANIFEST].tsize} bytes)")
    buf = io.BytesIO()
    cat(links[MANIFEST].cid, get, buf, max_bytes=MAX_JSON)  # a DAG may repeat a block: bound what it expands to
    try:
        manifest = loads(buf.getvalue(), max_bytes=MAX_JSON)
    except ValueError as e:
        raise AdapterError(f"{cid}: manifest.json is not acceptable JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise AdapterError(f"{cid}: manifest.json is not a JSON object")
    return manifest


def engine_validator(spec, *, max_rank: int = 256, max_bytes: int | None = None) -> Validator:
    """The engine's own adapter loader (inference.lora.read_peft_adapter) as an import check, so that an adapter
    gets a CID only if the engine serving `spec` (an inference ModelSpec) would load it: LoRA only (no DoRA,
    modules_to_save, bias), only the attention/MLP projections (no lm_head/embeddings), this base model, rank
    1..max_rank, A/B shapes and float dtypes that fit, finite values, safetensors only, at most max_bytes."""
    from openlora.inference.errors import AdapterError as EngineAdapterError
    from openlora.inference.lora import read_peft_adapter

    def check(path: Path, manifest: dict) -> None:
        base = str(manifest.get("base_model") or "")
        # the manifest's base model (maybe from --base-model) must be this one, by the loader's own rule
        if base and base != spec.model_id and Path(base).name != spec.model_id.split("/")[-1]:
            raise AdapterError(f"{path}: the adapter targets base model {base!r}, this node serves {spec.model_id!r}")
        try:
            read_peft_adapter(path, str(path), spec, max_rank=max_rank, max_bytes=max_bytes)
        except EngineAdapterError as e:
            raise AdapterError(str(e)) from None

    return check


class AdapterStore:
    """The node's adapters on disk: a blockstore plus exported directories ready for the engine."""

    def __init__(self, ipfs_root: Path, max_adapter_bytes: int | None = None, budget_bytes: int | None = None,
                 pinned: tuple[str, ...] = (), usage: Usage | None = None):
        self.root = Path(ipfs_root)
        self.max_adapter_bytes = max_adapter_bytes  # bounds what an export may write (the weights file's limit)
        self.blocks = Blockstore(self.root)
        self.exported = self.root / "adapters"
        self.tier = DiskTier(self.blocks, self.exported, budget_bytes, pinned, usage)

    def bound(self, budget_bytes: int | None, pinned: tuple[str, ...] = (), usage: Usage | None = None) -> None:
        """Bound the disk tier: adapters.disk_store_bytes, adapters.pinned, and the engine's view of what it holds
        (`disk_tier.engine_usage(engine.adapters)`)."""
        self.tier.budget, self.tier.usage_fn = budget_bytes, usage
        self.tier.pinned = {normalize_cid(c) for c in pinned}

    def add(self, adapter_dir: Path, author: str = "", base_model: str | None = None,
            validate: Validator | None = None) -> tuple[CID, dict]:
        """Import `adapter_dir` (see `add_adapter`); with a budget, refuse one larger than it and evict LRU
        adapters beyond it afterwards (never the one just added)."""
        budget = self.tier.budget
        if budget is not None:
            size = sum((Path(adapter_dir) / n).lstat().st_size for n in (CONFIG, WEIGHTS, MANIFEST)
                       if (Path(adapter_dir) / n).is_file())
            if size > budget:
                raise AdapterError(f"{adapter_dir}: the adapter is {size} bytes, more than the whole disk tier "
                                   f"(adapters.disk_store_bytes = {budget} bytes); raise it to hold this adapter")
        with self.tier.lock.shared():
            cid, manifest = add_adapter(adapter_dir, self.blocks, author, base_model, validate)
            self.tier.touch(str(cid), added=True)
        if budget is not None:
            self.check_fits(cid)
            self.tier.enforce(protect=(str(cid),))
        return cid, manifest

    def check_fits(self, cid: CID | str) -> None:
        """Refuse (and remove) a stored adapter whose blocks alone exceed the budget."""
        budget = self.tier.budget
        size = self.tier.adapter_bytes(str(cid))
        if budget is not None and size > budget:
            self.tier.remove(str(cid), force=True)
            raise AdapterError(f"adapter {cid} is {size} bytes, more than the whole disk tier "
                               f"(adapters.disk_store_bytes = {budget} bytes); raise it to hold this adapter")

    def remove(self, cid: CID | str, force: bool = False) -> Removal:
        """Remove an adapter from the store (its export, record and the blocks no other root links)."""
        return self.tier.remove(str(as_cid(cid)), force=force)

    def list(self) -> dict[str, dict]:
        return {c: m for c, m in self.blocks.roots().items() if m.get("kind") == "adapter"}

    def complete(self, cid: CID | str) -> bool:
        return self.blocks.has(as_cid(cid)) and not missing_blocks(cid, self.blocks)

    def record(self, cid: CID | str) -> dict:
        """After a fetch: read and record the manifest of a complete DAG; returns it."""
        manifest = read_manifest(cid, self.blocks.get)
        meta = self.blocks.root_meta(cid) or {}       # keeps its last use across re-records
        self.blocks.add_root(cid, {**meta, "kind": "adapter", "manifest": manifest})
        self.tier.touch(str(as_cid(cid)), added=True)
        return manifest

    def _export_budget(self, cid: CID, manifest: dict) -> int:
        """The bytes an export of `cid` may write: what its manifest declares for its files (their sha256 is checked
        after), capped by max_adapter_bytes; a DAG that expands past it (one block linked many times) is refused."""
        files = manifest.get("files")
        try:
            declared = sum(int(files[n]["size"]) for n in (CONFIG, WEIGHTS))
        except (KeyError, TypeError, ValueError):
            raise AdapterError(f"{cid}: manifest.json does not give the sizes of {CONFIG} and {WEIGHTS}") from None
        if self.max_adapter_bytes is not None:
            declared = min(declared, self.max_adapter_bytes + MAX_JSON)
        return max(0, declared) + MAX_JSON  # + manifest.json itself

    def materialize(self, cid: CID | str) -> Path:
        """A directory holding the adapter's files, exported from verified blocks and sha256-checked."""
        cid = as_cid(cid)
        dest = self.exported / str(cid)
        if (dest / MANIFEST).is_file():
            return dest
        missing = missing_blocks(cid, self.blocks)
        if missing:
            raise AdapterError(f"adapter {cid} is not complete locally: block {missing[0]} is missing")
        manifest = read_manifest(cid, self.blocks.get)
        try:
            with self.tier.lock.shared():     # an eviction pass deletes exports only under the exclusive lock
                export(cid, dest, self.blocks.get, max_bytes=self._export_budget(cid, manifest))
        except FileExistsError:
            return dest  # another thread exported it meanwhile
        try:
            check_manifest(dest, manifest)
        except AdapterError:
            import shutil
            shutil.rmtree(dest, ignore_errors=True)
            raise
        if not self.blocks.has_root(cid):
            self.blocks.add_root(cid, {"kind": "adapter", "manifest": manifest})
        return dest
