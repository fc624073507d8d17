"""The CPU LoRA path alone, on SmolLM2-135M's q/k/v and o shapes: one layer's shrink + expand for a decode step.

    .venv/bin/python bench/bench_cpu_lora.py --threads 2 [--segments 33 --tokens 64 --reps 5]

Side by side in one run (alternating, median of --reps rounds of --iters calls each):
  * slices   kernels/torch_ops.py sgmv_*: one loop over segments for all slices of a fused linear (float32 path)
  * per-slice  the same ops one slice at a time (the path before, `for_each_slice_*` of the one-slice op)
  * bgmv     kernels/torch_ops.py bgmv_*: per-token gather of the A/B rows, then batched products
Results are checked equal to each other before timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from openlora.kernels import reference, torch_ops  # noqa: E402

HIDDEN, KV = 576, 192
RANKS = (8, 16, 32)


def setup(segments: int, tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    slots = segments + 4
    rows_per = [RANKS[i % 3] for i in range(slots)]
    row_start = torch.tensor([sum(rows_per[:i]) for i in range(slots)], dtype=torch.int32)
    P = sum(rows_per)
    a_qkv = torch.randn(3, P, HIDDEN, generator=g) / HIDDEN ** 0.5
    b_qkv = torch.randn(P, HIDDEN + 2 * KV, generator=g) / 4
    rank = torch.tensor([rows_per] * 3, dtype=torch.int32)
    scale = torch.full((3, slots), 0.5)
    # power-law token counts over the segments, every segment at least one token
    counts = [1] * segments
    for t in range(tokens - segments):
        counts[min(int(segments * (torch.rand(1, generator=g).item() ** 3)), segments - 1)] += 1
    seg_starts = torch.tensor([0] + [sum(counts[:i + 1]) for i in range(segments)], dtype=torch.int32)
    seg_slots = torch.arange(segments, dtype=torch.int32)
    token_slots = torch.repeat_interleave(seg_slots, torch.tensor(counts))
    x = torch.randn(tokens, HIDDEN, generator=g)
    return x, a_qkv, b_qkv, rank, scale, row_start, seg_starts, seg_slots, token_slots


def run(kind: str, x, a, b, rank, scale, row_start, seg_starts, seg_slots, token_slots, widths):
    T = x.shape[0]
    buf = torch.zeros(3, T, max(RANKS))
    y = torch.zeros(T, sum(widths))
    if kind == "slices":
        torch_ops.sgmv_shrink(x, a, buf, seg_starts, seg_slots, row_start, rank)
        torch_ops.sgmv_expand(buf, b, y, seg_starts, seg_slots, row_start, rank, scale, 0, widths)
    elif kind == "per-slice":
        reference.for_each_slice_shrink(torch_ops._sgmv_shrink_one, x, a, buf, seg_starts, seg_slots, row_start, rank)
        reference.for_each_slice_expand(torch_ops._sgmv_expand_one, buf, b, y, seg_starts, seg_slots, row_start, rank,
                                        scale, y_offset=0, slices=widths)
    else:
        torch_ops.bgmv_shrink(x, a, buf, token_slots, row_start, rank)
        torch_ops.bgmv_expand(buf, b, y, token_slots, row_start, rank, scale, 0, widths)
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=33)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = setup(args.segments, args.tokens)
    widths = (HIDDEN, KV, KV)
    kinds = ("slices", "per-slice", "bgmv")
    ref = run("per-slice", *data, widths)
    for k in kinds:
        torch.testing.assert_close(run(k, *data, widths), ref, rtol=1e-4, atol=1e-4)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for rep in range(args.reps):
        for k in (kinds if rep % 2 == 0 else kinds[::-1]):
            t = time.perf_counter()
            for _ in range(args.iters):
                run(k, *data, widths)
            times[k].append((time.perf_counter() - t) / args.iters)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"# qkv shrink + expand, one layer: {args.tokens} decode tokens in {args.segments} adapter segments "
          f"(ranks {RANKS}), {args.threads} threads")
    for k in kinds:
        print(f"{k:10s} {1e3 * med[k]:8.3f} ms  ({med['per-slice'] / med[k]:.2f}x of per-slice)")


if __name__ == "__main__":
    main()
