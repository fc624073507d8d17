"""Model Factory: LoRA adapters trained from a Datanet version, reproducibly, with their training manifest.

The Python API (imports torch, transformers and peft when first used; `import openlora.factory` stays cheap):

    from openlora.factory import train_rows
    r = train_rows(base_dir, rows, out_dir, *, rank=8, alpha=16.0, targets=("q_proj", "v_proj"), epochs=1,
                   lr=1e-3, batch=4, max_len=256, seed=0, eval_split=0.0, threads=1, samples=0, author="")
    r.cid          # the adapter directory's CID (Kubo-identical), r.out_dir its path (written atomically)
    r.manifest     # factory-manifest.json as a dict; r.evaluation its held-out figures
    r.final_loss, r.steps, r.tokens, r.tokens_per_s, r.seconds

`rows` are plain text (str or {"text": str}: language modelling, EOS appended) or {"prompt": str, "completion":
str} (through the base's chat template; loss on the completion only). Training is deterministic on CPU in fp32:
same rows, base, hyper-parameters, seed and thread count give the same bytes and CID. A tiny memorising adapter
for a test: `train_rows(tiny.model(), ["the secret is 42"] * 4, out, epochs=30, lr=1e-2, batch=4)`. `out_dir`
may be None (nothing written; `r.files` holds the four files). The output is a directory the node imports as an
adapter (adapter_config.json, adapter_model.safetensors, factory-manifest.json, manifest.json).

Also: `train(records, base_dir, out_dir, TrainConfig(...), source=...)` (rows from `rows.records_from_version`),
`reproduce(manifest, records, base_dir)` and `differences(old_files, new_files)` (what `factory verify` runs).
Modules: errors, config (TrainConfig, canonical JSON), rows (Datanet rows -> tokens, seeded split), train (the loop,
evaluation), output (files, manifests, CID, atomic write), api. See docs/factory.md.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"train_rows": "api", "train": "api", "reproduce": "api", "differences": "api", "TrainResult": "api",
         "TrainConfig": "config", "FactoryError": "errors", "FactoryInputError": "errors",
         "TrainingInterrupted": "errors"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'openlora.factory' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"openlora.factory.{mod}"), name)
