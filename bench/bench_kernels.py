"""Kernel benchmark: batched LoRA (SGMV/BGMV shrink/expand), paged-attention decode and the K/V store.

    .venv/bin/python bench/bench_kernels.py                  # CUDA: Triton kernels; else the CPU path
    .venv/bin/python bench/bench_kernels.py --json out.json  # also write the rows as JSON

On CUDA every op is timed alone as one replay of a CUDA graph holding it (CUDA events, median of --iters runs
after --warmup runs, each after a 256 MB L2 flush) for Llama-3-8B-like shapes
(hidden 4096, ranks 8..128, 1..512 tokens, 1..64 distinct adapters) and printed with the bytes and flops it must
move, the achieved GB/s and TFLOP/s, and its floor: max(bytes / peak bandwidth, flops / peak tensor flops), with
peak bandwidth both from the datasheet and measured (a device-to-device copy). The goals checked:
  * BGMV decode at >= 70% of memory bandwidth;
  * mixed-rank SGMV prefill no slower than the same batch padded to the maximum rank (measured side by side);
  * a layer-level proxy of the end-to-end goal: the 7 projections of a Llama layer at decode with 64 distinct
    adapters cost at most 1/0.85 of the base projections alone (bench/bench_engine.py measures it end to end).
Without CUDA it runs the CPU path: the torch references at smaller shapes (wall-clock medians), the same two
side-by-side ratios, and the Triton kernels interpreted once on a tiny shape as a correctness smoke test (the
interpreter's time is no performance figure). It then lists plainly which GPU figures are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")    # before kernels/triton_* (and their @triton.jit) load

from openlora.kernels import reference  # noqa: E402

# Datasheet figures: dense 16-bit tensor TFLOP/s and memory GB/s, matched by substring of the device name.
PEAKS = {
    "H200": (989.0, 4800.0), "H100 SXM": (989.0, 3350.0), "H100 80GB HBM3": (989.0, 3350.0),
    "H100 PCIe": (756.0, 2000.0), "H100 NVL": (835.0, 3900.0), "A100-SXM4-80GB": (312.0, 2039.0),
    "A100 80GB PCIe": (312.0, 1935.0), "A100": (312.0, 1555.0), "L40S": (362.0, 864.0), "L40": (181.0, 864.0), "L4": (121.0, 300.0),
    "A10": (125.0, 600.0), "RTX 4090": (165.0, 1008.0), "RTX 3090": (71.0, 936.0),
}

GPU_GOALS = [
    "BGMV decode achieved bandwidth vs peak (goal >= 70%)",
    "mixed-rank SGMV prefill vs padded to max rank, Triton on GPU (goal ratio <= 1.0)",
    "kernel GB/s and TFLOP/s for every op at Llama-3-8B shapes",
    "paged-attention decode bandwidth at Llama-3-8B heads",
    "layer-level LoRA overhead with Triton kernels, 64 adapters (goal base/lora >= 0.85)",
    "fused q/k/v LoRA as one sliced shrink + expand vs three separate pairs (bench/tune_lora.py on a GPU)",
    "end-to-end throughput 64 adapters vs none (bench/bench_engine.py on a GPU; goal >= 0.85)",
]


@dataclass
class Row:
    op: str
    shape: str
    ms: float
    bytes: int
    flops: int
    backend: str
    extra: dict = field(default_factory=dict)

    def gbps(self) -> float:
        return self.bytes / (self.ms * 1e-3) / 1e9

    def tflops(self) -> float:
        return self.flops / (self.ms * 1e-3) / 1e12


# ------------------------------------------------------------------------------------------------ timing


_FLUSH: torch.Tensor | None = None


def _flush_l2() -> None:
    """Overwrite a buffer larger than the L2 cache (H100: 50 MB): each timed run starts with cold caches, as a
    decode step does (the other layers' weights went through L2 in between), and the GPU is busy for ~0.1 ms while
    the host enqueues the timed launch, so Python launch overhead stays out of the kernel time."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")
    _FLUSH.zero_()


def time_op(fn, warmup: int, iters: int) -> float:
    """Median milliseconds of fn(): CUDA events around each run after an L2 flush on a GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    samples = []
    if CUDA:
        torch.cuda.synchronize()
        events = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            _flush_l2()
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        samples = [s.elapsed_time(e) for s, e in events]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def time_graph(fn, warmup: int, iters: int) -> float:
    """Median milliseconds of one replay of a CUDA graph holding fn() (no launch gaps: what a decode step captured
    in a graph pays), each replay after an L2 flush."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return time_op(g.replay, warmup, iters)


def kernel_time(fn, warmup: int, iters: int) -> float:
    """The op's own time: on CUDA one replay of a graph holding it (Triton's host launch path costs 35-130 us per
    op on a GPU host, more than the L2 flush hides, so plain events would time the host); on CPU wall-clock."""
    return time_graph(fn, warmup, iters) if CUDA else time_op(fn, warmup, iters)


def copy_bandwidth_gbps(device: str) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes), the practical memory roofline."""
    n = (1 << 30) if CUDA else (1 << 28)
    src = torch.empty(n // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    ms = time_op(lambda: dst.copy_(src), 3, 10 if CUDA else 5)
    return 2 * src.numel() * 2 / (ms * 1e-3) / 1e9


# ------------------------------------------------------------------------------------------------ problems


class LoRAProblem:
    """One projection's pool (mixed ranks, scattered rows) and a batch of tokens grouped by adapter."""

    def __init__(self, in_f: int, out_f: int, ranks: list[int], tokens_per_adapter: list[int], dtype, device,
                 seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.in_f, self.out_f, self.ranks, self.dtype = in_f, out_f, ranks, dtype
        starts, row = [], 0
        for r in ranks:
            starts.append(row)
            row += r
        self.a = (torch.randn(row, in_f, generator=g) / in_f ** 0.5).to(dtype).to(device)
        self.b = (torch.randn(row, out_f, generator=g) * 0.01).to(dtype).to(device)
        self.row_start = torch.tensor(starts, dtype=torch.int32, device=device)
        self.rank = torch.tensor(ranks, dtype=torch.int32, device=device)
        self.scale = torch.full((len(ranks),), 0.5, device=device)
        bounds = [0]
        for n in tokens_per_adapter:
            bounds.append(bounds[-1] + n)
        self.T = bounds[-1]
        self.seg_starts = torch.tensor(bounds, dtype=torch.int32, device=device)
        self.seg_slots = torch.arange(len(tokens_per_adapter), dtype=torch.int32, device=device)
        self.token_slots = torch.repeat_interleave(self.seg_slots, torch.tensor(tokens_per_adapter, device=device))
        self.token_slots = self.token_slots.to(torch.int32)
        self.max_rank = max(ranks)
        self.x = torch.randn(self.T, in_f, device=device).to(dtype)
        self.buf = torch.randn(self.T, self.max_rank, device=device)
        self.y = torch.randn(self.T, out_f, device=device).to(dtype)
        es = torch.finfo(dtype).bits // 8
        used = [ranks[s] for s in range(len(tokens_per_adapter)) if tokens_per_adapter[s] > 0]
        token_ranks = sum(ranks[s] * n for s, n in enumerate(tokens_per_adapter))
        self.shrink_bytes = self.T * in_f * es + sum(used) * in_f * es + token_ranks * 4
        self.expand_bytes = token_ranks * 4 + sum(used) * out_f * es + 2 * self.T * out_f * es
        self.shrink_flops = 2 * in_f * token_ranks
        self.expand_flops = 2 * out_f * token_ranks

    def ops(self, be, kind: str):
        if kind == "sgmv":
            meta = (self.seg_starts, self.seg_slots)
        else:
            meta = (self.token_slots,)
        shrink = lambda: getattr(be, f"{kind}_shrink")(self.x, self.a, self.buf, *meta, self.row_start, self.rank)  # noqa: E731
        expand = lambda: getattr(be, f"{kind}_expand")(self.buf, self.b, self.y, *meta, self.row_start,  # noqa: E731
                                                        self.rank, self.scale)
        return shrink, expand


def bench_lora(be, name: str, device: str, dtype, cases, warmup: int, iters: int) -> list[Row]:
    rows = []
    for kind, in_f, out_f, ranks, tokens in cases:
        p = LoRAProblem(in_f, out_f, ranks, tokens, dtype, device)
        shrink, expand = p.ops(be, kind)
        rank_desc = f"r={ranks[0]}" if len(set(ranks)) == 1 else f"r={min(ranks)}..{max(ranks)}"
        shape = f"T={p.T} adapters={len(tokens)} {rank_desc} {in_f}->{out_f}"
        rows.append(Row(f"{kind}_shrink", shape, kernel_time(shrink, warmup, iters), p.shrink_bytes,
                        p.shrink_flops, name))
        rows.append(Row(f"{kind}_expand", shape, kernel_time(expand, warmup, iters), p.expand_bytes,
                        p.expand_flops, name))
    return rows


def bench_mixed_vs_padded(be, name: str, device: str, dtype, hidden: int, tokens: list[int], ranks: list[int],
                          warmup: int, iters: int) -> dict:
    """The same SGMV batch with its own mixed ranks and with every adapter padded to the largest rank."""
    mixed = LoRAProblem(hidden, hidden, ranks, tokens, dtype, device, seed=1)
    padded = LoRAProblem(hidden, hidden, [max(ranks)] * len(ranks), tokens, dtype, device, seed=1)
    t = {}
    for label, p in (("mixed", mixed), ("padded", padded)):
        s, e = p.ops(be, "sgmv")
        t[label] = kernel_time(lambda: (s(), e()), warmup, iters)        # noqa: B023
    return dict(backend=name, hidden=hidden, tokens=sum(tokens), adapters=len(tokens),
                ranks=f"{min(ranks)}..{max(ranks)}", mixed_ms=t["mixed"], padded_ms=t["padded"],
                ratio=t["mixed"] / t["padded"])


def bench_layer_overhead(be, name: str, device: str, dtype, hidden: int, inter: int, kv: int, tokens: int,
                         adapters: int, rank: int, warmup: int, iters: int) -> dict:
    """Decode step of one Llama layer's projections: base F.linear alone vs base + LoRA on all 7 modules, with the
    form the engine picks for a decode step on this backend (BGMV at >= decode_bgmv_min_segments adapters, else SGMV)."""
    kind = "bgmv" if adapters >= getattr(be, "decode_bgmv_min_segments", 1) else "sgmv"
    g = torch.Generator().manual_seed(0)
    shapes = {"qkv": (hidden, [hidden, kv, kv]), "o": (hidden, [hidden]), "gate_up": (hidden, [inter, inter]),
              "down": (inter, [hidden])}
    weights = {m: (torch.randn(sum(outs), k, generator=g) * 0.01).to(dtype).to(device) for m, (k, outs) in
               shapes.items()}
    xs = {m: torch.randn(tokens, k, generator=g).to(dtype).to(device) for m, (k, _) in shapes.items()}
    per_adapter = [tokens // adapters + (1 if i < tokens % adapters else 0) for i in range(adapters)]
    problems = {m: [LoRAProblem(k, n, [rank] * adapters, per_adapter, dtype, device, seed=i) for i, n in
                    enumerate(outs)] for m, (k, outs) in shapes.items()}
    # the engine's layout: one sliced pool per fused linear (A [S, rows, in], B rows side by side, [S, slots]
    # tables), so each linear costs one shrink and one expand launch (kernels/reference.py, "Slices")
    fused = {m: dict(a=torch.stack([p.a for p in ps]), b=torch.cat([p.b for p in ps], 1).contiguous(),
                     rank=torch.stack([p.rank for p in ps]), scale=torch.stack([p.scale for p in ps]),
                     widths=tuple(outs), first=ps[0])
             for (m, ps), (_, outs) in zip(problems.items(), shapes.values())}
    buf = torch.empty(3, tokens, rank, device=device)

    def base():
        for m in shapes:
            torch.nn.functional.linear(xs[m], weights[m])

    def with_lora():
        for m, f in fused.items():
            y = torch.nn.functional.linear(xs[m], weights[m])
            p, b = f["first"], buf[:len(f["widths"])]
            meta = (p.token_slots,) if kind == "bgmv" else (p.seg_starts, p.seg_slots)
            getattr(be, f"{kind}_shrink")(xs[m], f["a"], b, *meta, p.row_start, f["rank"])
            getattr(be, f"{kind}_expand")(b, f["b"], y, *meta, p.row_start, f["rank"], f["scale"], 0, f["widths"])

    tb, tl = time_op(base, warmup, iters), time_op(with_lora, warmup, iters)
    row = dict(backend=name, form=kind, hidden=hidden, intermediate=inter, tokens=tokens, adapters=adapters,
               rank=rank, base_ms=tb, lora_ms=tl, ratio=tb / tl)
    if CUDA:      # the same two captured as CUDA graphs (the engine replays decode steps as graphs)
        gb, gl = time_graph(base, warmup, iters), time_graph(with_lora, warmup, iters)
        row.update(graph_base_ms=gb, graph_lora_ms=gl, graph_ratio=gb / gl)
    return row


def bench_attention(be, name: str, device: str, dtype, batch: int, ctx: int, hq: int, hkv: int, d: int,
                    block_size: int, warmup: int, iters: int) -> list[Row]:
    nblk = (ctx + block_size - 1) // block_size
    k_cache = torch.randn(batch * nblk, block_size, hkv, d, device=device).to(dtype)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(batch * nblk, device=device).view(batch, nblk).to(torch.int32)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=device)
    q = torch.randn(batch, hq, d, device=device).to(dtype)
    out = torch.empty_like(q)
    es = torch.finfo(dtype).bits // 8
    shape = f"B={batch} ctx={ctx} Hq={hq} Hkv={hkv} D={d} bs={block_size}"
    ms = kernel_time(lambda: be.paged_attention_decode(q, k_cache, v_cache, tables, seq_lens, d ** -0.5, out),
                     warmup, iters)
    nbytes, flops = 2 * batch * ctx * hkv * d * es + 2 * q.numel() * es, 4 * batch * ctx * hq * d
    rows = [Row("paged_attention_decode", shape, ms, nbytes, flops, name)]
    if name == "triton" and CUDA:   # side by side: the same launch without split-KV (one program per kv head)
        from openlora.kernels import triton_attention

        splits = triton_attention.decode_splits(batch, hkv, tables.shape[1] * block_size, q.device)[0]
        ms1 = kernel_time(lambda: triton_attention._paged_attention_decode(q, k_cache, v_cache, tables, seq_lens,
                                                                           d ** -0.5, out, splits=1), warmup, iters)
        rows.append(Row("paged_attention_decode", f"{shape} no split (default: {splits})", ms1, nbytes, flops, name))
    k = torch.randn(batch, hkv, d, device=device).to(dtype)
    slots = (tables[:, -1].long() * block_size + (ctx - 1) % block_size)
    ms = kernel_time(lambda: be.store_kv(k, k, k_cache, v_cache, slots), warmup, iters)
    rows.append(Row("store_kv", f"T={batch} Hkv={hkv} D={d}", ms, 4 * k.numel() * es, 0, name))
    return rows


# ------------------------------------------------------------------------------------------------ suites


def gpu_lora_cases(hidden: int = 4096):
    mixed64 = [8, 16, 32, 64, 128] * 12 + [8, 16, 32, 64]
    return [
        ("bgmv", hidden, hidden, [16], [1]),
        ("bgmv", hidden, hidden, [16] * 64, [1] * 64),
        ("bgmv", hidden, hidden, [64] * 64, [4] * 64),
        ("bgmv", hidden, hidden, mixed64, [8] * 64),
        ("bgmv", hidden, 14336, [16] * 64, [1] * 64),
        ("bgmv", 14336, hidden, [16] * 64, [1] * 64),
        ("sgmv", hidden, hidden, [16], [512]),
        ("sgmv", hidden, hidden, [128] * 8, [64] * 8),
        ("sgmv", hidden, hidden, mixed64, [8] * 64),
        ("sgmv", hidden, 14336, [16] * 16, [32] * 16),
    ]


def cpu_lora_cases(hidden: int = 1024):
    return [
        ("bgmv", hidden, hidden, [16] * 16, [1] * 16),
        ("bgmv", hidden, hidden, [8, 16, 32, 64] * 4, [2] * 16),
        ("sgmv", hidden, hidden, [16] * 4, [32] * 4),
        ("sgmv", hidden, hidden, [8, 16, 32, 64, 128] * 3 + [8], [8] * 16),
    ]


def interpreted_smoke() -> dict:
    """Run every Triton kernel once, interpreted, on a tiny shape, and compare with the references."""
    from openlora.kernels import triton_ops

    tri = triton_ops.BACKEND
    p = LoRAProblem(96, 80, [1, 8, 16, 64], [3, 0, 5, 2], torch.float32, "cpu", seed=3)
    worst = 0.0
    for kind in ("sgmv", "bgmv"):
        meta = (p.seg_starts, p.seg_slots) if kind == "sgmv" else (p.token_slots,)
        b1, b2 = p.buf.clone(), p.buf.clone()
        getattr(tri, f"{kind}_shrink")(p.x, p.a, b1, *meta, p.row_start, p.rank)
        getattr(reference, f"{kind}_shrink")(p.x, p.a, b2, *meta, p.row_start, p.rank)
        y1, y2 = p.y.clone(), p.y.clone()
        getattr(tri, f"{kind}_expand")(b2, p.b, y1, *meta, p.row_start, p.rank, p.scale)
        getattr(reference, f"{kind}_expand")(b2, p.b, y2, *meta, p.row_start, p.rank, p.scale)
        worst = max(worst, (b1 - b2).abs().max().item(), (y1 - y2).abs().max().item())
    q = torch.randn(3, 8, 32)
    kc, vc = torch.randn(8, 16, 2, 32), torch.randn(8, 16, 2, 32)
    bt = torch.arange(8, dtype=torch.int32).view(2, 4).repeat(2, 1)[:3]
    lens = torch.tensor([5, 40, 64], dtype=torch.int32)
    o1, o2 = torch.empty_like(q), torch.empty_like(q)
    tri.paged_attention_decode(q, kc, vc, bt, lens, 0.2, o1)
    reference.paged_attention_decode(q, kc, vc, bt, lens, 0.2, o2)
    worst = max(worst, (o1 - o2).abs().max().item())
    return dict(max_abs_diff_vs_reference=worst, description=tri.description)


# ------------------------------------------------------------------------------------------------ main


def fmt_rows(rows: list[Row], peak_tflops: float | None, peak_gbps: float | None, copy_gbps: float) -> str:
    head = f"{'op':24s} {'backend':7s} {'shape':44s} {'ms':>9s} {'MB':>8s} {'GFLOP':>7s} {'GB/s':>8s} " \
           f"{'%copyBW':>7s} {'TFLOP/s':>8s}"
    if peak_gbps:
        head += f" {'floor ms':>9s} {'%floor':>6s}"
    lines = [head]
    for r in rows:
        line = (f"{r.op:24s} {r.backend:7s} {r.shape:44s} {r.ms:9.4f} {r.bytes / 1e6:8.2f} {r.flops / 1e9:7.3f} "
                f"{r.gbps():8.1f} {100 * r.gbps() / copy_gbps:6.1f}% {r.tflops():8.3f}")
        if peak_gbps and peak_tflops:
            floor = max(r.bytes / (peak_gbps * 1e9), r.flops / (peak_tflops * 1e12)) * 1e3
            line += f" {floor:9.4f} {100 * floor / r.ms:5.1f}%"
        lines.append(line)
    return "\n".join(lines)


def goals_text(rows: list[Row], mixed: list[dict], layer: list[dict], bw_gbps: float) -> str:
    """The issue's GPU goals, each with its measured figure and whether it is met."""
    lines = ["goals:"]
    for r in rows:
        if r.op.startswith("bgmv") and "adapters=64" in r.shape:
            lines.append(f"  BGMV decode {r.op} {r.shape}: {100 * r.gbps() / bw_gbps:.0f}% of {bw_gbps:.0f} GB/s "
                         f"({'met' if r.gbps() >= 0.7 * bw_gbps else 'NOT met'}: >= 70%)")
    for m in mixed:
        lines.append(f"  mixed-rank SGMV / padded ({m['adapters']} adapters, ranks {m['ranks']}): {m['ratio']:.3f} "
                     f"({'met' if m['ratio'] <= 1.0 else 'NOT met'}: <= 1.0)")
    for m in layer:
        r = m.get("graph_ratio", m["ratio"])
        lines.append(f"  layer LoRA ratio ({m['tokens']} tokens, {m['adapters']} adapters{', graphs' if 'graph_ratio' in m else ''}): "
                     f"{r:.3f} ({'met' if r >= 0.85 else 'NOT met'}: >= 0.85, a proxy of the end-to-end goal)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=None, help="timed runs per op (default 100 on CUDA, 10 on CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"],
                    help="model dtype (default bfloat16 on CUDA, float32 on CPU, as the engine runs there)")
    ap.add_argument("--peak-gbps", type=float, default=None, help="override the datasheet memory bandwidth")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the datasheet 16-bit TFLOP/s")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.dtype = args.dtype or ("bfloat16" if CUDA else "float32")
    dtype = getattr(torch, args.dtype)
    device = "cuda" if CUDA else "cpu"
    iters = args.iters or (100 if CUDA else 10)
    warmup = args.warmup if args.warmup is not None else (20 if CUDA else 2)
    result: dict = dict(machine=platform.node(), cpu_count=os.cpu_count(), torch=torch.__version__, dtype=args.dtype)

    if CUDA:
        from openlora.kernels import triton_ops

        be, name = triton_ops.BACKEND, "triton"
        dev_name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAKS.items() if k in dev_name), (None, None))
        peak_tflops, peak_gbps = args.peak_tflops or peak[0], args.peak_gbps or peak[1]
        copy_gbps = copy_bandwidth_gbps(device)
        result.update(device=dev_name, peak_tflops=peak_tflops, peak_gbps=peak_gbps, copy_gbps=copy_gbps)
        print(f"device: {dev_name}; datasheet {peak_gbps} GB/s, {peak_tflops} TFLOP/s; measured copy "
              f"{copy_gbps:.0f} GB/s; dtype {args.dtype}; median of {iters} runs after {warmup}")
        rows = bench_lora(be, name, device, dtype, gpu_lora_cases(), warmup, iters)
        rows += bench_attention(be, name, device, dtype, 64, 1024, 32, 8, 128, 16, warmup, iters)
        rows += bench_attention(be, name, device, dtype, 8, 8192, 32, 8, 128, 16, warmup, iters)
        mixed = [bench_mixed_vs_padded(be, name, device, dtype, 4096, [8] * 64, [8, 16, 32, 64, 128] * 12 +
                                       [8, 16, 32, 64], warmup, iters),
                 bench_mixed_vs_padded(be, name, device, dtype, 4096, [64] * 8, [8, 8, 16, 16, 32, 32, 64, 128],
                                       warmup, iters)]
        layer = [bench_layer_overhead(be, name, device, dtype, 4096, 14336, 1024, t, a, 16, warmup, iters)
                 for t, a in ((64, 64), (256, 64))]
        missing = ["end-to-end throughput 64 adapters vs none: run bench/bench_engine_gpu.py on this GPU"]
    else:
        be, name = reference_backend(), "torch"
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
        copy_gbps = copy_bandwidth_gbps(device)
        peak_tflops = peak_gbps = None
        result.update(device="cpu", copy_gbps=copy_gbps)
        print(f"no CUDA device: CPU path (the torch backend the engine runs on CPU), {os.cpu_count()} cores, measured copy "
              f"{copy_gbps:.1f} GB/s; dtype {args.dtype}; median of {iters} runs after {warmup}")
        rows = bench_lora(be, name, device, dtype, cpu_lora_cases(), warmup, iters)
        rows += bench_attention(be, name, device, dtype, 8, 512, 16, 4, 64, 16, warmup, iters)
        mixed = [bench_mixed_vs_padded(be, name, device, dtype, 1024, [8] * 16, [8, 16, 32, 64, 128] * 3 + [8],
                                       warmup, iters)]
        layer = [bench_layer_overhead(be, name, device, dtype, 512, 1408, 128, 16, 16, 16, warmup, iters)]
        t0 = time.perf_counter()
        smoke = interpreted_smoke()
        smoke["seconds"] = time.perf_counter() - t0
        result["interpreted_smoke"] = smoke
        missing = GPU_GOALS

    print()
    print(fmt_rows(rows, peak_tflops, peak_gbps, copy_gbps))
    print("\nmixed-rank SGMV vs the same batch padded to the max rank (shrink + expand; ratio <= 1 is the goal):")
    for m in mixed:
        print(f"  [{m['backend']}] hidden {m['hidden']}, {m['tokens']} tokens, {m['adapters']} adapters, ranks "
              f"{m['ranks']}: mixed {m['mixed_ms']:.4f} ms, padded {m['padded_ms']:.4f} ms, ratio {m['ratio']:.3f}")
    print("\nlayer-level LoRA cost (7 projections of one layer, a decode step; base / (base + LoRA), goal >= 0.85):")
    for m in layer:
        print(f"  [{m['backend']}, {m['form'].upper()}] hidden {m['hidden']}, {m['tokens']} tokens, {m['adapters']} adapters of rank "
              f"{m['rank']}: base {m['base_ms']:.4f} ms, with LoRA {m['lora_ms']:.4f} ms, ratio {m['ratio']:.3f}")
        if "graph_ratio" in m:
            print(f"      as CUDA graphs: base {m['graph_base_ms']:.4f} ms, with LoRA {m['graph_lora_ms']:.4f} ms, "
                  f"ratio {m['graph_ratio']:.3f}")
    if not CUDA:
        s = result["interpreted_smoke"]
        print(f"\nTriton kernels interpreted on a tiny shape (correctness only, {s['seconds']:.1f} s): max |diff| vs "
              f"reference {s['max_abs_diff_vs_reference']:.2e}")
    if CUDA:
        print("\n" + goals_text(rows, mixed, layer, peak_gbps or copy_gbps))
    print("\nGPU figures still missing in this run:" if missing else "")
    for m in missing:
        print(f"  - {m}")
    result.update(rows=[dict(asdict(r), gbps=r.gbps(), tflops=r.tflops()) for r in rows], mixed_vs_padded=mixed,
                  layer_overhead=layer, missing=missing)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def reference_backend():
    from openlora.kernels.ops import TORCH_BACKEND

    return TORCH_BACKEND


if __name__ == "__main__":
    main()
