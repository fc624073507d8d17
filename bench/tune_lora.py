"""Sweep the Triton LoRA kernels' configs at Llama-3-8B decode/prefill shapes: check each against the reference and
time it, in one run (under 4 minutes on an H100).

    .venv/bin/python bench/tune_lora.py                    # CUDA: check + time every variant, print the table
    .venv/bin/python bench/tune_lora.py --json out.json    # also write every row (and the run's metadata) as JSON
    .venv/bin/python bench/tune_lora.py --smoke            # no GPU needed: tiny shapes, interpreted, correctness only
    .venv/bin/python bench/tune_lora.py --only bgmv_expand # one op (substring match on op / shape)

What a row is: one op (bgmv_shrink, bgmv_expand, sgmv_shrink, sgmv_expand) at one shape with one variant: the
public default ("default") or the default with one tunable changed (block sizes, warps, stages, split policy and
split reduction, tokens per BGMV program, GEMV vs tensor-core kernel; see kernels/triton_lora.py `ShrinkConfig` /
`ExpandConfig`, the `*_CONFIG` defaults, and the keyword-only arguments of its `_bgmv_*` / `_sgmv_*` launchers).
For each row:
  * check: fresh random bf16 inputs, outputs poisoned with NaN, compared with kernels/reference.py: the relative
    error ||out - ref|| / ||ref|| of what the op adds or writes, and the NaN pattern (every element the op must
    write is written, nothing else is touched). A row that fails is marked FAIL and never counts as the best.
  * us(ev): median of --iters CUDA-event timings, each after a 256 MB L2 flush written with zero_(), as
    bench/bench_kernels.py time_op does. The timed launch is enqueued while the memset runs (~90 us on an H100):
    when the host needs longer than that to enqueue the op, the events time the host, not the kernel.
  * us(gr): median of replays of a CUDA graph holding the op once, each after the same flush followed by a read
    pass over the flush buffer (L2 cold and clean): the kernel alone, without host launch time or write-backs.
    SGMV ops are captured with a precomputed tile map (`tile_map=`), so this excludes the map's torch ops.
  * host: microseconds the host spends enqueuing one call (Python + Triton launch), measured while the GPU is busy.
    When host > the flush's duration (printed at start), us(ev) measures the host, not the kernel.
  * MB: the bytes the op must move at least (inputs read once, outputs written once), GB/s and % of the datasheet
    bandwidth (3350 GB/s on an H100 SXM; --peak-gbps) from us(gr) and from us(ev).
It ends with the best variant per (op, shape) by us(gr), the mixed-rank vs padded SGMV ratio (8 adapters of ranks
8..128 vs all 128, shrink + expand), and the wall time (about 70 s for ~250 rows on an H100, compiles included).
--budget (seconds, default 210) skips the remaining variants of a sweep (reported) so that the run stays within
its limit; Triton compiles each config once, on first use. --host-profile adds a cProfile of the launch path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")    # before kernels/triton_lora (and its @triton.jit) load

import triton  # noqa: E402

from openlora.kernels import reference  # noqa: E402
from openlora.kernels import triton_lora as tri  # noqa: E402

MIXED64 = [8, 16, 32, 64, 128] * 12 + [8, 16, 32, 64]
MIXED8 = [8, 8, 16, 16, 32, 32, 64, 128]
QKV = [4096, 1024, 1024]              # Llama-3-8B q / k / v output widths
NAN = float("nan")


# ------------------------------------------------------------------------------------------------ problems


class Problem:
    """One projection's pool (contiguous rows, mixed ranks) and a batch of tokens grouped by adapter.

    widths: a fused linear's slices (e.g. q/k/v output widths): one sliced op over all of them (A [S, rows, in],
    B [rows, sum(widths)], every slice with the same ranks); out_f is then sum(widths)."""

    def __init__(self, kind: str, in_f: int, out_f: int, ranks: list[int], tokens: list[int], dtype, device,
                 seed: int = 0, shuffle: bool = False, widths: list[int] | None = None):
        g = torch.Generator().manual_seed(seed)
        self.widths = tuple(widths) if widths else None
        self.S = len(widths) if widths else 1
        out_f = sum(widths) if widths else out_f
        self.kind, self.in_f, self.out_f, self.ranks, self.tokens, self.dtype = kind, in_f, out_f, ranks, tokens, dtype
        self.device = device
        starts, row = [], 0
        for r in ranks:
            starts.append(row)
            row += r
        a_shape = (self.S, row, in_f) if widths else (row, in_f)
        self.a = (torch.randn(*a_shape, generator=g) / in_f ** 0.5).to(dtype).to(device)
        self.b = (torch.randn(row, out_f, generator=g) / max(ranks) ** 0.5).to(dtype).to(device)
        self.row_start = torch.tensor(starts, dtype=torch.int32, device=device)
        self.rank = torch.tensor(ranks, dtype=torch.int32, device=device)
        self.scale = (torch.rand(len(ranks), generator=g) + 0.5).to(device)
        if widths:
            self.rank = self.rank.repeat(self.S, 1)
            self.scale = self.scale.repeat(self.S, 1)
        bounds = [0]
        for n in tokens:
            bounds.append(bounds[-1] + n)
        self.T = bounds[-1]
        self.R = max(ranks)
        self.seg_starts = torch.tensor(bounds, dtype=torch.int32, device=device)
        self.seg_slots = torch.arange(len(tokens), dtype=torch.int32, device=device)
        slots = [s for s, n in enumerate(tokens) for _ in range(n)]
        if shuffle:
            perm = torch.randperm(len(slots), generator=g).tolist()
            slots = [slots[i] for i in perm]
        self.token_slots = torch.tensor(slots, dtype=torch.int32, device=device)
        self.token_ranks = torch.tensor([ranks[s] for s in slots], dtype=torch.long, device=device)
        self.x = torch.randn(self.T, in_f, generator=g).to(dtype).to(device)
        self.buf = torch.randn(*self.buf_shape(), generator=g).to(device)
        self.y = torch.randn(self.T, out_f, generator=g).to(dtype).to(device)
        es = torch.finfo(dtype).bits // 8
        used = [ranks[s] for s in range(len(tokens)) if tokens[s] > 0]
        token_rank_sum = sum(ranks[s] * n for s, n in enumerate(tokens))
        S = self.S
        self.shrink_bytes = self.T * in_f * es + S * sum(used) * in_f * es + S * token_rank_sum * 4
        self.expand_bytes = S * token_rank_sum * 4 + sum(used) * out_f * es + 2 * self.T * out_f * es
        self._tile_maps: dict[int, tuple] = {}
        rank_desc = f"r={ranks[0]}" if len(set(ranks)) == 1 else f"r={min(ranks)}..{max(ranks)}"
        outs = "+".join(map(str, widths)) if widths else str(out_f)
        self.shape = (f"T={self.T} a={len(tokens)} {rank_desc} {in_f}->{outs}" + (" shuffled" if shuffle else ""))

    def buf_shape(self) -> tuple[int, ...]:
        return (self.S, self.T, self.R) if self.widths else (self.T, self.R)

    def meta(self):
        return (self.seg_starts, self.seg_slots) if self.kind == "sgmv" else (self.token_slots,)

    def tile_map(self, block_m: int):
        if block_m not in self._tile_maps:
            self._tile_maps[block_m] = tri.build_tile_map(self.seg_starts, self.seg_slots, self.T, block_m)
        return self._tile_maps[block_m]

    def call(self, side: str, kw: dict, x=None, buf=None, y=None, graph: bool = False):
        """The op with variant keywords kw (cfg=, tokens=, splits=), on the given or the problem's tensors."""
        x = self.x if x is None else x
        buf = self.buf if buf is None else buf
        y = self.y if y is None else y
        kw = dict(kw)
        fn = getattr(tri, f"_{self.kind}_{side}")
        if self.kind == "sgmv" and graph:          # the tile map outside the graph: time the kernel alone
            cfg = kw.get("cfg") or getattr(tri, f"SGMV_{side.upper()}_CONFIG")
            kw["tile_map"] = self.tile_map(max(tri.BLOCK_MIN, cfg.block_m))
        if side == "shrink":
            return fn(x, self.a, buf, *self.meta(), self.row_start, self.rank, **kw)
        return fn(buf, self.b, y, *self.meta(), self.row_start, self.rank, self.scale, 0, self.widths, **kw)


def check(p: Problem, side: str, kw: dict, seed: int) -> tuple[float, bool]:
    """(relative error, NaN pattern ok) of one variant on fresh random inputs against kernels/reference.py."""
    g = torch.Generator(device=p.device).manual_seed(seed)
    T, R = p.T, p.R
    written = torch.arange(R, device=p.device)[None, :] < p.token_ranks[:, None]            # [T, R]
    written = written.expand(p.buf_shape())                            # every slice: the same ranks
    if side == "shrink":
        x = torch.randn(T, p.in_f, generator=g, device=p.device).to(p.dtype)
        out = torch.full(p.buf_shape(), NAN, device=p.device)
        want = out.clone()
        p.call("shrink", kw, x=x, buf=out)
        getattr(reference, f"{p.kind}_shrink")(x, p.a, want, *p.meta(), p.row_start, p.rank)
        nan_ok = bool(torch.equal(torch.isnan(out), ~written))
        o, w = out[written], want[written]
    else:
        buf = torch.randn(*p.buf_shape(), generator=g, device=p.device)
        buf[~written] = NAN                                      # columns past each token's rank: never read
        y0 = torch.randn(T, p.out_f, generator=g, device=p.device).to(p.dtype)
        out, want = y0.clone(), y0.clone()
        p.call("expand", kw, buf=buf, y=out)
        getattr(reference, f"{p.kind}_expand")(buf, p.b, want, *p.meta(), p.row_start, p.rank, p.scale, 0, p.widths)
        nan_ok = not bool(torch.isnan(out).any())
        o, w = out.float() - y0.float(), want.float() - y0.float()     # the LoRA delta (y itself is O(1))
    err = float((o.float() - w.float()).norm() / w.float().norm().clamp(min=1e-30))
    return err, nan_ok


# ------------------------------------------------------------------------------------------------ timing


class Timer:
    def __init__(self, iters: int, warmup: int):
        self.iters, self.warmup = iters, warmup
        self.flush_buf = torch.empty(256 * 2 ** 20 // 4, dtype=torch.int32, device="cuda")

    def flush(self, clean: bool) -> None:
        self.flush_buf.zero_()
        if clean:
            self.flush_buf.sum()                 # read it back: the L2 now holds clean lines of the flush buffer

    def events(self, fn, clean: bool) -> float:
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        pairs = []
        for _ in range(self.iters):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.flush(clean)
            s.record()
            fn()
            e.record()
            pairs.append((s, e))
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in pairs) * 1e3

    def graph(self, fn) -> float:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return self.events(g.replay, clean=True)

    def host(self, fn, n: int = 20) -> float:
        torch.cuda.synchronize()
        for _ in range(4):
            self.flush_buf.zero_()               # keep the GPU busy while the host enqueues
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = (time.perf_counter() - t0) / n * 1e6
        torch.cuda.synchronize()
        return dt

    def memset_us(self) -> float:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples = []
        for _ in range(5):
            s.record()
            self.flush_buf.zero_()
            e.record()
            torch.cuda.synchronize()
            samples.append(s.elapsed_time(e) * 1e3)
        return statistics.median(samples)


def copy_gbps() -> float:
    src = torch.empty(2 ** 29, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(10):
        dst.copy_(src)
    e.record()
    torch.cuda.synchronize()
    return 2 * src.numel() * 2 * 10 / (s.elapsed_time(e) * 1e-3) / 1e9


# ------------------------------------------------------------------------------------------------ sweeps


def R(cfg, **kw):
    return dataclasses.replace(cfg, **kw)


def _one_at_a_time(base, key: str, grid: dict[str, tuple]) -> list[tuple[str, dict]]:
    """The base config with one field changed at a time (values equal to the base skipped), passed as `key`."""
    out = []
    for field, values in grid.items():
        for v in values:
            if v != getattr(base, field):
                out.append((f"{'gemv ' if key == 'gemv_cfg' else ''}{field}={v}", {key: R(base, **{field: v})}))
    return out


def shrink_variants(kind: str, p: Problem) -> list[tuple[str, dict]]:
    out = [("default", {})]
    if kind == "bgmv":
        base, gbase = tri.BGMV_SHRINK_CONFIG, tri.BGMV_SHRINK_GEMV_CONFIG
        auto = tri._bgmv_tokens(p.T, len(p.ranks), base.block_m)
        if auto == 1:                        # one token per program: the GEMV kernel
            out += _one_at_a_time(gbase, "gemv_cfg", dict(
                block_r=(8, 16, 32), block_k=(128, 256, 512), num_warps=(2, 4, 8), programs_per_sm=(2, 4, 8, 16),
                split_reduce=("kernel", "atomic")))
            out += [("gemv no_split", {"splits": 1}),
                    ("gemv block_k=512 warps=8", {"gemv_cfg": R(gbase, block_k=512, num_warps=8)}),
                    ("dot (gemv=False)", {"gemv": False}), ("tokens=4", {"tokens": 4})]
            return out
        out += _one_at_a_time(base, "cfg", dict(
            block_r=(16, 32, 64), block_k=(64, 128, 256), num_warps=(4, 8), num_stages=(2, 3, 4),
            programs_per_sm=(0, 1, 2, 4, 8), split_reduce=("kernel", "atomic")))
        out += [(f"tokens={v}", {"tokens": v}) for v in (2, 4, 8, 16) if v != auto]
        out += [("tokens=1 (gemv)", {"tokens": 1})]
        return out
    base = tri.SGMV_SHRINK_CONFIG
    out += _one_at_a_time(base, "cfg", dict(
        block_m=(16, 32, 64), block_r=(16, 32, 64, 128), block_k=(64, 128, 256), num_warps=(4, 8),
        num_stages=(2, 3, 4), programs_per_sm=(0, 1, 2, 4, 8), split_reduce=("kernel", "atomic")))
    return out


def expand_variants(kind: str, p: Problem) -> list[tuple[str, dict]]:
    out = [("default", {})]
    if kind == "bgmv":
        base, gbase = tri.BGMV_EXPAND_CONFIG, tri.BGMV_EXPAND_GEMV_CONFIG
        auto = tri._bgmv_tokens(p.T, len(p.ranks), base.block_m)
        if auto == 1:
            out += _one_at_a_time(gbase, "gemv_cfg", dict(block_r=(8, 16, 32), block_n=(256, 512, 1024, 2048),
                                                          num_warps=(2, 4, 8)))
            out += [("gemv block_n=512 warps=2", {"gemv_cfg": R(gbase, block_n=512, num_warps=2)}),
                    ("gemv block_n=2048 warps=8", {"gemv_cfg": R(gbase, block_n=2048, num_warps=8)}),
                    ("dot (gemv=False)", {"gemv": False}), ("tokens=4", {"tokens": 4})]
            return out
        out += _one_at_a_time(base, "cfg", dict(
            block_r=(32, 64, 128), block_n=(64, 128, 256), num_warps=(4, 8), num_stages=(2, 3, 4),
            programs_per_sm=(0, 1, 2, 4, 8)))
        out += [(f"tokens={v}", {"tokens": v}) for v in (2, 4, 8, 16) if v != auto]
        out += [("tokens=1 (gemv)", {"tokens": 1})]
        return out
    base = tri.SGMV_EXPAND_CONFIG
    out += _one_at_a_time(base, "cfg", dict(
        block_m=(16, 32, 64), block_r=(32, 64, 128), block_n=(64, 128, 256), num_warps=(4, 8), num_stages=(2, 3, 4),
        programs_per_sm=(0, 1, 2, 4, 8)))
    return out


def gpu_cases(dtype) -> list[tuple[str, Problem]]:
    """(op side, problem): the shapes of the issue (Llama-3-8B projections, bf16)."""
    d = "cuda"
    h, inter = 4096, 14336
    bg16 = Problem("bgmv", h, h, [16] * 64, [1] * 64, dtype, d, seed=1)
    bg64 = Problem("bgmv", h, h, [64] * 64, [4] * 64, dtype, d, seed=2)
    bgmix = Problem("bgmv", h, h, MIXED64, [8] * 64, dtype, d, seed=3)
    bgup = Problem("bgmv", h, inter, [16] * 64, [1] * 64, dtype, d, seed=4)
    bgdown = Problem("bgmv", inter, h, [16] * 64, [1] * 64, dtype, d, seed=5)
    bgshuf = Problem("bgmv", h, h, [64] * 64, [4] * 64, dtype, d, seed=6, shuffle=True)
    sg128 = Problem("sgmv", h, h, [128] * 8, [64] * 8, dtype, d, seed=7)
    sgmix64 = Problem("sgmv", h, h, MIXED64, [8] * 64, dtype, d, seed=8)
    sgmix8 = Problem("sgmv", h, h, MIXED8, [64] * 8, dtype, d, seed=9)
    sgup = Problem("sgmv", h, inter, [16] * 16, [32] * 16, dtype, d, seed=10)
    # fused linears as one sliced launch: q/k/v (4096 + 1024 + 1024) and gate/up (2 x 14336)
    bgqkv = Problem("bgmv", h, 0, [16] * 64, [1] * 64, dtype, d, seed=12, widths=QKV)
    bggu = Problem("bgmv", h, 0, [16] * 64, [1] * 64, dtype, d, seed=13, widths=[inter, inter])
    bgqkv64 = Problem("bgmv", h, 0, [64] * 64, [4] * 64, dtype, d, seed=14, widths=QKV)
    return [("shrink", bg16), ("shrink", bg64), ("shrink", bgmix), ("shrink", bgdown),
            ("expand", bg16), ("expand", bg64), ("expand", bgmix), ("expand", bgup),
            ("shrink", bgqkv), ("expand", bgqkv), ("shrink", bggu), ("expand", bggu),
            ("shrink", bgqkv64), ("expand", bgqkv64),
            ("shrink", bgshuf), ("expand", bgshuf),
            ("shrink", sg128), ("shrink", sgmix64), ("shrink", sgmix8),
            ("expand", sg128), ("expand", sgmix64), ("expand", sgmix8), ("expand", sgup)]


def smoke_cases(dtype) -> list[tuple[str, Problem]]:
    d = "cpu"
    bg = Problem("bgmv", 96, 80, [16, 8, 1, 64, 32, 5], [3, 1, 4, 2, 0, 3], dtype, d, seed=1)
    bgs = Problem("bgmv", 64, 48, [16, 8, 32], [4, 3, 5], dtype, d, seed=2, shuffle=True)
    sg = Problem("sgmv", 96, 80, [16, 8, 1, 64, 32, 5], [17, 1, 4, 33, 0, 3], dtype, d, seed=3)
    bgq = Problem("bgmv", 64, 0, [16, 8, 32], [2, 3, 1], dtype, d, seed=4, widths=[48, 16, 16])
    sgq = Problem("sgmv", 64, 0, [16, 8, 32], [5, 0, 17], dtype, d, seed=5, widths=[40, 24])
    return [(side, p) for p in (bg, bgs, sg, bgq, sgq) for side in ("shrink", "expand")]


def smoke_variants(side: str, p: Problem) -> list[tuple[str, dict]]:
    kind = p.kind
    base = getattr(tri, f"{kind.upper()}_{side.upper()}_CONFIG")
    out = [("default", {})]
    if side == "shrink":
        out += [("splits=3 block_k=16", {"splits": 3, "cfg": R(base, block_k=16)}), ("no_split", {"splits": 1}),
                ("block_r=16", {"cfg": R(base, block_r=16)})]
    else:
        out += [("block_n=32 block_r=16", {"cfg": R(base, block_n=32, block_r=16)})]
    if kind == "bgmv":
        out += [("tokens=1 (gemv)", {"tokens": 1}), ("tokens=1 dot", {"tokens": 1, "gemv": False}),
                ("tokens=4", {"tokens": 4})]
        if side == "shrink":
            out += [("gemv splits=3 block_k=16", {"tokens": 1, "splits": 3,
                                                  "gemv_cfg": R(tri.BGMV_SHRINK_GEMV_CONFIG, block_k=16)})]
    else:
        out += [("block_m=16", {"cfg": R(base, block_m=16)})]
    return out


# ------------------------------------------------------------------------------------------------ main


def fmt_row(r: dict) -> str:
    if r.get("skipped"):
        return f"{r['op']:12s} {r['shape']:38s} {r['variant']:22s} skipped ({r['skipped']})"
    status = "ok" if r["ok"] else "FAIL"
    line = f"{r['op']:12s} {r['shape']:38s} {r['variant']:22s} err {r['rel_err']:.1e} {status:4s}"
    if "us_graph" in r:
        line += (f" | gr {r['us_graph']:7.1f} us {r['gbps_graph']:6.0f} GB/s {r['pct_graph']:4.0f}%"
                 f" | ev {r['us_events']:7.1f} us {r['pct_events']:4.0f}% | host {r['host_us']:5.0f} us"
                 f" | {r['mb']:5.1f} MB")
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, correctness only (runs without a GPU)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--peak-gbps", type=float, default=3350.0)
    ap.add_argument("--budget", type=float, default=210.0, help="seconds after which remaining variants are skipped")
    ap.add_argument("--only", default=None, help="substring of 'op shape' to run")
    ap.add_argument("--defaults-only", action="store_true", help="only the default config of each op")
    ap.add_argument("--host-profile", action="store_true",
                    help="also profile the host side of 200 default launches of each BGMV op (where the us go)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    smoke = args.smoke or not CUDA
    dtype = torch.bfloat16
    meta = dict(machine=platform.node(), torch=torch.__version__, triton=triton.__version__,
                interpreted=tri.INTERPRETED, peak_gbps=args.peak_gbps, iters=args.iters,
                defaults={n: dataclasses.asdict(getattr(tri, n)) for n in
                          ("BGMV_SHRINK_CONFIG", "BGMV_EXPAND_CONFIG", "SGMV_SHRINK_CONFIG", "SGMV_EXPAND_CONFIG")})
    timer = None
    if not smoke:
        meta.update(device=torch.cuda.get_device_name(), sms=torch.cuda.get_device_properties(0).multi_processor_count)
        timer = Timer(args.iters, args.warmup)
        meta["copy_gbps"] = copy_gbps()
        meta["flush_us"] = timer.memset_us()
        print(f"{meta['device']} ({meta['sms']} SMs), torch {torch.__version__}, triton {triton.__version__}; copy "
              f"{meta['copy_gbps']:.0f} GB/s; flush memset {meta['flush_us']:.0f} us; peak {args.peak_gbps:.0f} GB/s; "
              f"median of {args.iters}", flush=True)
        cases = gpu_cases(dtype)
    else:
        print(f"smoke: tiny shapes, {'interpreted' if tri.INTERPRETED else 'compiled'}, correctness only", flush=True)
        cases = smoke_cases(dtype)
    rows: list[dict] = []
    seed = 100
    for side, p in cases:
        op = f"{p.kind}_{side}"
        if args.only and args.only not in f"{op} {p.shape}":
            continue
        if smoke:
            variants = smoke_variants(side, p)
        else:
            variants = (shrink_variants if side == "shrink" else expand_variants)(p.kind, p)
        if args.defaults_only:
            variants = variants[:1]
        mb = (p.shrink_bytes if side == "shrink" else p.expand_bytes) / 1e6
        for name, kw in variants:
            row = dict(op=op, shape=p.shape, variant=name, mb=mb,
                       kw={k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in kw.items()})
            if not smoke and time.perf_counter() - t_start > args.budget and name != "default":
                row["skipped"] = "time budget"
                rows.append(row)
                print(fmt_row(row), flush=True)
                continue
            seed += 1
            try:
                err, nan_ok = check(p, side, kw, seed)
            except Exception as e:  # noqa: BLE001 - a config that does not compile or run is reported
                row.update(ok=False, rel_err=float("inf"), error=f"{type(e).__name__}: {str(e)[:300]}")
                rows.append(row)
                print(fmt_row(row), "|", row["error"], flush=True)
                continue
            tol = 3e-2 if side == "expand" else 1e-4      # expand: bf16 buffer and output roundings
            row.update(rel_err=err, nan_ok=nan_ok, ok=bool(nan_ok and err <= tol))
            if timer is not None:
                fn = lambda: p.call(side, kw)                           # noqa: E731
                gfn = lambda: p.call(side, kw, graph=True)              # noqa: E731
                row["us_events"] = timer.events(fn, clean=False)
                row["us_graph"] = timer.graph(gfn)
                row["host_us"] = timer.host(fn)
                for k in ("graph", "events"):
                    gbps = mb * 1e6 / (row[f"us_{k}"] * 1e-6) / 1e9
                    row[f"gbps_{k}"], row[f"pct_{k}"] = gbps, 100 * gbps / args.peak_gbps
            rows.append(row)
            print(fmt_row(row), flush=True)

    summary = []
    mixed = fused = None
    if timer is not None:
        # best per (op, shape) by the kernel-alone time
        print("\nbest variant per op and shape (by us(gr); default for comparison):")
        seen = []
        for r in rows:
            key = (r["op"], r["shape"])
            if key not in seen:
                seen.append(key)
        for key in seen:
            group = [r for r in rows if (r["op"], r["shape"]) == key and r.get("ok") and "us_graph" in r]
            if not group:
                continue
            best = min(group, key=lambda r: r["us_graph"])
            dflt = next((r for r in group if r["variant"] == "default"), best)
            summary.append(dict(op=key[0], shape=key[1], best=best["variant"], best_us=best["us_graph"],
                                best_pct=best["pct_graph"], default_us=dflt["us_graph"], default_pct=dflt["pct_graph"],
                                default_us_events=dflt["us_events"], default_pct_events=dflt["pct_events"]))
            print(f"  {key[0]:12s} {key[1]:38s} default {dflt['us_graph']:7.1f} us {dflt['pct_graph']:4.0f}% "
                  f"(ev {dflt['us_events']:6.1f} us {dflt['pct_events']:3.0f}%)  best {best['variant']:20s} "
                  f"{best['us_graph']:7.1f} us {best['pct_graph']:4.0f}%")
        if not args.only or "sgmv" in args.only:
            mixed = mixed_vs_padded(timer, dtype)
            print(f"\nmixed-rank SGMV (8 adapters, ranks {MIXED8}, 64 tokens each) vs padded to 128, shrink + "
                  f"expand, defaults: graph {mixed['mixed_us_graph']:.1f} / {mixed['padded_us_graph']:.1f} us = "
                  f"{mixed['ratio_graph']:.3f}; events {mixed['mixed_us_events']:.1f} / "
                  f"{mixed['padded_us_events']:.1f} us = {mixed['ratio_events']:.3f} (goal <= 1.0)")
        if not args.only or "bgmv" in args.only:
            fused = sliced_vs_separate(timer, dtype, args.peak_gbps)
            print(f"\nfused q/k/v as one sliced shrink + one sliced expand vs 3 separate shrink + expand pairs "
                  f"(64 tokens, 64 adapters r=16, BGMV defaults, graph replays): {fused['sliced_us']:.1f} / "
                  f"{fused['separate_us']:.1f} us = {fused['ratio']:.3f}; {fused['mb']:.1f} MB moved -> "
                  f"{fused['sliced_pct']:.0f}% vs {fused['separate_pct']:.0f}% of {args.peak_gbps:.0f} GB/s")
    if args.host_profile and timer is not None:
        host_profile(cases)
    bad = [r for r in rows if "ok" in r and not r["ok"]]
    wall = time.perf_counter() - t_start
    print(f"\n{len(rows)} rows, {len(bad)} failed checks, {sum(1 for r in rows if r.get('skipped'))} skipped; "
          f"wall {wall:.0f} s")
    for r in bad:
        print("  FAILED:", fmt_row(r), r.get("error", ""))
    if args.json:
        args.json.write_text(json.dumps(dict(meta=meta, rows=rows, best=summary, mixed_vs_padded=mixed,
                                             sliced_vs_separate=fused, wall_s=wall), indent=1))
    sys.exit(1 if bad else 0)


def host_profile(cases) -> None:
    """cProfile of the host side of the default BGMV launches (Python wrapper + Triton launcher)."""
    import cProfile
    import io
    import pstats

    seen = set()
    for side, p in cases:
        key = (p.kind, side, tri._bgmv_tokens(p.T, len(p.ranks), 16) > 1)
        if p.kind != "bgmv" or key in seen:
            continue
        seen.add(key)
        fn = lambda: p.call(side, {})                                   # noqa: E731
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for _ in range(200):
            fn()
        prof.disable()
        dt = (time.perf_counter() - t0) / 200 * 1e6
        torch.cuda.synchronize()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(10)
        text = "\n".join(line[:150] for line in out.getvalue().splitlines() if line.strip())
        print(f"\nhost profile {p.kind}_{side} {p.shape}: {dt:.0f} us/call under the profiler\n{text}")


def mixed_vs_padded(timer: Timer, dtype) -> dict:
    out = {}
    for label, ranks in (("mixed", MIXED8), ("padded", [128] * 8)):
        p = Problem("sgmv", 4096, 4096, ranks, [64] * 8, dtype, "cuda", seed=11)
        both = lambda: (p.call("shrink", {}), p.call("expand", {}))              # noqa: E731
        both_g = lambda: (p.call("shrink", {}, graph=True), p.call("expand", {}, graph=True))  # noqa: E731
        out[f"{label}_us_events"] = timer.events(both, clean=False)
        out[f"{label}_us_graph"] = timer.graph(both_g)
    out["ratio_events"] = out["mixed_us_events"] / out["padded_us_events"]
    out["ratio_graph"] = out["mixed_us_graph"] / out["padded_us_graph"]
    return out


def sliced_vs_separate(timer: Timer, dtype, peak_gbps: float = 3350.0) -> dict:
    """A decode step's q/k/v LoRA: one sliced shrink + one sliced expand against three shrink + expand pairs over
    the same weights (the launch count the engine had before fused-linear slices), kernels alone (graph replays)."""
    h, ranks, tokens = 4096, [16] * 64, [1] * 64
    fused = Problem("bgmv", h, 0, ranks, tokens, dtype, "cuda", seed=21, widths=QKV)
    parts = [Problem("bgmv", h, n, ranks, tokens, dtype, "cuda", seed=22 + i) for i, n in enumerate(QKV)]
    out = dict(sliced_us=timer.graph(lambda: (fused.call("shrink", {}), fused.call("expand", {}))),
               separate_us=timer.graph(lambda: [(q.call("shrink", {}), q.call("expand", {})) for q in parts]))
    out["ratio"] = out["sliced_us"] / out["separate_us"]
    out["mb"] = (fused.shrink_bytes + fused.expand_bytes) / 1e6
    for k in ("sliced", "separate"):
        out[f"{k}_pct"] = 100 * out["mb"] * 1e6 / (out[f"{k}_us"] * 1e-6) / 1e9 / peak_gbps
    return out


if __name__ == "__main__":
    main()
