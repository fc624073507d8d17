"""The native CPU kernels (kernels/cpu_native.py) against the torch paths they replace, on SmolLM2-135M's shapes.

    .venv/bin/python bench/bench_cpu_native.py [--threads 1]

Two tables, best of 3 x 20 calls each, side by side in one process:
  * segment LoRA (shrink + expand of the fused q/k/v linear: in 576, out 576/192/192, 3 slices): the register-tiled
    C loops vs kernels/torch_ops.py's one matmul per segment, for decode-like (1-token) to prefill-like segments;
  * paged attention (9 query heads, 3 kv heads, head size 64, block size 16, blocks scattered through a 4096-block
    cache): the C kernel vs the reference (gather + SDPA), for decode (1 query, 160 keys) and prefills of 72-512.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_ms(f, n: int = 20) -> float:
    f()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t) / n * 1e3)
    return best


def lora_table(nk) -> None:
    from openlora.kernels import torch_ops
    S, P, fin, widths = 3, 2048, 576, (576, 192, 192)
    print("| segments x tokens, rank | native ms | torch ms | torch / native | native GFLOPS |")
    print("| --- | --- | --- | --- | --- |")
    for n_seg, seg_len, r in [(40, 1, 16), (8, 16, 16), (4, 64, 16), (2, 128, 32), (1, 512, 16)]:
        T = n_seg * seg_len
        g = torch.Generator().manual_seed(0)
        x, a, b = torch.randn(T, fin, generator=g), torch.randn(S, P, fin, generator=g), torch.randn(P, sum(widths))
        rank = torch.full((S, n_seg), r, dtype=torch.int32)
        rows = torch.arange(n_seg, dtype=torch.int32) * 32
        scale = torch.ones(S, n_seg)
        starts = torch.arange(n_seg + 1, dtype=torch.int32) * seg_len
        slots = torch.arange(n_seg, dtype=torch.int32)
        buf, y = torch.zeros(S, T, 32), torch.zeros(T, sum(widths))

        def native():
            nk.sgmv_shrink(x, a, buf, starts, slots, rows, rank)
            nk.sgmv_expand(buf, b, y, starts, slots, rows, rank, scale, 0, widths)

        def matmuls():
            torch_ops.sgmv_shrink_segments(x, a, buf, starts, slots, rows, rank)
            torch_ops.sgmv_expand_segments(buf, b, y, starts, slots, rows, rank, scale, 0, widths)

        tn, tt = best_ms(native), best_ms(matmuls)
        flop = 2 * T * r * (fin * S + sum(widths))
        print(f"| {n_seg} x {seg_len}, r{r} | {tn:.3f} | {tt:.3f} | {tt / tn:.2f}x | {flop / tn / 1e6:.1f} |")


def attention_table(nk) -> None:
    from openlora.kernels import reference
    Hq, Hkv, D, bs, nb = 9, 3, 64, 16, 4096
    g = torch.Generator().manual_seed(0)
    kc, vc = torch.randn(nb, bs, Hkv, D, generator=g), torch.randn(nb, bs, Hkv, D, generator=g)
    print("| queries x sequences (keys) | native ms | reference (SDPA) ms | reference / native |")
    print("| --- | --- | --- | --- |")
    for qlen, B in ((1, 64), (72, 8), (128, 4), (256, 2), (512, 1)):
        L = 160 if qlen == 1 else qlen
        lens = torch.full((B,), L, dtype=torch.int32)
        maxb = (L + bs - 1) // bs
        bt = torch.randperm(nb, generator=g)[:B * maxb].view(B, maxb).int()
        q = torch.randn(B * qlen, Hq, D, generator=g)
        cu = torch.arange(B + 1, dtype=torch.int32) * qlen
        out = torch.empty_like(q)
        tn = best_ms(lambda: nk.paged_attention(q, kc, vc, cu, lens, bt, 0.125, out))
        tr = best_ms(lambda: reference.paged_attention(q, kc, vc, cu, lens, bt, 0.125))
        print(f"| {qlen} x {B} ({L}) | {tn:.3f} | {tr:.3f} | {tr / tn:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from openlora.kernels import cpu_native
    nk = cpu_native.load()
    if nk is None:
        raise SystemExit(f"the native kernels are unavailable: {cpu_native.unavailable_reason()}")
    print(f"# {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    lora_table(nk)
    print()
    attention_table(nk)


if __name__ == "__main__":
    main()
