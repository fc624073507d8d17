"""Triton SGMV/BGMV LoRA kernels vs the torch references (kernels/reference.py).

Runs interpreted on CPU (TRITON_INTERPRET=1, see conftest.py) and compiled on CUDA when a GPU is present. Shapes
are chosen so the interpreted suite stays fast: large hidden sizes with few tokens, many tokens with small hidden
sizes, many adapters with few tokens each.

Tolerances (see `_bound`): both sides read the same rounded inputs and accumulate in float32, so they differ by
  - the order of float32 accumulation: at most 2 * n * 2**-24 * sum|terms| (gamma_n for each side, n = terms);
  - one unit in the last place of the output dtype when the two float32 results round to neighbouring values:
    eps(out) * |ref| (fp32 2**-23, fp16 2**-10, bf16 2**-7);
  - expand with a 16-bit B only: the kernel rounds the float32 buffer to B's dtype before the tensor-core product
    (as PEFT does, whose lora_A output is in the model dtype): at most eps(B)/2 * sum|terms| more.
  - interpreted bf16 only: the Triton interpreter converts float32 -> bf16 by truncation, not round-to-nearest
    (triton/runtime/interpreter.py `_convert_float`), so a rounding costs up to a full eps(bf16) there and the
    final results may differ by up to 2 ulp; `ROUNDING` and `ULPS` account for it.
sum|terms| is computed exactly by running the reference on |inputs|. The check is elementwise and NaN-aware
(NaN must stay NaN where nothing may be written, and may appear nowhere else).
"""

from __future__ import annotations

import random

import pytest
import torch

from openlora.kernels import reference as ref
from openlora.kernels import triton_lora as tri

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAN = float("nan")
INTERPRETED = DEVICE == "cpu"
# relative error of one rounding of float32 into the dtype, and ulps by which two nearby results may differ
ROUNDING = {d: (e if INTERPRETED and d == torch.bfloat16 else e / 2) for d, e in EPS.items()}
ULPS = {d: (2.0 if INTERPRETED and d == torch.bfloat16 else 1.0) for d in EPS}


# ------------------------------------------------------------------------------------------------ builders


class Pool:
    """One layer's pool for one target module: slots of mixed ranks at scattered row offsets (with gaps)."""

    def __init__(self, ranks: list[int], in_f: int, out_f: int, dtype: torch.dtype, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(ranks), generator=g).tolist()        # slots placed out of order
        starts = [0] * len(ranks)
        row = 3                                                         # the pool does not start at slot 0
        for s in order:
            starts[s] = row
            row += ranks[s] + 2                                         # 2 rows of gap between slots
        a = torch.randn(row, in_f, generator=g) / in_f ** 0.5
        b = torch.randn(row, out_f, generator=g)
        used = torch.zeros(row, dtype=torch.bool)
        for s, r in zip(starts, ranks):
            used[s:s + r] = True
        a[~used] = NAN                                                  # rows no slot owns: garbage, never read
        b[~used] = NAN
        self.a = a.to(dtype).to(DEVICE)
        self.b = b.to(dtype).to(DEVICE)
        self.row_start = torch.tensor(starts, dtype=torch.int32, device=DEVICE)
        self.rank = torch.tensor(ranks, dtype=torch.int32, device=DEVICE)
        self.scale = (torch.rand(len(ranks), generator=g) * 2 + 0.25).to(DEVICE)
        self.max_rank = max(ranks + [1])


def segments(spec: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """[(length, slot), ...] -> seg_starts [S + 1], seg_slots [S], T."""
    starts = [0]
    for n, _ in spec:
        starts.append(starts[-1] + n)
    seg_starts = torch.tensor(starts, dtype=torch.int32, device=DEVICE)
    seg_slots = torch.tensor([s for _, s in spec], dtype=torch.int32, device=DEVICE)
    return seg_starts, seg_slots, starts[-1]


def token_slots_of(spec: list[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor([s for n, s in spec for _ in range(n)], dtype=torch.int32, device=DEVICE)


def _active_rows(slots: torch.Tensor, pool: Pool) -> torch.Tensor:
    """[T] bool: tokens whose slot is valid and non-empty."""
    valid = slots >= 0
    return valid & (pool.rank.long()[slots.long().clamp(min=0)] > 0)


def _bound(ref_out: torch.Tensor, abs_terms: torch.Tensor, n_terms: int, out_dtype: torch.dtype,
           extra_rel: float = 0.0) -> torch.Tensor:
    acc = 2 * n_terms * 2.0 ** -24 + extra_rel
    return acc * abs_terms + ULPS[out_dtype] * EPS[out_dtype] * ref_out.float().abs() + 1e-30


def assert_within(out: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    out_f, exp_f = out.float(), expected.float()
    nan_o, nan_e = torch.isnan(out_f), torch.isnan(exp_f)
    if not torch.equal(nan_o, nan_e):
        extra = (nan_o & ~nan_e).nonzero()[:5].tolist()
        missing = (nan_e & ~nan_o).nonzero()[:5].tolist()
        raise AssertionError(f"{what}: NaN pattern differs: not written (still NaN) at {extra}, "
                             f"written where it must not be at {missing}")
    diff = (out_f - exp_f).abs().nan_to_num(0.0)
    b = bound.float().nan_to_num(float("inf"))
    bad = diff > b
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int(bad.sum())} elements out of tolerance, first at {i}: "
                             f"got {out_f[tuple(i)].item()}, expected {exp_f[tuple(i)].item()}, "
                             f"bound {b[tuple(i)].item()}")


# ------------------------------------------------------------------------------------------------ checkers


def check_shrink(kind: str, pool: Pool, x: torch.Tensor, spec: list[tuple[int, int]],
                 buf_width: int | None = None, buf_dtype: torch.dtype = torch.float32, fn=None,
                 order: list[int] | None = None) -> None:
    """Poisoned buf: written elements must equal the reference, all others must still be NaN.

    fn: the Triton op to check (default tri.{kind}_shrink); order (BGMV only): a permutation of the tokens, so
    that the tokens of one slot are not contiguous."""
    seg_starts, seg_slots, T = segments(spec)
    slots = token_slots_of(spec)
    if order is not None:
        slots = slots[torch.tensor(order, device=DEVICE)]
    R = buf_width or pool.max_rank
    meta = (seg_starts, seg_slots) if kind == "sgmv" else (slots,)
    buf_k = torch.full((T, R), NAN, dtype=buf_dtype, device=DEVICE)
    buf_r = buf_k.clone()
    (fn or getattr(tri, f"{kind}_shrink"))(x, pool.a, buf_k, *meta, pool.row_start, pool.rank)
    getattr(ref, f"{kind}_shrink")(x, pool.a, buf_r, *meta, pool.row_start, pool.rank)
    abs_terms = torch.zeros((T, R), dtype=torch.float32, device=DEVICE)
    getattr(ref, f"{kind}_shrink")(x.abs(), pool.a.abs(), abs_terms, *meta, pool.row_start, pool.rank)
    # every element that should be written is: rows of active tokens, columns < the token's rank
    active = _active_rows(slots, pool)
    ranks = torch.where(active, pool.rank.long()[slots.long().clamp(min=0)], 0)
    written = torch.arange(R, device=DEVICE)[None, :] < ranks[:, None]
    assert not torch.isnan(buf_r[written]).any(), "test bug: the reference left a NaN in its written region"
    assert torch.isnan(buf_r[~written]).all(), "test bug: the reference wrote outside its region"
    assert_within(buf_k, buf_r, _bound(buf_r, abs_terms, x.shape[1], buf_dtype), f"{kind}_shrink")


def check_expand(kind: str, pool: Pool, spec: list[tuple[int, int]], y_width: int | None = None,
                 y_offset: int = 0, y_dtype: torch.dtype | None = None, seed: int = 0, fn=None,
                 order: list[int] | None = None) -> None:
    """y starts random inside the slice of active rows and NaN everywhere the kernel must not touch.

    fn, order: as for check_shrink."""
    g = torch.Generator().manual_seed(seed)
    seg_starts, seg_slots, T = segments(spec)
    slots = token_slots_of(spec)
    if order is not None:
        slots = slots[torch.tensor(order, device=DEVICE)]
    n = pool.b.shape[1]
    W = y_width or (y_offset + n)
    y_dtype = y_dtype or pool.b.dtype
    meta = (seg_starts, seg_slots) if kind == "sgmv" else (slots,)
    R = pool.max_rank
    buf = torch.randn(T, R, generator=g).to(DEVICE)
    # columns >= the token's rank hold NaN: the kernel must never read them
    ranks = torch.where(_active_rows(slots, pool), pool.rank.long()[slots.long().clamp(min=0)], 0)
    buf[torch.arange(R, device=DEVICE)[None, :] >= ranks[:, None]] = NAN
    y0 = torch.full((T, W), NAN, device=DEVICE)
    y0[:, y_offset:y_offset + n] = torch.randn(T, n, generator=g).to(DEVICE)
    y0[~_active_rows(slots, pool)] = NAN
    y0 = y0.to(y_dtype)
    y_k, y_r = y0.clone(), y0.clone()
    (fn or getattr(tri, f"{kind}_expand"))(buf, pool.b, y_k, *meta, pool.row_start, pool.rank, pool.scale, y_offset)
    getattr(ref, f"{kind}_expand")(buf, pool.b, y_r, *meta, pool.row_start, pool.rank, pool.scale, y_offset)
    abs_terms = torch.zeros((T, W), dtype=torch.float32, device=DEVICE)
    getattr(ref, f"{kind}_expand")(buf.abs().nan_to_num(0.0), pool.b.abs(), abs_terms, *meta, pool.row_start,
                                   pool.rank, pool.scale.abs(), y_offset)
    abs_terms += y0.float().abs().nan_to_num(0.0)          # the addend of y, also part of the float32 sum
    round_b = ROUNDING[pool.b.dtype] if pool.b.dtype != torch.float32 else 0.0
    assert_within(y_k, y_r, _bound(y_r, abs_terms, R + 1, y_dtype, round_b), f"{kind}_expand")


def run_both(pool: Pool, spec: list[tuple[int, int]], x_dtype: torch.dtype, seed: int = 0) -> None:
    T = sum(n for n, _ in spec)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, pool.a.shape[1], generator=g).to(x_dtype).to(DEVICE)
    for kind in ("sgmv", "bgmv"):
        check_shrink(kind, pool, x, spec)
        check_expand(kind, pool, spec, seed=seed)


# ------------------------------------------------------------------------------------------------ tests


MIXED_RANKS = [1, 8, 16, 64, 128, 256, 0, 3]       # slot 6 is an empty slot (rank 0), slot 7 an odd rank


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_mixed_ranks_one_batch(dtype):
    """Ranks 1..256 in one launch, empty segments, no-adapter tokens, an empty slot, every dtype."""
    pool = Pool(MIXED_RANKS, in_f=96, out_f=80, dtype=dtype, seed=1)
    spec = [(3, 0), (0, 5), (5, 1), (2, -1), (1, 2), (4, 3), (0, -1), (6, 4), (2, 5), (3, 6), (2, 7), (1, -1)]
    run_both(pool, spec, dtype)


@pytest.mark.parametrize("hidden,out_f", [(896, 4864), (4864, 896), (5120, 1152), (11008, 640)])
def test_hidden_sizes_not_powers_of_two(hidden, out_f):
    """Llama/Qwen-sized projections (not powers of two) with a few tokens: k and n tails are masked."""
    pool = Pool([8, 16, 64], in_f=hidden, out_f=out_f, dtype=torch.float16, seed=hidden)
    spec = [(2, 1), (1, -1), (1, 0), (1, 2)]
    run_both(pool, spec, torch.float16)


def test_many_adapters_few_tokens():
    """128 distinct adapters (random ranks 1..256) in one batch, 1-2 tokens each."""
    rng = random.Random(7)
    ranks = [rng.choice([1, 2, 4, 8, 16, 24, 32, 64, 128, 256]) for _ in range(128)]
    pool = Pool(ranks, in_f=48, out_f=40, dtype=torch.bfloat16, seed=7)
    spec = [(rng.randint(1, 2), s) for s in range(128)]
    rng.shuffle(spec)
    run_both(pool, spec, torch.bfloat16)


def test_long_segments_small_hidden():
    """Segments of 1 to 512 tokens (tiles of BLOCK_M tokens never straddle two segments)."""
    pool = Pool([16, 64, 8], in_f=40, out_f=24, dtype=torch.float32, seed=3)
    spec = [(512, 0), (1, 1), (0, 2), (33, 2), (100, -1), (65, 1), (31, 0)]
    run_both(pool, spec, torch.float32)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_randomized(seed):
    """Random segment lengths (0..70, at most 12 segments), slots (including -1 and empty slots), ranks and non-power-of-2 sizes."""
    rng = random.Random(seed)
    num_slots = rng.randint(1, 24)
    ranks = [rng.choice([0, 1, 2, 5, 8, 16, 17, 32, 64, 100, 128, 256]) for _ in range(num_slots)]
    dtype = rng.choice(DTYPES)
    pool = Pool(ranks, in_f=rng.choice([24, 72, 200]), out_f=rng.choice([20, 136, 300]), dtype=dtype, seed=seed)
    spec = [(rng.choice([0, 1, 1, 2, 3, 7, 16, 33, 70]), rng.randint(-1, num_slots - 1))
            for _ in range(rng.randint(1, 12))]
    run_both(pool, spec, dtype, seed=seed)


@pytest.mark.parametrize("kind", ["sgmv", "bgmv"])
def test_fused_qkv_slices(kind):
    """Three expands into one fused [T, q + k + v] output at their offsets, NaN outside each slice's rows."""
    spec = [(3, 0), (2, -1), (4, 1)]
    dims = [64, 16, 16]
    pools = [Pool([8, 32], in_f=32, out_f=d, dtype=torch.float16, seed=i) for i, d in enumerate(dims)]
    offset = 0
    for p, d in zip(pools, dims):
        check_expand(kind, p, spec, y_width=sum(dims) + 5, y_offset=offset, y_dtype=torch.float16)
        offset += d


@pytest.mark.parametrize("kind", ["sgmv", "bgmv"])
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16])
def test_engine_dtypes_fp32_buffer_16bit_model(kind, x_dtype):
    """The engine's layout: model dtype for x / y / pools, a float32 rank buffer wider than any rank used."""
    pool = Pool([4, 16], in_f=64, out_f=48, dtype=x_dtype, seed=5)
    spec = [(2, 1), (3, 0), (1, -1)]
    x = torch.randn(6, 64).to(x_dtype).to(DEVICE)
    check_shrink(kind, pool, x, spec, buf_width=32)


def test_shrink_into_16bit_buffer():
    pool = Pool([8, 16], in_f=64, out_f=48, dtype=torch.float16, seed=6)
    x = torch.randn(5, 64).half().to(DEVICE)
    for kind in ("sgmv", "bgmv"):
        check_shrink(kind, pool, x, [(2, 0), (3, 1)], buf_dtype=torch.float16)


def test_no_adapter_anywhere_writes_nothing():
    pool = Pool([8, 0], in_f=32, out_f=16, dtype=torch.float32)
    spec = [(4, -1), (3, 1), (0, 0)]
    x = torch.randn(7, 32).to(DEVICE)
    for kind in ("sgmv", "bgmv"):
        check_shrink(kind, pool, x, spec)
        check_expand(kind, pool, spec)


def test_empty_batch():
    pool = Pool([8], in_f=32, out_f=16, dtype=torch.float32)
    x = torch.zeros(0, 32, device=DEVICE)
    buf = torch.zeros(0, 8, device=DEVICE)
    y = torch.zeros(0, 16, device=DEVICE)
    seg_starts = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    no_segs = torch.zeros(0, dtype=torch.int32, device=DEVICE)
    tri.sgmv_shrink(x, pool.a, buf, seg_starts, no_segs, pool.row_start, pool.rank)
    tri.sgmv_expand(buf, pool.b, y, seg_starts, no_segs, pool.row_start, pool.rank, pool.scale)
    tri.bgmv_shrink(x, pool.a, buf, no_segs, pool.row_start, pool.rank)
    tri.bgmv_expand(buf, pool.b, y, no_segs, pool.row_start, pool.rank, pool.scale)


def test_strided_inputs():
    """x and y may be column slices of larger tensors (row stride > width), as in a fused projection."""
    pool = Pool([8, 16], in_f=40, out_f=24, dtype=torch.float32, seed=9)
    spec = [(3, 0), (2, 1)]
    seg_starts, seg_slots, T = segments(spec)
    big = torch.randn(T, 100, device=DEVICE)
    x = big[:, 10:50]
    for kind, meta in (("sgmv", (seg_starts, seg_slots)), ("bgmv", (token_slots_of(spec),))):
        bk, br = torch.zeros(T, 16, device=DEVICE), torch.zeros(T, 16, device=DEVICE)
        getattr(tri, f"{kind}_shrink")(x, pool.a, bk, *meta, pool.row_start, pool.rank)
        getattr(ref, f"{kind}_shrink")(x, pool.a, br, *meta, pool.row_start, pool.rank)
        torch.testing.assert_close(bk, br, rtol=1e-5, atol=1e-5)
        yk = torch.randn(T, 70, device=DEVICE)[:, 5:60]
        yr = yk.clone()
        getattr(tri, f"{kind}_expand")(br, pool.b, yk, *meta, pool.row_start, pool.rank, pool.scale, 3)
        getattr(ref, f"{kind}_expand")(br, pool.b, yr, *meta, pool.row_start, pool.rank, pool.scale, 3)
        torch.testing.assert_close(yk, yr, rtol=1e-5, atol=1e-5)


def test_tile_map_cache_follows_in_place_metadata_updates():
    """The SGMV tile map is cached per metadata tensors; writing into them (as the engine does) invalidates it."""
    pool = Pool([8, 16], in_f=32, out_f=16, dtype=torch.float32, seed=2)
    seg_starts = torch.tensor([0, 2, 5], dtype=torch.int32, device=DEVICE)
    seg_slots = torch.tensor([0, 1], dtype=torch.int32, device=DEVICE)
    x = torch.randn(5, 32, device=DEVICE)
    for new_starts, new_slots in (([0, 2, 5], [0, 1]), ([0, 4, 5], [1, -1]), ([0, 0, 5], [0, 1])):
        seg_starts.copy_(torch.tensor(new_starts, dtype=torch.int32))
        seg_slots.copy_(torch.tensor(new_slots, dtype=torch.int32))
        bk = torch.full((5, 16), NAN, device=DEVICE)
        br = bk.clone()
        tri.sgmv_shrink(x, pool.a, bk, seg_starts, seg_slots, pool.row_start, pool.rank)
        ref.sgmv_shrink(x, pool.a, br, seg_starts, seg_slots, pool.row_start, pool.rank)
        torch.testing.assert_close(bk, br, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_tile_map():
    seg_starts = torch.tensor([0, 40, 40, 41, 105, 110], dtype=torch.int32)
    seg_slots = torch.tensor([0, 0, 1, -1, 2], dtype=torch.int32)
    tile_seg, tile_first, grid = tri.build_tile_map(seg_starts, seg_slots, 110, 32)
    assert grid == 4 + 5
    # segment 0: 40 tokens -> 2 tiles; 1: empty -> none; 2: 1 token -> 1 tile; 3: no adapter -> none; 4: 1 tile
    assert tile_seg.tolist() == [0, 0, 2, 4] + [5] * 5
    assert tile_first.tolist() == [0, 2, 2, 3, 3]


def test_rejects_bad_layout():
    pool = Pool([8], in_f=32, out_f=16, dtype=torch.float32)
    y = torch.zeros(2, 10, device=DEVICE)
    with pytest.raises(ValueError, match="does not fit"):
        tri.bgmv_expand(torch.zeros(2, 8, device=DEVICE), pool.b, y,
                        torch.zeros(2, dtype=torch.int32, device=DEVICE), pool.row_start, pool.rank, pool.scale)
    with pytest.raises(ValueError, match="unit stride"):
        tri.bgmv_shrink(torch.zeros(32, 2, device=DEVICE).t(), pool.a, torch.zeros(2, 8, device=DEVICE),
                        torch.zeros(2, dtype=torch.int32, device=DEVICE), pool.row_start, pool.rank)


@pytest.mark.parametrize("kind", ["sgmv", "bgmv"])
def test_per_layer_rank_views_and_strided_metadata(kind):
    """The engine passes rank[layer, module] views of one [layers, modules, slots] table (a rank of 0 where an
    adapter does not target a module), and one tile map serves every layer; strided metadata is accepted too."""
    pool = Pool([8, 16, 4], in_f=32, out_f=24, dtype=torch.float32, seed=4)
    table = torch.tensor([[[8, 16, 4], [8, 0, 4]], [[0, 16, 4], [8, 16, 0]]], dtype=torch.int32, device=DEVICE)
    spec = [(3, 0), (2, 1), (1, -1), (4, 2)]
    seg_starts, seg_slots, T = segments(spec)
    slots = token_slots_of(spec)
    meta = (seg_starts, seg_slots) if kind == "sgmv" else (slots,)
    x = torch.randn(T, 32, device=DEVICE)
    for ranks in (table[0, 0], table[0, 1], table[1, 0], table[1, 1], table[1].t()[:, 1]):  # the last is strided
        bk = torch.full((T, 16), NAN, device=DEVICE)
        br = bk.clone()
        getattr(tri, f"{kind}_shrink")(x, pool.a, bk, *meta, pool.row_start, ranks)
        getattr(ref, f"{kind}_shrink")(x, pool.a, br, *meta, pool.row_start, ranks)
        torch.testing.assert_close(bk, br, rtol=1e-5, atol=1e-5, equal_nan=True)
        yk = torch.randn(T, 24, device=DEVICE)
        yr = yk.clone()
        buf = br.nan_to_num(0.0)
        getattr(tri, f"{kind}_expand")(buf, pool.b, yk, *meta, pool.row_start, ranks, pool.scale)
        getattr(ref, f"{kind}_expand")(buf, pool.b, yr, *meta, pool.row_start, ranks, pool.scale)
        torch.testing.assert_close(yk, yr, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: Llama-3-8B-sized LoRA batches "
                    "compiled (too slow interpreted)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_llama3_8b_shapes_on_cuda(dtype):  # pragma: no cover - needs a GPU
    """hidden 4096 -> 4096 / 14336, 64 adapters of ranks 8..128, 512 prefill tokens and 64 decode tokens."""
    ranks = [8, 16, 32, 64, 128] * 12 + [8, 16, 32, 64]
    for out_f in (4096, 14336):
        pool = Pool(ranks, in_f=4096, out_f=out_f, dtype=dtype, seed=out_f)
        run_both(pool, [(8, s) for s in range(64)], dtype)                    # 512 tokens, 64 segments
        run_both(pool, [(1, s) for s in range(64)], dtype)                    # decode: 64 tokens
        run_both(pool, [(256, 3), (200, -1), (56, 60)], dtype)               # long segments, no-adapter run


def test_inference_mode_metadata():
    """Metadata built under torch.inference_mode (no version counter) works, and new tensors never hit a stale map."""
    pool = Pool([8, 16], in_f=32, out_f=16, dtype=torch.float32, seed=8)
    x = torch.randn(5, 32, device=DEVICE)
    with torch.inference_mode():
        for starts, slots in (([0, 2, 5], [0, 1]), ([0, 4, 5], [1, -1])):
            seg_starts = torch.tensor(starts, dtype=torch.int32, device=DEVICE)
            seg_slots = torch.tensor(slots, dtype=torch.int32, device=DEVICE)
            bk = torch.full((5, 16), NAN, device=DEVICE)
            br = bk.clone()
            tri.sgmv_shrink(x, pool.a, bk, seg_starts, seg_slots, pool.row_start, pool.rank)
            ref.sgmv_shrink(x, pool.a, br, seg_starts, seg_slots, pool.row_start, pool.rank)
            torch.testing.assert_close(bk, br, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("hidden,tokens", [(4864, [(1, 0)]), (11008, [(1, 1), (1, -1), (1, 0)]), (896, [(2, 1)])])
def test_bgmv_shrink_split_k_for_few_tokens(hidden, tokens):
    """A decode batch of 1-3 tokens splits each dot product over several programs (split-K, the last program of a
    tile reduces); the result and the untouched elements are the same as without the split."""
    pool = Pool([8, 16], in_f=hidden, out_f=16, dtype=torch.bfloat16, seed=hidden)
    T = sum(n for n, _ in tokens)
    x = torch.randn(T, hidden, generator=torch.Generator().manual_seed(1)).bfloat16().to(DEVICE)
    cfg = tri.BGMV_SHRINK_GEMV_CONFIG                  # one token per program: the GEMV kernel
    tiles = T * triton_cdiv(16, min(16, cfg.block_r))
    assert tri._k_splits(tiles, hidden, cfg, torch.device(DEVICE)) > 1, "the case must exercise split-K"
    check_shrink("bgmv", pool, x, tokens)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("kind", ["sgmv", "bgmv"])
def test_never_writes_past_buf_when_a_rank_exceeds_it(kind):
    """Outside the semantics (a rank larger than buf's width) the kernels still stay inside buf's columns."""
    pool = Pool([32], in_f=40, out_f=24, dtype=torch.float32, seed=12)
    spec = [(3, 0)]
    seg_starts, seg_slots, T = segments(spec)
    meta = (seg_starts, seg_slots) if kind == "sgmv" else (token_slots_of(spec),)
    x = torch.randn(T, 40, device=DEVICE)
    full = torch.full((T, 24), NAN, device=DEVICE)          # 8 guard columns after a 16-wide buf
    getattr(tri, f"{kind}_shrink")(x, pool.a, full[:, :16], *meta, pool.row_start, pool.rank)
    assert torch.isnan(full[:, 16:]).all() and not torch.isnan(full[:, :16]).any()
    y = torch.zeros(T, 24, device=DEVICE)
    getattr(tri, f"{kind}_expand")(full[:, :16], pool.b, y, *meta, pool.row_start, pool.rank, pool.scale)
    assert not torch.isnan(y).any()                           # the NaN guard columns were never read


# ------------------------------------------------------------------------------------------------ launch variants
# The public ops use the default configs of kernels/triton_lora.py; bench/tune_lora.py sweeps the internal
# launchers over other configs on a GPU. Every variant must compute the same function: these tests run the
# launchers with forced K splits, tokens per BGMV program, tile sizes and rank tiles.

import dataclasses  # noqa: E402
import functools  # noqa: E402

SPLIT_RANKS = [16, 5, 0, 64, 100, 1, 32, 8]          # slot 2 empty; ranks above, below and across rank tiles


def _variant(kind: str, side: str, **kw):
    launcher = getattr(tri, f"_{kind}_{side}")
    cfg = kw.pop("cfg", {})
    if cfg:
        base = getattr(tri, f"{kind.upper()}_{side.upper()}_CONFIG")
        kw["cfg"] = dataclasses.replace(base, **cfg)
    return functools.partial(launcher, **kw)


@pytest.mark.parametrize("kind", ["sgmv", "bgmv"])
@pytest.mark.parametrize("splits,dtype,reduce", [(1, torch.bfloat16, "kernel"), (2, torch.float32, "atomic"),
                                                 (3, torch.float16, "kernel"), (3, torch.float16, "atomic"),
                                                 (5, torch.bfloat16, "atomic"), (13, torch.float32, "kernel")],
                         ids=["1-bf16", "2-fp32-atomic", "3-fp16", "3-fp16-atomic", "5-bf16-atomic", "13-fp32"])
def test_shrink_split_k_counts(kind, splits, dtype, reduce):
    """Forced K splits (K = 200, BLOCK_K = 16: up to 13 chunks, a ragged last one) with mixed ranks, slot -1,
    an empty slot and empty segments: the reduction writes exactly the elements the op writes."""
    pool = Pool(SPLIT_RANKS, in_f=200, out_f=24, dtype=dtype, seed=20 + splits)
    spec = [(3, 0), (0, 1), (2, 3), (1, -1), (4, 4), (2, 2), (0, -1), (3, 5), (1, 6), (5, 7), (2, 1)]
    T = sum(n for n, _ in spec)
    x = torch.randn(T, 200, generator=torch.Generator().manual_seed(splits)).to(dtype).to(DEVICE)
    extra = {"tokens": 4} if kind == "bgmv" else {}
    # partials summed by a second launch ("kernel"), or by the last split of each tile ("atomic")
    fn = _variant(kind, "shrink", splits=splits, cfg=dict(block_k=16, block_r=32, split_reduce=reduce), **extra)
    check_shrink(kind, pool, x, spec, fn=fn)
    # the counters are back at zero for the next launch: a second run gives the same result
    check_shrink(kind, pool, x, spec, fn=fn)
    part, lock = tri._SCRATCH.get((torch.device(DEVICE).type, torch.device(DEVICE).index), (None, None))
    assert lock is None or int(lock.abs().sum()) == 0


@pytest.mark.parametrize("tokens", [1, 2, 3, 5, 16, 32])
def test_bgmv_tokens_per_program_any_order(tokens):
    """A BGMV program takes several consecutive tokens and handles each distinct slot once; the tokens of one slot
    are scattered (shuffled order), interleaved with slot -1 and an empty slot: exact for any order."""
    rng = random.Random(tokens)
    pool = Pool(SPLIT_RANKS, in_f=64, out_f=40, dtype=torch.float16, seed=tokens)
    spec = [(4, 0), (3, 1), (2, 2), (5, 3), (3, -1), (6, 4), (1, 5), (4, 6), (3, 7)]
    T = sum(n for n, _ in spec)
    order = list(range(T))
    rng.shuffle(order)
    x = torch.randn(T, 64, generator=torch.Generator().manual_seed(3)).half().to(DEVICE)
    for splits in (1, 3):
        check_shrink("bgmv", pool, x, spec, fn=_variant("bgmv", "shrink", tokens=tokens, splits=splits), order=order)
    check_expand("bgmv", pool, spec, fn=_variant("bgmv", "expand", tokens=tokens), order=order)
    # contiguous runs (the engine's order) too
    check_shrink("bgmv", pool, x, spec, fn=_variant("bgmv", "shrink", tokens=tokens))
    check_expand("bgmv", pool, spec, fn=_variant("bgmv", "expand", tokens=tokens))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("cfg", [dict(block_m=16, block_r=16, block_n=16), dict(block_m=32, block_r=64, block_n=64),
                                 dict(block_m=64, block_r=32, block_n=32)], ids=["small", "mid", "tall"])
def test_expand_tile_configs(cfg, dtype):
    """Expand with other tile heights, rank chunks (ranks above, below and across them) and output tiles, into a
    slice of a wider y, both forms."""
    pool = Pool(SPLIT_RANKS, in_f=16, out_f=72, dtype=dtype, seed=31)
    spec = [(3, 0), (0, 1), (17, 3), (1, -1), (4, 4), (2, 2), (3, 5), (1, 6), (5, 7)]
    for kind in ("sgmv", "bgmv"):
        extra = {"tokens": 4} if kind == "bgmv" else {}
        check_expand(kind, pool, spec, y_width=72 + 13, y_offset=5, fn=_variant(kind, "expand", cfg=cfg, **extra))


@pytest.mark.parametrize("cfg", [dict(block_m=16, block_r=16, block_k=32), dict(block_m=64, block_r=128, block_k=64)],
                         ids=["small", "wide"])
def test_shrink_tile_configs(cfg):
    """Shrink with other tile heights, rank tiles (ranks up to 100 over 16-wide tiles, or all in one) and K chunks."""
    pool = Pool(SPLIT_RANKS, in_f=72, out_f=16, dtype=torch.bfloat16, seed=32)
    spec = [(3, 0), (0, 1), (17, 3), (1, -1), (4, 4), (2, 2), (3, 5), (1, 6), (5, 7)]
    T = sum(n for n, _ in spec)
    x = torch.randn(T, 72, generator=torch.Generator().manual_seed(4)).bfloat16().to(DEVICE)
    for kind in ("sgmv", "bgmv"):
        extra = {"tokens": 8} if kind == "bgmv" else {}
        for splits in (1, 2):
            check_shrink(kind, pool, x, spec, fn=_variant(kind, "shrink", cfg=cfg, splits=splits, **extra))


@pytest.mark.parametrize("kind", ["sgmv", "bgmv"])
def test_fused_slices_with_multi_token_programs(kind):
    """y_offset slices of one fused output with several tokens (and slots) per program."""
    spec = [(3, 0), (2, -1), (4, 1), (1, 0)]
    dims = [64, 16, 16]
    pools = [Pool([8, 32], in_f=32, out_f=d, dtype=torch.bfloat16, seed=40 + i) for i, d in enumerate(dims)]
    offset = 0
    for p, d in zip(pools, dims):
        extra = {"tokens": 8} if kind == "bgmv" else {}
        check_expand(kind, p, spec, y_width=sum(dims) + 5, y_offset=offset, y_dtype=torch.bfloat16,
                     fn=_variant(kind, "expand", **extra))
        offset += d


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_bgmv_block_isolates_adapters_with_nonfinite_weights():
    """Tokens of several adapters share a BGMV program: an adapter whose own A/B rows hold inf/NaN makes its own
    tokens NaN (as the reference does) and no one else's."""
    pool = Pool([8, 16, 4], in_f=48, out_f=32, dtype=torch.float16, seed=50)
    start, rank = int(pool.row_start[1]), int(pool.rank[1])
    pool.a[start + 2, 5] = float("inf")
    pool.b[start + 3, 7] = float("nan")
    spec = [(2, 0), (2, 1), (2, 2), (1, 1), (1, 0)]
    T = sum(n for n, _ in spec)
    slots = token_slots_of(spec)
    x = torch.randn(T, 48, generator=torch.Generator().manual_seed(5)).half().to(DEVICE)
    for splits in (1, 2):
        bk = torch.full((T, 16), NAN, device=DEVICE)
        br = bk.clone()
        tri._bgmv_shrink(x, pool.a, bk, slots, pool.row_start, pool.rank, tokens=8, splits=splits)
        ref.bgmv_shrink(x, pool.a, br, slots, pool.row_start, pool.rank)
        torch.testing.assert_close(bk, br, rtol=2e-3, atol=2e-3, equal_nan=True)
    buf = torch.randn(T, 16, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    yk = torch.randn(T, 32, generator=torch.Generator().manual_seed(7)).half().to(DEVICE)
    yr = yk.clone()
    tri._bgmv_expand(buf, pool.b, yk, slots, pool.row_start, pool.rank, pool.scale, tokens=8)
    ref.bgmv_expand(buf, pool.b, yr, slots, pool.row_start, pool.rank, pool.scale)
    torch.testing.assert_close(yk, yr, rtol=2e-2, atol=2e-2, equal_nan=True)
    assert torch.isnan(yk[slots == 1]).any() and not torch.isnan(yk[slots != 1]).any()


def test_bgmv_tokens_heuristic():
    """Tokens per BGMV program: T // slots as a power of two, capped; 1 while every token may have its own slot."""
    assert tri._bgmv_tokens(64, 64, 16) == 1
    assert tri._bgmv_tokens(256, 64, 16) == 4
    assert tri._bgmv_tokens(512, 64, 16) == 8
    assert tri._bgmv_tokens(7, 2, 16) == 2
    assert tri._bgmv_tokens(4096, 8, 16) == 16
    assert tri._bgmv_tokens(4096, 8, 1) == 1


@pytest.mark.parametrize("gemv,dtype", [(dict(block_r=4, block_k=32, block_n=32), torch.float32),
                                        (dict(block_r=16, block_k=64, block_n=64), torch.bfloat16),
                                        (dict(block_r=128, block_k=16, block_n=16), torch.float16)],
                         ids=["r4-fp32", "r16-bf16", "r128-fp16"])
def test_bgmv_one_token_per_program_kernels(gemv, dtype):
    """One token per program: the GEMV kernels (rank tiles narrower and wider than the ranks, K and N tails, forced
    K splits), and the tl.dot kernels run the same way (gemv=False); tokens of one slot scattered."""
    pool = Pool(SPLIT_RANKS, in_f=72, out_f=40, dtype=dtype, seed=60)
    spec = [(3, 0), (2, 3), (1, -1), (4, 4), (2, 2), (3, 5), (1, 6), (5, 7), (1, 1)]
    T = sum(n for n, _ in spec)
    order = list(range(T))
    random.Random(61).shuffle(order)
    x = torch.randn(T, 72, generator=torch.Generator().manual_seed(62)).to(dtype).to(DEVICE)
    scfg = dataclasses.replace(tri.BGMV_SHRINK_GEMV_CONFIG, block_r=gemv["block_r"], block_k=gemv["block_k"])
    ecfg = dataclasses.replace(tri.BGMV_EXPAND_GEMV_CONFIG, block_r=min(gemv["block_r"], 32), block_n=gemv["block_n"])
    for splits, reduce in ((1, "kernel"), (2, "kernel"), (5, "kernel"), (2, "atomic"), (5, "atomic")):
        cfg = dataclasses.replace(scfg, split_reduce=reduce)
        check_shrink("bgmv", pool, x, spec, order=order,
                     fn=functools.partial(tri._bgmv_shrink, tokens=1, gemv_cfg=cfg, splits=splits))
    check_expand("bgmv", pool, spec, order=order, y_width=40 + 7, y_offset=3,
                 fn=functools.partial(tri._bgmv_expand, tokens=1, gemv_cfg=ecfg))
    check_shrink("bgmv", pool, x, spec, order=order, fn=functools.partial(tri._bgmv_shrink, tokens=1, gemv=False))
    check_expand("bgmv", pool, spec, order=order, fn=functools.partial(tri._bgmv_expand, tokens=1, gemv=False))


def test_expand_rank_above_the_full_rank_tile():
    """Expand with ranks above the tile cap (block_r < R: the rank loop inside each N tile), both forms."""
    pool = Pool([100, 7, 33], in_f=16, out_f=48, dtype=torch.bfloat16, seed=70)
    spec = [(3, 0), (2, 1), (5, 2), (1, -1)]
    for kind in ("sgmv", "bgmv"):
        extra = {"tokens": 4} if kind == "bgmv" else {}
        cfg = dataclasses.replace(getattr(tri, f"{kind.upper()}_EXPAND_CONFIG"), block_r=32, block_n=32,
                                  programs_per_sm=1)
        check_expand(kind, pool, spec, fn=functools.partial(getattr(tri, f"_{kind}_expand"), cfg=cfg, **extra))


# ------------------------------------------------------------------------------------------------ slices
# A fused linear (q/k/v, gate/up) runs its targets' shrinks as one launch and their expands as one launch: A rows
# per slice [S, P, in], B rows side by side [P, n_0 + ... + n_{S-1}], rank/scale tables [S, slots]. The reference
# runs the one-slice op per slice (the definition), so every check is against that.


class SlicedPool:
    """Slots hold max(ranks over slices) rows (as the engine's pool does); a slice an adapter does not target has
    rank 0 there. Rows no slot owns are NaN."""

    def __init__(self, ranks: list[list[int]], in_f: int, widths: list[int], dtype: torch.dtype, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        S, n_slots = len(ranks), len(ranks[0])
        held = [max(r[s] for r in ranks) for s in range(n_slots)]
        starts, row = [0] * n_slots, 2
        for s in torch.randperm(n_slots, generator=g).tolist():
            starts[s] = row
            row += held[s] + 1
        a = torch.randn(S, row, in_f, generator=g) / in_f ** 0.5
        b = torch.randn(row, sum(widths), generator=g)
        used = torch.zeros(row, dtype=torch.bool)
        for s, h in zip(starts, held):
            used[s:s + h] = True
        a[:, ~used] = NAN
        b[~used] = NAN
        self.a, self.b = a.to(dtype).to(DEVICE), b.to(dtype).to(DEVICE)
        self.row_start = torch.tensor(starts, dtype=torch.int32, device=DEVICE)
        self.rank = torch.tensor(ranks, dtype=torch.int32, device=DEVICE)                 # [S, slots]
        self.scale = (torch.rand(S, n_slots, generator=g) * 2 + 0.25).to(DEVICE)
        self.widths = tuple(widths)
        self.R = max(max(r) for r in ranks + [[1]])


def check_sliced(kind: str, pool: SlicedPool, spec: list[tuple[int, int]], x_dtype: torch.dtype, seed: int = 0,
                 order: list[int] | None = None, y_offset: int = 0, **kw) -> None:
    """Sliced shrink (poisoned buf) and sliced expand (y NaN outside the rows and columns written) vs the reference.
    kw: launcher overrides (tokens=, splits=, gemv=) for the internal launchers."""
    g = torch.Generator().manual_seed(seed)
    seg_starts, seg_slots, T = segments(spec)
    slots = token_slots_of(spec)
    if order is not None:
        slots = slots[torch.tensor(order, device=DEVICE)]
    meta = (seg_starts, seg_slots) if kind == "sgmv" else (slots,)
    S, R, N = pool.a.shape[0], pool.R, pool.b.shape[1]
    x = torch.randn(T, pool.a.shape[2], generator=g).to(x_dtype).to(DEVICE)
    shrink = functools.partial(getattr(tri, f"_{kind}_shrink"), **{k: v for k, v in kw.items() if k != "gemv_n"})
    kw = {k: v for k, v in kw.items() if k not in ("cfg", "gemv_cfg")}             # shrink configs only
    expand_kw = {k: v for k, v in kw.items() if k in ("tokens", "gemv")}
    if "gemv_n" in kw:
        expand_kw["gemv_cfg"] = dataclasses.replace(tri.BGMV_EXPAND_GEMV_CONFIG, block_n=kw["gemv_n"])
    expand = functools.partial(getattr(tri, f"_{kind}_expand"), **expand_kw)

    buf_k = torch.full((S, T, R), NAN, device=DEVICE)
    buf_r = buf_k.clone()
    shrink(x, pool.a, buf_k, *meta, pool.row_start, pool.rank)
    getattr(ref, f"{kind}_shrink")(x, pool.a, buf_r, *meta, pool.row_start, pool.rank)
    abs_terms = torch.zeros((S, T, R), device=DEVICE)
    getattr(ref, f"{kind}_shrink")(x.abs(), pool.a.abs(), abs_terms, *meta, pool.row_start, pool.rank)
    assert_within(buf_k, buf_r, _bound(buf_r, abs_terms, x.shape[1], torch.float32), f"sliced {kind}_shrink")
    assert (~torch.isnan(buf_r)).any(), "test bug: nothing written"

    buf = buf_r.clone()
    W = y_offset + N + 3
    y0 = torch.randn(T, W, generator=g).to(DEVICE)
    # NaN wherever nothing may be written: columns outside the slices, and per slice the rows of tokens whose
    # slot does not target it
    y0[:, :y_offset] = NAN
    y0[:, y_offset + N:] = NAN
    off = y_offset
    for s, n in enumerate(pool.widths):
        valid = slots >= 0
        r = torch.where(valid, pool.rank[s].long()[slots.long().clamp(min=0)], 0)
        y0[r == 0, off:off + n] = NAN
        off += n
    y0 = y0.to(pool.b.dtype)
    y_k, y_r = y0.clone(), y0.clone()
    expand(buf, pool.b, y_k, *meta, pool.row_start, pool.rank, pool.scale, y_offset, pool.widths)
    getattr(ref, f"{kind}_expand")(buf, pool.b, y_r, *meta, pool.row_start, pool.rank, pool.scale, y_offset,
                                   pool.widths)
    abs_y = torch.zeros((T, W), device=DEVICE)
    getattr(ref, f"{kind}_expand")(buf.abs().nan_to_num(0.0), pool.b.abs(), abs_y, *meta, pool.row_start, pool.rank,
                                   pool.scale.abs(), y_offset, pool.widths)
    abs_y += y0.float().abs().nan_to_num(0.0)
    round_b = ROUNDING[pool.b.dtype] if pool.b.dtype != torch.float32 else 0.0
    assert_within(y_k, y_r, _bound(y_r, abs_y, R + 1, pool.b.dtype, round_b), f"sliced {kind}_expand")


# q, k, v of 4 adapters: slot 1 targets only q and v (k rank 0), slot 3 is empty, ranks differ per slice
QKV_RANKS = [[16, 8, 64, 0], [16, 0, 32, 0], [16, 8, 5, 0]]


@pytest.mark.parametrize("kind", ["sgmv", "bgmv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_sliced_qkv(kind, dtype):
    """q/k/v as one shrink and one expand launch: widths that are not powers of two, a slot that skips k, slot -1
    tokens, an empty slot, empty segments."""
    pool = SlicedPool(QKV_RANKS, in_f=72, widths=[96, 24, 24], dtype=dtype, seed=80)
    spec = [(3, 0), (0, 2), (2, -1), (4, 1), (1, 3), (5, 2), (1, 0)]
    check_sliced(kind, pool, spec, dtype, seed=81)


@pytest.mark.parametrize("tokens,splits,reduce", [(1, 1, "atomic"), (1, 3, "atomic"), (1, 3, "kernel"),
                                                  (4, 1, "atomic"), (4, 2, "atomic"), (8, 3, "kernel")])
def test_sliced_bgmv_launch_variants(tokens, splits, reduce):
    """Sliced BGMV with one token per program (GEMV kernels) and several (tl.dot kernels), forced K splits summed
    by the last split of each slice's tile ("atomic") or by a second launch ("kernel"), tokens of one slot
    scattered."""
    pool = SlicedPool(QKV_RANKS, in_f=200, widths=[64, 40, 40], dtype=torch.bfloat16, seed=82 + tokens)
    spec = [(3, 0), (2, 2), (1, -1), (4, 1), (1, 3), (3, 2), (2, 0)]
    T = sum(n for n, _ in spec)
    order = list(range(T))
    random.Random(tokens * 10 + splits).shuffle(order)
    cfgs = dict(cfg=dataclasses.replace(tri.BGMV_SHRINK_CONFIG, split_reduce=reduce),
                gemv_cfg=dataclasses.replace(tri.BGMV_SHRINK_GEMV_CONFIG, split_reduce=reduce))
    check_sliced("bgmv", pool, spec, torch.bfloat16, seed=83, order=order, tokens=tokens, splits=splits, gemv_n=32,
                 **cfgs)
    part, lock = tri._SCRATCH.get((torch.device(DEVICE).type, torch.device(DEVICE).index), (None, None))
    assert lock is None or int(lock.abs().sum()) == 0, "split-K counters must be back at 0"


@pytest.mark.parametrize("kind", ["sgmv", "bgmv"])
def test_sliced_gate_up_into_offset_and_zero_width(kind):
    """Two slices (gate/up) at a y offset; and three slices of which the middle one has no columns."""
    pool = SlicedPool([[8, 32, 1], [8, 0, 128]], in_f=48, widths=[136, 72], dtype=torch.float16, seed=84)
    spec = [(2, 0), (3, 1), (1, -1), (4, 2)]
    check_sliced(kind, pool, spec, torch.float16, seed=85, y_offset=7)
    pool = SlicedPool([[8, 16], [8, 16], [4, 0]], in_f=32, widths=[40, 0, 24], dtype=torch.float32, seed=86)
    check_sliced(kind, pool, [(3, 1), (2, 0)], torch.float32, seed=87)


def test_sliced_rejects_bad_layouts():
    pool = SlicedPool(QKV_RANKS, in_f=32, widths=[16, 8, 8], dtype=torch.float32, seed=88)
    T = 2
    slots = torch.zeros(T, dtype=torch.int32, device=DEVICE)
    x = torch.randn(T, 32, device=DEVICE)
    y = torch.zeros(T, 32, device=DEVICE)
    buf = torch.zeros(3, T, pool.R, device=DEVICE)
    for mod in (tri, ref):
        with pytest.raises(ValueError, match="same S"):
            mod.bgmv_shrink(x, pool.a, buf[:2], slots, pool.row_start, pool.rank)
        with pytest.raises(ValueError, match="adding up"):
            mod.bgmv_expand(buf, pool.b, y, slots, pool.row_start, pool.rank, pool.scale, 0, (16, 8, 9))
        with pytest.raises(ValueError, match="adding up"):
            mod.bgmv_expand(buf, pool.b, y, slots, pool.row_start, pool.rank, pool.scale)   # slices missing
    four = torch.zeros(4, T, pool.R, device=DEVICE)
    with pytest.raises(ValueError, match="at most 3 slices"):
        tri.bgmv_expand(four, pool.b, y, slots, pool.row_start, torch.zeros(4, 4, dtype=torch.int32, device=DEVICE),
                        torch.zeros(4, 4, device=DEVICE), 0, (8, 8, 8, 8))
