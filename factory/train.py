"""The training loop: LoRA (peft) on a frozen base model, deterministic on CPU in fp32, and its evaluation.

What it does: `deterministic(threads)` fixes torch for one run (thread count, deterministic algorithms; restored
after). `load(base_dir, cfg)` loads the HF base in fp32 and wraps it with a peft LoRA (no dropout, LoRA A drawn from
torch's generator seeded with cfg.seed, B zero). `fit(model, examples, cfg, progress)` runs AdamW at a constant
learning rate over `epochs` seeded permutations of the rows, in batches padded on the right, loss = mean cross
entropy over label tokens, global grad-norm clip; `progress(Progress)` is called after every step (the CLI prints
step, loss, tokens/s and ETA on stderr). `evaluate` measures held-out loss and perplexity with the adapter on and
off, and `samples` generates greedily from a few held-out prompts with both.
What it does not do: write files (output.py) or read Datanets (rows.py). Nothing here is timed into the results:
speed is returned beside them, never stored in the manifest.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from openlora.factory.config import TrainConfig
from openlora.factory.rows import IGNORE, Example, epoch_order


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    epoch: int
    loss: float
    tokens_per_s: float
    eta_s: float


@dataclass(frozen=True)
class FitResult:
    steps: int
    tokens: int             # input tokens processed (padding excluded)
    seconds: float
    final_loss: float       # mean loss of the last epoch's steps
    losses: tuple[float, ...]


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    import torch
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def load_base(base_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()       # the factory prints its own progress line
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model.config.use_cache = False
    return tok, model


def wrap_lora(model: Any, cfg: TrainConfig) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(cfg.seed)     # LoRA A's kaiming init draws from torch's default generator
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.targets), lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM", init_lora_weights=True, use_rslora=False)
    return get_peft_model(model, lcfg)


def _batch(examples: list[Example], pad: int) -> tuple[Any, Any, Any, int]:
    import torch
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)             # [B, T]
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)      # [B, T]
    mask = torch.zeros((len(examples), width), dtype=torch.long)               # [B, T]
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids, labels, mask, int(mask.sum())


def _split_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) of a Llama-family causal LM under peft (LoRA layers injected in place), else None."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = getattr(inner, "model", None), getattr(inner, "lm_head", None)
    if decoder is None or head is None or getattr(inner.config, "final_logit_softcapping", None):
        return None
    return decoder, head


def batch_loss(model: Any, examples: list[Example], pad: int) -> tuple[Any, int, int]:
    """(sum of label-token losses, label tokens, input tokens) of one padded batch.

    The vocabulary projection runs only at positions that predict a label (not at padding or prompt positions):
    on a 135M model with a 49k vocabulary it is a fifth of the forward and backward."""
    import torch.nn.functional as F
    ids, labels, mask, tokens = _batch(examples, pad)
    target = labels[:, 1:]                                                     # [B, T-1] next-token labels
    keep = target != IGNORE                                                    # [B, T-1]
    split = _split_head(model)
    if split is None:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep]   # [N, V]
    else:
        decoder, head = split
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state    # [B, T, H]
        logits = head(hidden[:, :-1][keep])                                        # [N, V]
    loss_sum = F.cross_entropy(logits, target[keep], reduction="sum")
    return loss_sum, int(keep.sum()), tokens


def fit(model: Any, examples: list[Example], cfg: TrainConfig, pad: int,
        progress: Callable[[Progress], None] | None = None) -> FitResult:
    import torch
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=False)
    per_epoch = math.ceil(len(examples) / cfg.batch)
    steps = per_epoch * cfg.epochs
    model.train()
    step, tokens, losses = 0, 0, []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = epoch_order(len(examples), cfg.seed, epoch)
        for b in range(per_epoch):
            batch = [examples[i] for i in order[b * cfg.batch:(b + 1) * cfg.batch]]
            loss_sum, n_labels, n_tokens = batch_loss(model, batch, pad)
            loss = loss_sum / max(1, n_labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=False)
            opt.step()
            step += 1
            tokens += n_tokens
            losses.append(float(loss.detach()))
            if progress is not None:
                dt = time.perf_counter() - t0
                progress(Progress(step, steps, epoch + 1, losses[-1], tokens / dt if dt > 0 else 0.0,
                                  dt / step * (steps - step)))
    model.eval()
    last = losses[-per_epoch:] if losses else [float("nan")]
    return FitResult(step, tokens, time.perf_counter() - t0, sum(last) / len(last), tuple(losses))


def _loss(model: Any, examples: list[Example], batch: int, pad: int) -> tuple[float, int]:
    import torch
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch):
            s, k, _ = batch_loss(model, examples[i:i + batch], pad)
            total += float(s)
            n += k
    return (total / n if n else float("nan")), n


def _fig(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def evaluate(model: Any, held: list[Example], batch: int, pad: int) -> dict[str, Any]:
    """Held-out loss and perplexity, base (adapter disabled) and adapter, rounded to 6 decimals."""
    if not held:
        return {"held_out_rows": 0, "held_out_tokens": 0, "base_loss": None, "adapter_loss": None,
                "base_ppl": None, "adapter_ppl": None}
    with model.disable_adapter():
        base, n = _loss(model, held, batch, pad)
    adapter, _ = _loss(model, held, batch, pad)
    return {"held_out_rows": len(held), "held_out_tokens": n, "base_loss": _fig(base), "adapter_loss": _fig(adapter),
            "base_ppl": _fig(math.exp(min(base, 700.0))), "adapter_ppl": _fig(math.exp(min(adapter, 700.0)))}


def _generate(model: Any, tok: Any, prompt_ids: tuple[int, ...], n: int, pad: int) -> str:
    import torch
    ids = torch.tensor([list(prompt_ids)])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=pad, use_cache=True)
    return tok.decode(out[0, len(prompt_ids):].tolist(), skip_special_tokens=True)


def samples(model: Any, tok: Any, examples: list[Example], cfg: TrainConfig, pad: int) -> list[dict[str, str]]:
    """Greedy continuations of the first `cfg.samples` examples' prompts, base vs adapter."""
    out = []
    for e in examples[:cfg.samples]:
        prompt = e.ids[:e.prompt_len]
        with model.disable_adapter():
            base = _generate(model, tok, prompt, cfg.sample_tokens, pad)
        adapted = _generate(model, tok, prompt, cfg.sample_tokens, pad)
        out.append({"prompt": tok.decode(list(prompt), skip_special_tokens=False)[-400:], "base": base[:600],
                    "adapter": adapted[:600]})
    return out
