"""Training hyper-parameters as one frozen, validated dataclass, and the canonical JSON the factory writes.

What it does: `TrainConfig` holds every knob that changes the trained weights (rank, alpha, target modules, epochs,
learning rate, batch, max length, seed, held-out split, threads, gradient clip); `__post_init__` refuses bad values
with a one-line `FactoryInputError` (rank 0, lr <= 0, unknown target modules...). `as_dict()` is what the factory
manifest records; `from_dict()` reads it back (for `factory verify`). `canonical_json` is sorted keys, no spaces,
UTF-8, finite floats in Python's shortest repr: the same object gives the same bytes on every machine.
What it does not do: choose the device or read files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from openlora.factory.errors import FactoryInputError

#: The projections a LoRA may target (the engine's explicit table: inference/lora.py).
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    epochs: int = 1
    lr: float = 1e-3
    batch: int = 4
    max_len: int = 256
    seed: int = 0
    eval_split: float = 0.1     # share of rows held out (0 <= s < 1), chosen by a seeded permutation
    threads: int = 1            # torch intra-op threads: part of the result on CPU (reduction order)
    grad_clip: float = 1.0      # max global grad norm (0: off)
    samples: int = 3            # held-out rows generated from, base vs adapter
    sample_tokens: int = 32     # tokens generated per sample (greedy)

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise FactoryInputError(msg)
        for name in ("rank", "epochs", "batch", "max_len", "seed", "threads", "samples", "sample_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                bad(f"{name} must be an integer, got {v!r:.80}")
        for name in ("alpha", "lr", "eval_split", "grad_clip"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(f"{name} must be a finite number, got {v!r:.80}")
        if not 1 <= self.rank <= 256:
            bad(f"rank must be 1..256, got {self.rank}")
        if self.alpha <= 0:
            bad(f"alpha must be > 0, got {self.alpha}")
        if self.lr <= 0 or self.lr > 1:
            bad(f"lr (learning rate) must be > 0 and <= 1, got {self.lr}")
        if not 1 <= self.epochs <= 1000:
            bad(f"epochs must be 1..1000, got {self.epochs}")
        if not 1 <= self.batch <= 4096:
            bad(f"batch must be 1..4096, got {self.batch}")
        if not 8 <= self.max_len <= 32768:
            bad(f"max_len must be 8..32768 tokens, got {self.max_len}")
        if not 0 <= self.seed < 2**63:
            bad(f"seed must be 0..2^63-1, got {self.seed}")
        if not 0 <= self.eval_split < 1:
            bad(f"eval_split must be >= 0 and < 1, got {self.eval_split}")
        if not 1 <= self.threads <= 1024:
            bad(f"threads must be 1..1024, got {self.threads}")
        if self.grad_clip < 0:
            bad(f"grad_clip must be >= 0 (0: off), got {self.grad_clip}")
        if not 0 <= self.samples <= 16 or not 1 <= self.sample_tokens <= 512:
            bad(f"samples must be 0..16 and sample_tokens 1..512, got {self.samples} and {self.sample_tokens}")
        targets = self.targets
        if isinstance(targets, str):
            targets = tuple(t.strip() for t in targets.split(",") if t.strip())
        if not targets:
            bad("targets: name at least one module (e.g. q_proj,v_proj)")
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            bad(f"targets: unknown module(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(TARGETS)}")
        # sorted and unique: peft keeps target_modules in a set whose order changes with PYTHONHASHSEED
        object.__setattr__(self, "targets", tuple(sorted(set(targets))))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "eval_split", float(self.eval_split))
        object.__setattr__(self, "grad_clip", float(self.grad_clip))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "TrainConfig":
        if not isinstance(d, dict):
            raise FactoryInputError(f"hyper-parameters must be an object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            names = ", ".join(f"{k[:40]!r}" if not k.isidentifier() else k for k in unknown[:5])
            raise FactoryInputError(f"unknown hyper-parameter(s): {names}{' ...' if len(unknown) > 5 else ''}")
        kw = dict(d)
        if isinstance(kw.get("targets"), list):
            if not all(isinstance(t, str) for t in kw["targets"]):
                raise FactoryInputError("targets must be a list of module names")
            kw["targets"] = tuple(kw["targets"])
        return cls(**kw)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8; floats must be finite (json writes them in their shortest repr)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


#: The demo adapter's recipe (`make start` / docs/benchmarks.md "Model Factory"): the demo Datanet on SmolLM2-135M.
DEMO_RECIPE = TrainConfig(rank=8, alpha=16.0, targets=("q_proj", "v_proj"), epochs=1, lr=1e-3, batch=4, max_len=128,
                          seed=0, eval_split=0.1, threads=1, samples=2, sample_tokens=32)
