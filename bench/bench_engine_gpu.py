"""End-to-end multi-adapter cost on a GPU: a batch with 64 distinct adapters vs the same batch with no adapters.

    python bench/bench_engine_gpu.py                       # Llama-3-8B layer shapes, 8 layers, bf16, 64 adapters
    python bench/bench_engine_gpu.py --layers 32 --json out.json
    python bench/bench_engine_gpu.py --engine-opt lora_sliced_launch=false   # one LoRA launch pair per target

The model is a random checkpoint with Llama-3-8B's layer shapes (hidden 4096, intermediate 14336, 32 query / 8 KV
heads of 128; vocab 32000; --layers of them), written as an ordinary HF directory (bf16 safetensors) and loaded by
the engine like any other. Adapters are ordinary PEFT directories (rank --rank on --targets), written directly.
Every request names one of --adapters adapters, round robin, so every full batch holds all of them. After one
untimed run per side (compiles, adapter loads, graph captures), side by side in one process, alternating --reps
times (best of each kept, and each alternating pair's ratio printed: their spread is the noise), same requests:
  * offline throughput (all requests queued at t=0): generated tokens/s with adapters and with none;
  * a decode-only figure: tokens/s of decode steps alone (prefill steps excluded), with adapters and with none.
EOS is ignored so that both sides generate exactly the same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from openlora.devnet.tinymodels import TinySpec, _hf_config, build_tokenizer, write_lora_files  # noqa: E402
from openlora.inference import LLM, SamplingParams  # noqa: E402

TARGETS = {"qkvo": ("q_proj", "k_proj", "v_proj", "o_proj"),
           "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}


def build_model(out: Path, layers: int, hidden: int, inter: int, heads: int, kv_heads: int, vocab: int,
                device: str) -> Path:
    """A random HF Llama checkpoint in bf16, weights drawn on `device` (fast at 8B shapes)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, vocab)
    spec = TinySpec(arch="llama", hidden_size=hidden, intermediate_size=inter, num_layers=layers, num_heads=heads,
                    num_kv_heads=kv_heads, vocab_size=vocab, max_position_embeddings=8192, seed=0,
                    initializer_range=0.02)
    cfg = _hf_config(spec, max(vocab, len(tok)), tok.bos_token_id, tok.eos_token_id)
    cfg.name_or_path = "openlora/bench-llama3-8b-shapes"
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(out)
    (out / "openlora_tiny.json").write_text(json.dumps({"base_model_id": cfg.name_or_path}))
    g = torch.Generator(device=device).manual_seed(0)
    hd = hidden // heads
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, hidden), "lm_head.weight": (cfg.vocab_size, hidden),
              "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                       p + "self_attn.q_proj.weight": (heads * hd, hidden),
                       p + "self_attn.k_proj.weight": (kv_heads * hd, hidden),
                       p + "self_attn.v_proj.weight": (kv_heads * hd, hidden),
                       p + "self_attn.o_proj.weight": (hidden, heads * hd),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter)})
    tensors = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g, device=device)
        else:
            t = torch.randn(shape, generator=g, device=device) * (0.02 if "embed" in name else shape[1] ** -0.5)
        tensors[name] = t.to(torch.bfloat16).cpu()
    save_file(tensors, str(out / "model.safetensors"))
    return out


def requests(n: int, n_adapters: int, in_len: int, out_len: int, vocab: int):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, vocab, (in_len,), generator=g).tolist() for _ in range(n)]
    return prompts, [f"lora{i % n_adapters}" for i in range(n)], out_len


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(llm: LLM, prompts, adapters, out_len: int) -> dict:
    """Offline: every request queued, then stepped to the end; decode steps timed on their own."""
    eng = llm.engine
    params = SamplingParams(max_tokens=out_len, temperature=0.0, ignore_eos=True)
    _sync()
    t0 = time.perf_counter()
    for p, a in zip(prompts, adapters):
        eng.add_request(p, params, a)
    decode_s, decode_tokens, steps = 0.0, 0, 0
    while eng.has_unfinished():
        eng.last_step = None
        ts = time.perf_counter()
        eng.step()
        dt = time.perf_counter() - ts
        steps += 1
        if eng.last_step is not None and eng.last_step.decode:
            decode_s += dt
            decode_tokens += eng.last_step.num_tokens
    _sync()
    total = time.perf_counter() - t0
    toks = len(prompts) * out_len
    res = {"seconds": total, "tokens_per_s": toks / total, "steps": steps}
    if decode_s:
        res.update(decode_seconds=decode_s, decode_tokens_per_s=decode_tokens / decode_s)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--adapters", type=int, default=64)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--targets", choices=sorted(TARGETS), default="qkvo")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64, help="max_num_seqs: sequences decoded together")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    ap.add_argument("--engine-opt", action="append", default=[],
                    help="extra EngineConfig field=value (int/bool parsed), e.g. --engine-opt cuda_graphs=false")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_engine_gpu.py needs a CUDA device (bench/bench_engine.py is the CPU benchmark)")
    extra = {}
    for kv in args.engine_opt:
        k, v = kv.split("=", 1)
        extra[k] = {"true": True, "false": False}.get(v.lower(), int(v) if v.lstrip("-").isdigit() else v)

    work = Path(tempfile.mkdtemp(prefix="openlora-gpu-bench-"))
    t = time.perf_counter()
    model = build_model(work / "model", args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads,
                        args.vocab, "cuda")
    targets = TARGETS[args.targets]
    for i in range(args.adapters):
        write_lora_files(work / f"lora{i}", model, rank=args.rank, alpha=2.0 * args.rank, targets=targets, seed=i)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; built {args.layers}-layer model and "
          f"{args.adapters} adapters (rank {args.rank}, {args.targets}) in {time.perf_counter() - t:.0f} s", flush=True)

    kv_bytes = 2 * args.layers * args.kv_heads * (args.hidden // args.heads) * 2 * \
        (args.input_len + args.output_len + 16) * args.requests
    llm = LLM(model, dtype="bfloat16", device="cuda", kernel_backend=args.backend, max_num_seqs=args.batch,
              max_num_batched_tokens=max(2048, args.input_len * 4), kv_cache_bytes=int(kv_bytes * 1.2),
              max_loras=max(args.adapters, 8), lora_pool_bytes=2 * 2**30, enable_prefix_caching=False, **extra)
    for i in range(args.adapters):
        llm.load_adapter(f"lora{i}", work / f"lora{i}")
    prompts, names, out_len = requests(args.requests, args.adapters, args.input_len, args.output_len, args.vocab)
    # warm-up: one whole run per side (Triton compiles, adapters copied into the device pool, every batch-size
    # bucket's graph captured), so that no timed run pays a compile or a capture
    run(llm, prompts, names, out_len)
    run(llm, prompts, [None] * len(prompts), out_len)
    sides = {"adapters": [], "none": []}
    for _ in range(args.reps):
        sides["adapters"].append(run(llm, prompts, names, out_len))
        sides["none"].append(run(llm, prompts, [None] * len(prompts), out_len))
    best = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in sides.items()}
    ratio = best["adapters"]["tokens_per_s"] / best["none"]["tokens_per_s"]
    pair_ratios = [a["tokens_per_s"] / n["tokens_per_s"] for a, n in zip(sides["adapters"], sides["none"])]
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "args": vars(args) | {"json": None},
              "backend": llm.engine.backend.description, "runs": sides, "best": best, "ratio": ratio,
              "pair_ratios": pair_ratios}
    line = (f"{args.adapters} distinct adapters (rank {args.rank}, {args.targets}) vs none, {args.requests} requests "
            f"x ({args.input_len} in, {args.output_len} out), batch {args.batch}, {args.layers} layers: "
            f"{best['adapters']['tokens_per_s']:.0f} vs {best['none']['tokens_per_s']:.0f} tok/s = {ratio:.3f} (best of "
            f"{args.reps}; alternating pairs {', '.join(f'{r:.3f}' for r in pair_ratios)})")
    if "decode_tokens_per_s" in best["adapters"] and "decode_tokens_per_s" in best["none"]:
        d = best["adapters"]["decode_tokens_per_s"] / best["none"]["decode_tokens_per_s"]
        result["decode_ratio"] = d
        line += (f"; decode steps alone {best['adapters']['decode_tokens_per_s']:.0f} vs "
                 f"{best['none']['decode_tokens_per_s']:.0f} tok/s = {d:.3f}")
    print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
