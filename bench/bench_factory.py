"""Model Factory figures for docs/benchmarks.md: training throughput against HF Trainer + PEFT, the demo adapter's
training time and held-out perplexity (base vs adapter) on the demo Datanet with the real base, and the time of a
reproduction (what `factory verify` spends retraining).

What it does:
1. throughput: the same rows (the demo Datanet's first --rows rows), the same LoRA (rank, alpha, targets, init seed),
   the same batches (our encode + right padding, in the same order), AdamW at a constant lr, grad clip 1.0, on the
   same base: our loop (openlora.factory.train.fit) and `transformers.Trainer` on a PEFT model, --pairs pairs run
   side by side in one process, the order swapped every pair; tokens/s = input tokens (padding excluded) / wall
   time of the training call alone (model loading excluded on both sides). Reports each pair and the median ratio.
2. demo adapter: the demo Datanet version built exactly as the devnet seed builds it (datanets.manifest over the
   same files, one near duplicate flagged and skipped), trained with the demo recipe; reports training time, tokens,
   held-out loss/perplexity of base and adapter and the sample generations.
3. verify: `reproduce` of (2) from its manifest; reports its wall time and whether the CID is the same.
Run from the repo root: `.venv/bin/python bench/bench_factory.py` (--tiny: a tiny random base, for a smoke run).
What it does not do: use a GPU (the factory's bit-identical promise is for CPU fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openlora.factory import api, rows as rowsmod, train as tr  # noqa: E402
from openlora.factory.config import TrainConfig  # noqa: E402

from openlora.factory.config import DEMO_RECIPE  # noqa: E402

DEMO = DEMO_RECIPE.as_dict()


def demo_version() -> tuple[str, list]:
    """The demo Datanet's version 1 (devnet/demo_texts.py through datanets/, as devnet/seed.py publishes it)."""
    from openlora.datanets import contribution as contrib
    from openlora.datanets import manifest as mf
    from openlora.devnet.demo_texts import CONTRIBUTIONS
    from openlora.devnet.seed import MemoryBlocks
    blocks = MemoryBlocks()
    accepted = []
    for i, (who, name, data, license_, accept, _reason) in enumerate(CONTRIBUTIONS, 1):
        cid = contrib.store(contrib.prepare(data, name), blocks, license_)
        if accept:
            accepted.append(mf.Accepted(i, f"0x{who:040x}", cid))
    cid = mf.add(mf.build(1, 1, accepted, blocks.get), blocks)
    return cid, rowsmod.records_from_version(cid, blocks.get)[1]


def hf_trainer_run(base_dir: Path, examples: list, cfg: TrainConfig, pad: int, tmp: Path) -> tuple[float, float, int]:
    """HF Trainer + PEFT on the same batches; returns (wall s, process CPU s in trainer.train(), input tokens)."""
    import torch
    from transformers import Trainer, TrainingArguments

    _tok, model = tr.load_base(base_dir)
    model = tr.wrap_lora(model, cfg)

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(examples)

        def __getitem__(self, i):
            return examples[i]

    def collate(batch):
        ids, labels, mask, _ = tr._batch(list(batch), pad)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    class InOrder(Trainer):          # the same batch order as ours (no shuffling)
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=cfg.batch, num_train_epochs=1,
                             learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                             max_grad_norm=cfg.grad_clip, optim="adamw_torch", logging_strategy="no",
                             save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                             seed=cfg.seed, disable_tqdm=True, remove_unused_columns=False)
    trainer = InOrder(model=model, args=args, train_dataset=Rows(), data_collator=collate)
    tokens = sum(len(e.ids) for e in examples)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    return time.perf_counter() - t0, time.process_time() - c0, tokens


def ours_run(base_dir: Path, examples: list, cfg: TrainConfig, pad: int) -> tuple[float, float, int]:
    _tok, model = tr.load_base(base_dir)
    model = tr.wrap_lora(model, cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    fit = tr.fit(model, examples, cfg, pad)
    return time.perf_counter() - t0, time.process_time() - c0, fit.tokens


def throughput(base_dir: Path, records: list, n_rows: int, pairs: int, threads: int) -> dict:
    import tempfile
    cfg = TrainConfig(**{**DEMO, "threads": threads, "eval_split": 0.0})
    tok, _ = tr.load_base(base_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    enc = [e for e in (rowsmod.encode(r, tok, cfg.max_len) for r in records[:n_rows]) if e is not None]
    # our loop visits rows in a seeded permutation: hand both sides that order, so the batches are identical
    examples = [enc[i] for i in rowsmod.epoch_order(len(enc), cfg.seed, 0)]
    fixed = TrainConfig(**{**cfg.as_dict(), "targets": cfg.targets, "seed": cfg.seed})
    out = []
    with tr.deterministic(threads), tempfile.TemporaryDirectory() as tmp:
        for p in range(pairs):
            order = ("ours", "hf") if p % 2 == 0 else ("hf", "ours")
            res = {}
            for side in order:
                if side == "ours":
                    # fit() permutes by (seed, epoch): give it rows pre-permuted by the inverse, so it runs `examples`
                    perm = rowsmod.epoch_order(len(examples), fixed.seed, 0)
                    inv = [None] * len(examples)
                    for pos, i in enumerate(perm):
                        inv[i] = examples[pos]
                    s, c, n = ours_run(base_dir, inv, fixed, pad)
                else:
                    s, c, n = hf_trainer_run(base_dir, examples, fixed, pad, Path(tmp))
                res[side] = (n / s, n / c)
            (ow, oc), (hw, hc) = res["ours"], res["hf"]
            out.append({"order": list(order), "ours_tok_s": round(ow, 1), "hf_tok_s": round(hw, 1),
                        "ratio": round(ow / hw, 3), "ours_tok_per_cpu_s": round(oc, 1),
                        "hf_tok_per_cpu_s": round(hc, 1), "cpu_ratio": round(oc / hc, 3)})
            print(f"  pair {p + 1} ({' then '.join(order)}): wall: ours {ow:.1f} tok/s, HF Trainer {hw:.1f} tok/s, "
                  f"ratio {ow / hw:.3f}; per CPU-second: ours {oc:.1f}, HF Trainer {hc:.1f}, ratio {oc / hc:.3f}",
                  flush=True)
    return {"rows": len(examples), "tokens": sum(len(e.ids) for e in examples), "pairs": out,
            "median_ratio": round(statistics.median(p["ratio"] for p in out), 3),
            "median_cpu_ratio": round(statistics.median(p["cpu_ratio"] for p in out), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny random base instead of SmolLM2-135M-Instruct")
    ap.add_argument("--rows", type=int, default=24, help="rows in the throughput comparison")
    ap.add_argument("--pairs", type=int, default=3, help="alternating pairs in the throughput comparison")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: throughput,demo,verify")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.tiny:
        import tempfile

        from openlora.devnet.tinymodels import build_tiny_model
        base = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
    else:
        from openlora.devnet.base_model import ensure_base_model
        base = ensure_base_model()
    print(f"base {base}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    version_cid, records = demo_version()
    print(f"demo Datanet version {version_cid}: {len(records)} rows (duplicates skipped)", flush=True)
    figures: dict = {"base": str(base), "version_cid": version_cid, "rows": len(records),
                     "loadavg_start": os.getloadavg()[0]}
    if "throughput" not in skip:
        print(f"throughput, {args.rows} rows, {args.pairs} alternating pairs:", flush=True)
        figures["throughput"] = throughput(base, records, args.rows, args.pairs, args.threads)
        print(f"  median ours / HF Trainer: wall {figures['throughput']['median_ratio']}, per CPU-second "
              f"{figures['throughput']['median_cpu_ratio']}", flush=True)
    if "demo" not in skip:
        cfg = TrainConfig(**{**DEMO, "threads": args.threads})
        t0, c0 = time.perf_counter(), time.process_time()
        r = api.train(records, base, None, cfg, source={"id": 1, "version": 1, "manifest_cid": version_cid})
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        e = r.evaluation
        figures["demo"] = {"cid": r.cid, "steps": r.steps, "tokens": r.tokens, "train_s": round(r.seconds, 1),
                           "total_s": round(total, 1), "total_cpu_s": round(cpu, 1), "tokens_per_s": round(r.tokens_per_s, 1),
                           "evaluation": e, "hyperparameters": cfg.as_dict()}
        print(f"demo adapter {r.cid}: {r.steps} steps, {r.tokens:,} tokens, training {r.seconds:.1f} s "
              f"({r.tokens_per_s:.1f} tok/s), {total:.1f} s with loading, evaluation and samples ({cpu:.1f} CPU-s)",
              flush=True)
        print(f"  held-out ({e['held_out_rows']} rows, {e['held_out_tokens']} tokens): base loss {e['base_loss']} "
              f"ppl {e['base_ppl']}, adapter loss {e['adapter_loss']} ppl {e['adapter_ppl']}", flush=True)
        for s in e["samples"]:
            print(f"  prompt ...{s['prompt'][-60:]!r}\n    base:    {s['base'][:120]!r}\n"
                  f"    adapter: {s['adapter'][:120]!r}", flush=True)
        if "verify" not in skip:
            t0, c0 = time.perf_counter(), time.process_time()
            again = api.reproduce(r.manifest, records, base)
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            figures["verify"] = {"seconds": round(secs, 1), "cpu_s": round(cpu, 1), "same_cid": again.cid == r.cid}
            print(f"verify (retrain from the manifest): {secs:.1f} s ({cpu:.1f} CPU-s), same CID: "
                  f"{again.cid == r.cid}", flush=True)
    figures["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
