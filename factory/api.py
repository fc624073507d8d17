"""The Model Factory's Python API: train an adapter from rows, reproduce one from its manifest, compare the two.

What it does: `train(records, base_dir, out_dir, cfg, source=...)` runs the whole recipe (encode rows, seeded
split, LoRA fit, evaluation, canonical files, CID, atomic write) under fixed torch settings; `train_rows` is the
same for plain Python rows without a chain (tests and other packages use it to make small real adapters).
`reproduce(manifest, records, base_dir)` retrains with exactly the manifest's hyper-parameters and threads and
returns the new files and CID; `differences(old_files, new_files)` says exactly what differs between two outputs.
What it does not do: talk to a chain or the network, or import into a node (node/commands/factory.py does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from openlora.factory import output, rows as rowsmod, train as tr
from openlora.factory.config import TrainConfig
from openlora.factory.errors import FactoryInputError, TrainingInterrupted


@dataclass(frozen=True)
class TrainResult:
    cid: str                      # the adapter directory's CID (Kubo-identical)
    out_dir: Path | None          # where it was written (None when only computed)
    manifest: dict[str, Any]      # factory-manifest.json
    files: dict[str, bytes]       # the four files
    steps: int
    tokens: int                   # input tokens trained on (padding excluded)
    seconds: float                # wall time of the training loop alone
    tokens_per_s: float
    final_loss: float

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.manifest["evaluation"]


def _fig(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def train(records: list[rowsmod.Record], base_dir: Path | str, out_dir: Path | str | None, cfg: TrainConfig, *,
          source: dict[str, Any] | None = None, author: str = "",
          progress: Callable[[tr.Progress], None] | None = None,
          base: dict[str, str] | None = None) -> TrainResult:
    """Train a LoRA on `records` (training order = their order); write `out_dir` atomically (when given)."""
    base_dir = Path(base_dir)
    if not records:
        raise FactoryInputError("no rows to train on")
    ident = base or output.base_identity(base_dir)
    with tr.deterministic(cfg.threads):
        tok, model = tr.load_base(base_dir)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        encoded = [rowsmod.encode(r, tok, cfg.max_len) for r in records]
        train_idx, held_idx = rowsmod.split(len(records), cfg.eval_split, cfg.seed)
        train_ex = [encoded[i] for i in train_idx if encoded[i] is not None]
        held_ex = [encoded[i] for i in held_idx if encoded[i] is not None]
        if not train_ex:
            raise FactoryInputError(f"none of the {len(train_idx)} training rows has a token to learn from at "
                                    f"max_len={cfg.max_len}")
        model = tr.wrap_lora(model, cfg)
        try:
            fit = tr.fit(model, train_ex, cfg, pad, progress)
        except KeyboardInterrupt:
            raise TrainingInterrupted("training stopped (interrupted); nothing was written") from None
        evaluation = tr.evaluate(model, held_ex, cfg.batch, pad)
        evaluation["samples"] = tr.samples(model, tok, held_ex or train_ex, cfg, pad)
        weights = output.weights_bytes(output.lora_tensors(model))
    import hashlib
    manifest = {
        "schema": output.SCHEMA, "datanet": source, "base": ident, "hyperparameters": cfg.as_dict(),
        "seed": cfg.seed, "environment": output.environment(cfg.threads),
        "rows": {"count": len(records), "trained": len(train_ex), "held_out": len(held_ex),
                 "skipped": sum(e is None for e in encoded), "sha256": rowsmod.rows_digest(records),
                 "order": "manifest (contribution id, row order); held out by a seeded permutation"},
        "training": {"steps": fit.steps, "tokens": fit.tokens, "final_loss": _fig(fit.final_loss),
                     "optimizer": "AdamW(betas=0.9,0.999, eps=1e-8, weight_decay=0), constant lr",
                     "loss": "mean cross entropy over label tokens"},
        "evaluation": evaluation, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    files = output.build_files(cfg, ident["model_id"], author, weights, manifest)
    cid = output.tree_cid(files)
    if out_dir is not None:
        output.write_dir(Path(out_dir), files)
    return TrainResult(cid, Path(out_dir) if out_dir is not None else None, manifest, files, fit.steps, fit.tokens,
                       fit.seconds, fit.tokens / fit.seconds if fit.seconds > 0 else 0.0, fit.final_loss)


def train_rows(base_dir: Path | str, rows: list[str | dict[str, str]], out_dir: Path | str | None = None, *,
               rank: int = 8, alpha: float = 16.0, targets: tuple[str, ...] | list[str] = ("q_proj", "v_proj"),
               epochs: int = 1, lr: float = 1e-3, batch: int = 4, max_len: int = 256, seed: int = 0,
               eval_split: float = 0.0, threads: int = 1, samples: int = 0, author: str = "",
               progress: Callable[[tr.Progress], None] | None = None) -> TrainResult:
    """Train a LoRA adapter on plain rows without a chain (see the package docstring)."""
    cfg = TrainConfig(rank=rank, alpha=alpha, targets=tuple(targets), epochs=epochs, lr=lr, batch=batch,
                      max_len=max_len, seed=seed, eval_split=eval_split, threads=threads, samples=samples)
    return train(rowsmod.records_from_rows(rows), base_dir, out_dir, cfg, author=author, progress=progress)


def config_of(manifest: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict(manifest["hyperparameters"])


def check_base(manifest: dict[str, Any], base_dir: Path | str) -> dict[str, str]:
    """The base directory's identity, or a one-line FactoryInputError when it is not the manifest's base."""
    want = manifest.get("base") or {}
    have = output.base_identity(Path(base_dir))
    if have.get("weights_cid") != want.get("weights_cid"):
        raise FactoryInputError(f"base model mismatch: the adapter was trained on {want.get('model_id')!r} (weights "
                                f"{want.get('weights_cid')}), {base_dir} is {have['model_id']!r} (weights "
                                f"{have['weights_cid']}); pass --base with that model")
    return have


def reproduce(manifest: dict[str, Any], records: list[rowsmod.Record], base_dir: Path | str, *, author: str = "",
              progress: Callable[[tr.Progress], None] | None = None) -> TrainResult:
    """Retrain from `manifest`'s recipe on `records` and `base_dir` (checked to be its base); nothing is written."""
    ident = check_base(manifest, base_dir)
    return train(records, base_dir, None, config_of(manifest), source=manifest.get("datanet"), author=author,
                 progress=progress, base=ident)


def _walk(path: str, a: Any, b: Any, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            _walk(f"{path}.{k}" if path else k, a.get(k), b.get(k), out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(f"{path}[{i}]", x, y, out)
    elif a != b or type(a) is not type(b):
        out.append(f"{path}: original {a!r:.120}, reproduction {b!r:.120}")


def differences(old: dict[str, bytes], new: dict[str, bytes]) -> list[str]:
    """What differs between two factory outputs (file by file; the factory manifests field by field)."""
    out = [f"{name}: the bytes differ" for name in (output.WEIGHTS, output.CONFIG) if old.get(name) != new.get(name)]
    om = output.read_factory_manifest(old[output.FACTORY], "original")
    nm = output.read_factory_manifest(new[output.FACTORY], "reproduction")
    _walk("factory-manifest", om, nm, out)
    if old.get(output.MANIFEST) != new.get(output.MANIFEST) and not out:
        out.append(f"{output.MANIFEST}: the bytes differ")
    return out
