"""The factory's output: a PEFT adapter directory with its training manifest, written atomically, and its CID.

The directory holds four files:
  adapter_config.json        canonical: sorted keys, target_modules a sorted list (never a set), no README card
  adapter_model.safetensors  the LoRA A/B tensors, names in PEFT's layout, written in sorted order
  factory-manifest.json      canonical JSON, schema "openlora.factory/1": the Datanet version, base weights and
                             tokenizer CIDs, every hyper-parameter, seed, requirements.lock digest, device class,
                             threads, library versions, row digest and counts, evaluation figures, weights digest
  manifest.json              the node's adapter manifest ("openlora.adapter/1", node/ipfs/adapters.py), whose
                             "files" also list factory-manifest.json and whose "factory" names it
The CID of that directory (Kubo-identical, content.importer.add_tree) is the adapter's CID.

What it does: digests of the environment (`environment()`), of the base (`base_identity()`: content.importer CIDs
of the base directory and of its tokenizer files), writing the directory into a temporary sibling and renaming it
(`write_dir`: an interrupted run leaves nothing half-written), `tree_cid`, and `store` (blocks and an "adapter" root in
a blockstore, as the node records adapters: devnet and tests use it without node/).
What it does not do: import into a node's blockstore (the node's `factory` command does, with the engine's checks).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

from openlora.fsutil import sha256_file
from typing import Any, Callable

from openlora.factory.config import TrainConfig, canonical_json
from openlora.factory.errors import FactoryInputError

SCHEMA = "openlora.factory/1"
ADAPTER_SCHEMA = "openlora.adapter/1"
CONFIG, WEIGHTS, MANIFEST, FACTORY = ("adapter_config.json", "adapter_model.safetensors", "manifest.json",
                                      "factory-manifest.json")
FILES = (CONFIG, WEIGHTS, FACTORY, MANIFEST)
MAX_FACTORY_MANIFEST = 256 << 10
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt")




def lock_path() -> Path | None:
    here = Path(__file__).resolve().parent.parent / "requirements.lock"
    return here if here.is_file() else None


def device_class() -> str:
    return f"cpu-{platform.machine() or 'unknown'}-fp32"


def environment(threads: int) -> dict[str, Any]:
    import peft
    import safetensors
    import torch
    import transformers
    lock = lock_path()
    return {"device_class": device_class(), "threads": threads,
            "requirements_lock_sha256": sha256_file(lock) if lock else None,
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "safetensors": safetensors.__version__}


_BASE_CACHE: dict[tuple, dict[str, str]] = {}


def base_identity(base_dir: Path) -> dict[str, str]:
    """{"model_id", "weights_cid", "tokenizer_cid"} of an HF model directory (cached per path, size and mtime)."""
    from openlora.content.importer import add_path, add_tree
    from openlora.inference.errors import InferenceError
    from openlora.inference.model_config import read_model_spec
    base_dir = Path(base_dir)
    try:
        spec = read_model_spec(base_dir)
    except InferenceError as e:
        raise FactoryInputError(f"base model {base_dir}: {e}") from None
    stamp = []
    for p in sorted(base_dir.iterdir()):
        st = p.stat()
        stamp.append((p.name, st.st_size, st.st_mtime_ns))
    key = (str(base_dir.resolve()), tuple(stamp))
    if key not in _BASE_CACHE:
        tok = {n: base_dir / n for n in TOKENIZER_FILES if (base_dir / n).is_file()}
        if not tok:
            raise FactoryInputError(f"base model {base_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])})")
        _BASE_CACHE[key] = {"model_id": spec.model_id, "weights_cid": str(add_path(base_dir).cid),
                            "tokenizer_cid": str(add_tree(tok).cid)}
    return dict(_BASE_CACHE[key])


def adapter_config(cfg: TrainConfig, base_model_id: str) -> bytes:
    """PEFT's adapter_config.json, canonical (what `PeftConfig.from_pretrained` and the engine read)."""
    c = {"base_model_name_or_path": base_model_id, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
         "init_lora_weights": True, "lora_alpha": cfg.alpha, "lora_dropout": 0.0, "modules_to_save": None,
         "peft_type": "LORA", "r": cfg.rank, "target_modules": sorted(cfg.targets), "task_type": "CAUSAL_LM",
         "use_dora": False, "use_rslora": False}
    return (json.dumps(c, indent=2, sort_keys=True) + "\n").encode()


def lora_tensors(model: Any) -> dict[str, Any]:
    from peft import get_peft_model_state_dict
    sd = get_peft_model_state_dict(model)
    return {k: sd[k].detach().to("cpu").contiguous().clone() for k in sorted(sd)}


def weights_bytes(tensors: dict[str, Any]) -> bytes:
    from safetensors.torch import save
    return save(tensors, metadata={"format": "pt"})


def node_manifest(cfg: TrainConfig, base_model_id: str, author: str, files: dict[str, bytes]) -> bytes:
    entries = {n: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()}
    m = {"schema": ADAPTER_SCHEMA, "base_model": base_model_id, "rank": cfg.rank, "alpha": cfg.alpha,
         "target_modules": sorted(cfg.targets), "author": author,
         "size": entries[CONFIG]["size"] + entries[WEIGHTS]["size"], "files": entries, "factory": FACTORY}
    return (json.dumps(m, indent=2, sort_keys=True) + "\n").encode()


def build_files(cfg: TrainConfig, base_model_id: str, author: str, weights: bytes,
                factory_manifest: dict[str, Any]) -> dict[str, bytes]:
    fm = canonical_json(factory_manifest)
    if len(fm) > MAX_FACTORY_MANIFEST:
        raise FactoryInputError(f"the factory manifest is {len(fm):,} bytes, over {MAX_FACTORY_MANIFEST:,}")
    files = {CONFIG: adapter_config(cfg, base_model_id), WEIGHTS: weights, FACTORY: fm}
    files[MANIFEST] = node_manifest(cfg, base_model_id, author, files)
    return files


def tree_cid(files: dict[str, bytes], sink: Callable | None = None) -> str:
    from openlora.content.importer import add_tree
    return str(add_tree(dict(files), sink).cid)


def store(files: dict[str, bytes], blockstore: Any, meta: dict[str, Any] | None = None) -> str:
    """Import the four files into `blockstore` (content.blockstore.Blockstore: blocks + a root of kind "adapter",
    as the node's adapter store records one) and return the adapter's CID. No engine check: callers that serve it
    check it with the engine's loader first (node/commands/factory.py does)."""
    cid = tree_cid(files, blockstore.put_trusted)
    blockstore.add_root(cid, {"kind": "adapter", "manifest": json.loads(files[MANIFEST]), **(meta or {})})
    return cid


def write_dir(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write `files` into a temporary sibling of `out_dir`, fsync, then rename it to `out_dir` (absent or empty)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FactoryInputError(f"{out_dir} already exists and is not an empty directory; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", suffix=".partial", dir=out_dir.parent))
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_dir(path: Path) -> dict[str, bytes]:
    """The four files of a factory output directory (bounded reads; symlinks refused)."""
    from openlora.safejson import read_regular_file
    path = Path(path)
    out = {}
    for name in FILES:
        limit = (1 << 30) if name == WEIGHTS else MAX_FACTORY_MANIFEST
        try:
            out[name] = read_regular_file(path / name, limit)
        except (OSError, ValueError) as e:
            raise FactoryInputError(f"{path}: {name}: {e}") from None
    return out


def read_factory_manifest(data: bytes, where: str) -> dict[str, Any]:
    """Parse factory-manifest.json bytes (untrusted: bounded size and depth), checking its schema."""
    from openlora.safejson import UnsafeJSONError, loads
    try:
        m = loads(data, max_bytes=MAX_FACTORY_MANIFEST, max_depth=8)
    except UnsafeJSONError as e:
        raise FactoryInputError(f"{where}: factory-manifest.json is not acceptable JSON: {e}") from None
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        raise FactoryInputError(f"{where}: not a {SCHEMA} factory manifest")
    for key, typ in (("hyperparameters", dict), ("base", dict), ("environment", dict), ("rows", dict)):
        if not isinstance(m.get(key), typ):
            raise FactoryInputError(f"{where}: factory manifest field {key!r} is missing or not an object")
    return m
