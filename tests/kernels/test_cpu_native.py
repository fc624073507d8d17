"""The native CPU kernels (kernels/csrc/cpu_kernels.c through kernels/cpu_native.py) against the torch references:
paged attention (decode and short chunks, GQA, block sizes, float32 and bfloat16 caches) and the segmented LoRA
shrink/expand (short segments native, long ones torch, slices, rank 0, no-adapter segments, strided buffers);
bad tables are errors, never out-of-bounds reads; the build cache and the fallback to torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openlora.kernels import cpu_native, ops
from openlora.kernels import reference as ref

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(cpu_native._compiler() is None, reason="no C compiler here: the native CPU kernels "
                                "cannot be built (the engine falls back to the torch kernels, tested elsewhere)")


def _paged(B, Hq, Hkv, D, bs, lens, n_new, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    max_blocks = max((L + bs - 1) // bs for L in lens) + 1
    nb = B * max_blocks + 3
    kc = torch.randn(nb, bs, Hkv, D, generator=g).to(dtype)
    vc = torch.randn(nb, bs, Hkv, D, generator=g).to(dtype)
    perm = torch.randperm(nb, generator=g)[:B * max_blocks].view(B, max_blocks).to(torch.int32)
    cu = torch.tensor([0] + list(torch.tensor(n_new).cumsum(0).tolist()), dtype=torch.int32)
    q = torch.randn(int(cu[-1]), Hq, D, generator=g).to(dtype)
    return q, kc, vc, perm, torch.tensor(lens, dtype=torch.int32), cu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Hq,Hkv,D,bs", [(4, 4, 16, 16), (9, 3, 64, 16), (8, 2, 32, 1), (6, 1, 8, 4)])
def test_decode_attention_matches_reference(nk, dtype, Hq, Hkv, D, bs):
    lens = [1, bs, bs + 1, 3 * bs - 1, 37]
    q, kc, vc, bt, sl, _ = _paged(len(lens), Hq, Hkv, D, bs, lens, [1] * len(lens), dtype)
    want, got = torch.empty_like(q), torch.empty_like(q)
    ref.paged_attention_decode(q, kc, vc, bt, sl, D ** -0.5, want)
    be = cpu_native.backend(nk)
    be.paged_attention_decode(q, kc, vc, bt, sl, D ** -0.5, got)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_and_long_prefill_match_reference(nk, dtype):
    # short runs (native), a long run (SDPA), a fresh prompt, a chunk after a cached prefix, a decode token
    lens, n_new = [50, 7, 100, 40, 33], [5, 1, 60, 40, 16]
    q, kc, vc, bt, sl, cu = _paged(5, 6, 2, 32, 8, lens, n_new, dtype, seed=1)
    want = ref.paged_attention(q, kc, vc, cu, sl, bt, 0.2)
    got = cpu_native.backend(nk).paged_attention(q, kc, vc, cu, sl, bt, 0.2)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_attention_never_reads_past_a_sequence(nk):
    """Slots past each length (stale blocks, padding entries of -1) hold NaN: nothing of them reaches the output."""
    lens = [3, 17, 9]
    q, kc, vc, bt, sl, cu = _paged(3, 4, 2, 16, 8, lens, [1, 1, 1], torch.float32)
    for b, L in enumerate(lens):
        nblk = (L + 7) // 8
        last = int(bt[b, nblk - 1])
        kc[last, L - (nblk - 1) * 8:] = float("nan")
        vc[last, L - (nblk - 1) * 8:] = float("nan")
        bt[b, nblk:] = -1
    out = nk.paged_attention(q, kc, vc, cu, sl, bt, 0.25)
    assert torch.isfinite(out).all()


def test_attention_threads_agree(nk):
    q, kc, vc, bt, sl, cu = _paged(7, 8, 2, 64, 16, [5, 70, 33, 1, 16, 17, 120], [1] * 7, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = nk.paged_attention(q, kc, vc, cu, sl, bt, 0.125)
        torch.set_num_threads(2)
        two = nk.paged_attention(q, kc, vc, cu, sl, bt, 0.125)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.parametrize("mutate,needle", [
    (lambda bt, sl, cu: bt.__setitem__((1, 0), 10**6), "outside the KV cache"),
    (lambda bt, sl, cu: bt.__setitem__((0, 0), -1), "outside the KV cache"),
    (lambda bt, sl, cu: sl.__setitem__(2, 10**6), "does not fit"),
    (lambda bt, sl, cu: sl.__setitem__(0, 0), "does not fit"),          # one query, no context
])
def test_bad_tables_are_errors_not_reads(nk, mutate, needle):
    q, kc, vc, bt, sl, cu = _paged(3, 4, 2, 16, 4, [5, 9, 2], [1, 1, 1], torch.float32)
    mutate(bt, sl, cu)
    with pytest.raises(ValueError, match=needle):
        nk.paged_attention(q, kc, vc, cu, sl, bt, 0.25)


def test_attention_refuses_shapes_it_cannot_serve(nk):
    q, kc, vc, bt, sl, cu = _paged(2, 4, 2, 16, 4, [5, 9], [1, 1], torch.float32)
    with pytest.raises(ValueError, match="not supported"):
        nk.paged_attention(q, kc.half(), vc.half(), cu, sl, bt, 0.25)
    with pytest.raises(ValueError, match="not supported"):
        nk.paged_attention(q[:, :, :8], kc, vc, cu, sl, bt, 0.25)
    with pytest.raises(ValueError, match="cu_q_lens"):
        nk.paged_attention(q, kc, vc, torch.tensor([0, 1, 3], dtype=torch.int32), sl, bt, 0.25)
    # float16 caches are served by the reference through the backend
    out = torch.empty_like(q.half())
    cpu_native.backend(nk).paged_attention_decode(q.half(), kc.half(), vc.half(), bt, sl, 0.25, out)
    want = torch.empty_like(out)
    ref.paged_attention_decode(q.half(), kc.half(), vc.half(), bt, sl, 0.25, want)
    torch.testing.assert_close(out, want)


def _lora_case(seed=0, slots=10, fin=40, widths=(48, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    S, P = 3, 300
    a = torch.randn(S, P, fin, generator=g)
    b = torch.randn(P, sum(widths), generator=g)
    rank = torch.randint(1, 17, (S, slots), generator=g, dtype=torch.int32)
    rank[1, 2] = 0                                     # adapter 2 does not target slice 1
    rank[:, 5] = 0                                     # slot 5 empty
    row_start = torch.arange(slots, dtype=torch.int32) * 16
    scale = torch.rand(S, slots, generator=g) + 0.5
    seg_lens = [1, 2, 1, 20, 3, 1, 1, 70, 1, 16, 17]   # shorter and longer than the C code's token chunks
    seg_slots = torch.tensor([-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=torch.int32)
    seg_starts = torch.tensor([0] + torch.tensor(seg_lens).cumsum(0).tolist(), dtype=torch.int32)
    x = torch.randn(int(seg_starts[-1]), fin, generator=g)
    return x, a, b, widths, rank, row_start, scale, seg_starts, seg_slots


@pytest.mark.parametrize("fin, widths", [(40, (48, 16, 16)), (43, (50, 13, 7)), (576, (576, 192, 192))])
def test_segment_lora_matches_reference(nk, fin, widths):
    """Input widths and slice widths that are and are not multiples of the C code's 8- and 16-float tiles."""
    x, a, b, widths, rank, row_start, scale, seg_starts, seg_slots = _lora_case(fin=fin, widths=widths)
    T = x.shape[0]
    be = cpu_native.backend(nk)
    # strided scratch, as the runner slices it out of a bigger buffer; columns past a rank must stay untouched
    big = torch.full((4, T + 3, 24), 7.0)
    got_buf, want_buf = big[:3, :T, :16], big[:3, :T, :16].clone()
    be.sgmv_shrink(x, a, got_buf, seg_starts, seg_slots, row_start, rank)
    ref.sgmv_shrink(x, a, want_buf, seg_starts, seg_slots, row_start, rank)
    torch.testing.assert_close(got_buf, want_buf, rtol=1e-5, atol=1e-4)
    assert (big[3] == 7.0).all() and (big[:, T:] == 7.0).all()
    y0 = torch.randn(T, sum(widths))
    got, want = y0.clone(), y0.clone()
    be.sgmv_expand(want_buf, b, got, seg_starts, seg_slots, row_start, rank, scale, 0, widths)
    ref.sgmv_expand(want_buf, b, want, seg_starts, seg_slots, row_start, rank, scale, 0, widths)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert torch.equal(got[:1], y0[:1]), "the no-adapter segment must be left as it is"


@pytest.mark.parametrize("fin, widths", [(43, (50, 13, 7)), (576, (576, 192, 192))])
@pytest.mark.parametrize("acts", [torch.float32, torch.bfloat16])
def test_segment_lora_bfloat16_pool_matches_reference(nk, fin, widths, acts):
    """A bfloat16 pool (read by the C code as bfloat16, widened in registers), with float32 or bfloat16 activations:
    the reference's float32 accumulation, one rounding into a bfloat16 y. The native backend must not fall back."""
    x, a, b, widths, rank, row_start, scale, seg_starts, seg_slots = _lora_case(seed=7, fin=fin, widths=widths)
    x, a, b = x.to(acts), a.bfloat16(), b.bfloat16()
    T = x.shape[0]
    assert nk.lora_supports(x, a, torch.zeros(1))
    be = cpu_native.backend(nk)
    got_buf, want_buf = torch.full((3, T, 16), 7.0), torch.full((3, T, 16), 7.0)
    be.sgmv_shrink(x, a, got_buf, seg_starts, seg_slots, row_start, rank)
    ref.sgmv_shrink(x, a, want_buf, seg_starts, seg_slots, row_start, rank)
    torch.testing.assert_close(got_buf, want_buf, rtol=1e-5, atol=1e-4)
    y0 = torch.randn(T, sum(widths), generator=torch.Generator().manual_seed(1)).to(acts)
    got, want = y0.clone(), y0.clone()
    be.sgmv_expand(want_buf, b, got, seg_starts, seg_slots, row_start, rank, scale, 0, widths)
    ref.sgmv_expand(want_buf, b, want, seg_starts, seg_slots, row_start, rank, scale, 0, widths)
    assert got.dtype == acts
    if acts == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    else:
        # Both round one float32 sum to bf16, but the sums differ in their last bits (another summation order): one
        # bf16 step of the result apart, plus the float32 rounding error of the sum where its terms cancel, bounded
        # by (rank + 1) x float32 eps x the sum of the terms' magnitudes (`mag`, the same expand over |values|).
        g, w = got.float(), want.float()
        ulp = torch.exp2(torch.floor(torch.log2(torch.maximum(g.abs(), w.abs()).clamp_min(1e-30))) - 7)
        mag = y0.float().abs()
        ref.sgmv_expand(want_buf.abs(), b.float().abs(), mag, seg_starts, seg_slots, row_start, rank, scale.abs(), 0,
                        widths)
        assert ((g - w).abs() <= ulp + 17 * 2 ** -23 * mag).all()
        assert (got == want).float().mean() > 0.999
    assert torch.equal(got[:1], y0[:1]), "the no-adapter segment must be left as it is"
    # an expand into some columns of a wider bfloat16 y touches only those columns
    wide = torch.randn(T, sum(widths) + 10).to(acts)
    before = wide.clone()
    be.sgmv_expand(want_buf, b, wide, seg_starts, seg_slots, row_start, rank, scale, 10, widths)
    assert torch.equal(wide[:, :10], before[:, :10]) and not torch.equal(wide[:, 10:], before[:, 10:])


def test_segment_lora_refuses_other_pool_dtypes(nk):
    x, a, b, widths, rank, row_start, scale, seg_starts, seg_slots = _lora_case()
    assert not nk.lora_supports(x, a.half(), torch.zeros(1))
    assert not nk.lora_supports(x, a, torch.zeros(1, dtype=torch.bfloat16))       # the scratch is float32
    with pytest.raises(ValueError, match="do not fit"):
        nk.sgmv_shrink(x, a.half(), torch.zeros(3, x.shape[0], 16), seg_starts, seg_slots, row_start, rank)
    with pytest.raises(ValueError, match="do not fit"):
        nk.sgmv_expand(torch.zeros(3, x.shape[0], 16), b.double(), torch.zeros(x.shape[0], 80), seg_starts,
                       seg_slots, row_start, rank, scale, 0, widths)


def test_segment_lora_same_bits_on_one_and_two_threads(nk):
    x, a, b, widths, rank, row_start, scale, seg_starts, seg_slots = _lora_case(seed=5, fin=43, widths=(50, 13, 7))
    T = x.shape[0]
    outs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            buf = torch.zeros(3, T, 16)
            nk.sgmv_shrink(x, a, buf, seg_starts, seg_slots, row_start, rank)
            y = torch.zeros(T, sum(widths))
            nk.sgmv_expand(buf, b, y, seg_starts, seg_slots, row_start, rank, scale, 0, widths)
            outs.append((buf, y))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_segment_lora_one_slice_with_offset(nk):
    x, a, b, widths, rank, row_start, scale, seg_starts, seg_slots = _lora_case(seed=3)
    T = x.shape[0]
    buf1, buf2 = torch.zeros(T, 16), torch.zeros(T, 16)
    cpu_native.backend(nk).sgmv_shrink(x, a[0], buf1, seg_starts, seg_slots, row_start, rank[0])
    ref.sgmv_shrink(x, a[0], buf2, seg_starts, seg_slots, row_start, rank[0])
    torch.testing.assert_close(buf1, buf2, rtol=1e-5, atol=1e-4)
    y1, y2 = torch.zeros(T, 70), torch.zeros(T, 70)
    cpu_native.backend(nk).sgmv_expand(buf2, b[:, :16], y1, seg_starts, seg_slots, row_start, rank[1], scale[1], 50)
    ref.sgmv_expand(buf2, b[:, :16], y2, seg_starts, seg_slots, row_start, rank[1], scale[1], 50)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("what", ["slot", "rows", "rank", "segments"])
def test_segment_lora_rejects_out_of_range_tables(nk, what):
    x, a, b, widths, rank, row_start, scale, seg_starts, seg_slots = _lora_case()
    if what == "slot":
        seg_slots[1] = 99
    elif what == "rows":
        row_start[0] = 295                              # rows 295 .. 295 + rank run past the 300-row pool
        rank[:, 0] = 16
    elif what == "rank":
        rank[0, 0] = 64                                 # wider than the 16-column buffer
    else:
        seg_starts[3] = 10**5
    buf = torch.zeros(3, x.shape[0], 16)
    with pytest.raises(ValueError, match="out of range"):
        nk.sgmv_shrink(x, a, buf, seg_starts, seg_slots, row_start, rank)
    with pytest.raises(ValueError, match="out of range"):
        nk.sgmv_expand(buf, b, torch.zeros(x.shape[0], 80), seg_starts, seg_slots, row_start, rank, scale, 0,
                       widths)


def test_segment_lora_rejects_inconsistent_shapes(nk):
    x, a, b, widths, rank, row_start, scale, seg_starts, seg_slots = _lora_case()
    T = x.shape[0]
    buf = torch.zeros(3, T, 16)
    with pytest.raises(ValueError, match="do not fit together"):          # one row start short
        nk.sgmv_shrink(x, a, buf, seg_starts, seg_slots, row_start[:-1], rank)
    with pytest.raises(ValueError, match="do not fit together"):          # segment table one entry short
        nk.sgmv_shrink(x, a, buf, seg_starts[:-1], seg_slots, row_start, rank)
    with pytest.raises(ValueError, match="must match slot_rank"):        # scales for fewer slots
        nk.sgmv_expand(buf, b, torch.zeros(T, 80), seg_starts, seg_slots, row_start, rank, scale[:, :4], 0, widths)
    wide = torch.zeros(T, 200)
    with pytest.raises(ValueError, match="must lie in y"):                # a column view narrower than its stride
        nk.sgmv_expand(buf, b, wide[:, 100:170], seg_starts, seg_slots, row_start, rank, scale, 0, widths)
    with pytest.raises(ValueError, match="do not fit"):                   # x wider than the pool's rows
        nk.sgmv_shrink(torch.zeros(T, 41), a, buf, seg_starts, seg_slots, row_start, rank)


def test_auto_picks_native_on_cpu_and_off_switch_falls_back():
    assert ops.get_backend("auto", "cpu").name == "native"
    assert ops.get_backend("torch", "cpu").name == "torch"
    code = ("from openlora.kernels import ops, cpu_native; b = ops.get_backend('auto', 'cpu'); "
            "print(b.name, '|', cpu_native.unavailable_reason())")
    env = {**os.environ, "OPENLORA_CPU_KERNELS": "off"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch | OPENLORA_CPU_KERNELS=off"
    env = {**os.environ, "OPENLORA_CPU_KERNELS": "off"}
    code = "from openlora.kernels import ops; ops.get_backend('native', 'cpu')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "native CPU kernels are not available" in out.stderr


def test_build_cache_is_keyed_and_survives_a_corrupt_library(tmp_path):
    """A fresh cache builds; a truncated library in the cache is rebuilt, not loaded; no compiler -> torch."""
    code = ("from openlora.kernels import cpu_native; k = cpu_native.load(); "
            "print(k.path if k else 'none', '|', cpu_native.unavailable_reason())")
    env = {**os.environ, "OPENLORA_KERNEL_CACHE": str(tmp_path / "cache")}
    env.pop("OPENLORA_CPU_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lib = Path(out.stdout.split("|")[0].strip())
    assert lib.is_file() and lib.is_relative_to(tmp_path / "cache")
    lib.write_bytes(b"\x7fELF truncated")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.split("|")[0].strip()) == lib and lib.stat().st_size > 1000
    env["CC"] = str(tmp_path / "no-such-compiler")
    env["PATH"] = str(tmp_path)                     # neither cc nor gcc nor clang
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none | no C compiler found ($CC, cc, gcc, clang)"


def test_fused_elementwise_ops_match_torch(nk):
    from openlora.inference.model import _rotate_half, rms_norm
    g = torch.Generator().manual_seed(5)
    h = torch.randn(7, 96, generator=g)
    d = torch.randn(7, 96, generator=g)
    w = torch.rand(96, generator=g) + 0.5
    h1, h2 = h.clone(), h.clone()
    got = nk.add_rms_norm(h1, d, w, 1e-5)
    h2.add_(d)
    torch.testing.assert_close(h1, h2, rtol=0, atol=0)                 # the residual stream, updated in place
    torch.testing.assert_close(got, rms_norm(h2, w, 1e-5), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(nk.add_rms_norm(h2, None, w, 1e-5), rms_norm(h2, w, 1e-5), rtol=1e-6, atol=1e-6)
    # RoPE on the q and k heads of a fused qkv row, v untouched
    T, H, Hkv, D = 5, 4, 2, 16
    qkv = torch.randn(T, (H + 2 * Hkv) * D, generator=g)
    pos = torch.tensor([0, 1, 7, 300, 4095], dtype=torch.float32)
    freqs = pos[:, None] * (10000.0 ** (-torch.arange(0, D, 2).float() / D))[None]
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos(), emb.sin()
    want = qkv.clone()
    for lo, n in ((0, H), (H * D, Hkv)):
        part = want[:, lo:lo + n * D].view(T, n, D)
        part.copy_(part * cos[:, None] + _rotate_half(part) * sin[:, None])
    got = qkv.clone()
    nk.rope_(got, H + Hkv, D, cos, sin)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    gu = torch.randn(6, 2 * 40, generator=g) * 4
    torch.testing.assert_close(nk.silu_mul(gu), torch.nn.functional.silu(gu[:, :40]) * gu[:, 40:], rtol=1e-5,
                               atol=1e-6)


def test_fused_ops_refuse_what_they_cannot_serve(nk):
    with pytest.raises(ValueError, match="float32"):
        nk.add_rms_norm(torch.randn(3, 8).bfloat16(), None, torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="weight"):
        nk.add_rms_norm(torch.randn(3, 8), None, torch.ones(9), 1e-5)
    with pytest.raises(ValueError, match="delta"):
        nk.add_rms_norm(torch.randn(3, 8), torch.randn(2, 8), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        nk.rope_(torch.randn(3, 32), 3, 16, torch.randn(3, 16), torch.randn(3, 16))
    with pytest.raises(ValueError, match="unit column stride"):
        nk.silu_mul(torch.randn(8, 3).t())
    with pytest.raises(ValueError, match="contiguous"):
        nk.silu_mul(torch.randn(3, 16)[:, :8])


def test_store_kv_matches_reference_and_refuses_slots_past_the_cache(nk):
    g = torch.Generator().manual_seed(9)
    T, Hq, Hkv, D = 6, 4, 2, 8
    qkv = torch.randn(T, (Hq + 2 * Hkv) * D, generator=g)
    k = qkv[:, Hq * D:(Hq + Hkv) * D].view(T, Hkv, D)              # views into the fused output, as the model has
    v = qkv[:, (Hq + Hkv) * D:].view(T, Hkv, D)
    slots = torch.tensor([3, -1, 0, 17, 9, 31])
    kc1, vc1 = torch.zeros(4, 8, Hkv, D), torch.zeros(4, 8, Hkv, D)
    kc2, vc2 = kc1.clone(), vc1.clone()
    cpu_native.backend(nk).store_kv(k, v, kc1, vc1, slots)
    ref.store_kv(k, v, kc2, vc2, slots)
    assert torch.equal(kc1, kc2) and torch.equal(vc1, vc2) and kc1.abs().sum() > 0
    before = kc1.clone()
    with pytest.raises(ValueError, match="past the KV cache"):
        nk.store_kv(k, v, kc1, vc1, torch.tensor([3, -1, 0, 32, 9, 31]))
    assert torch.equal(kc1, before), "nothing is written when one slot is bad"


def test_segment_lora_rejects_a_rank_table_short_of_slices(nk):
    """One slot_rank row per slice: a table with fewer rows would make the C code read past it."""
    x, a, b, widths, rank, row_start, scale, seg_starts, seg_slots = _lora_case()
    T = x.shape[0]
    buf = torch.zeros(3, T, 16)
    with pytest.raises(ValueError, match="do not fit together"):
        nk.sgmv_shrink(x, a, buf, seg_starts, seg_slots, row_start, rank[:1])
    with pytest.raises(ValueError, match="do not fit together"):
        nk.sgmv_expand(buf, b, torch.zeros(T, 80), seg_starts, seg_slots, row_start, rank[:2], scale[:2], 0, widths)
    with pytest.raises(ValueError, match="do not fit together"):          # through the backend too
        cpu_native.backend(nk).sgmv_shrink(x, a, buf, seg_starts, seg_slots, row_start, rank[:1])


def test_native_wrappers_refuse_tensors_off_the_cpu(nk):
    """The C code dereferences data_ptr(): a tensor on another device (meta here; CUDA alike) must be an error,
    never a crash."""
    x, a, b, widths, rank, row_start, scale, seg_starts, seg_slots = _lora_case()
    T = x.shape[0]
    buf = torch.zeros(3, T, 16)
    meta = torch.device("meta")
    with pytest.raises(ValueError, match="CPU tensors"):
        nk.sgmv_shrink(x, a.to(meta), buf, seg_starts, seg_slots, row_start, rank)
    with pytest.raises(ValueError, match="CPU tensors"):
        nk.sgmv_shrink(x, a, buf, seg_starts.to(meta), seg_slots, row_start, rank)
    with pytest.raises(ValueError, match="CPU tensors"):
        nk.sgmv_expand(buf, b.to(meta), torch.zeros(T, 80), seg_starts, seg_slots, row_start, rank, scale, 0, widths)
    with pytest.raises(ValueError, match="CPU tensors"):
        nk.sgmv_expand(buf, b, torch.zeros(T, 80), seg_starts, seg_slots, row_start, rank, scale.to(meta), 0, widths)
    with pytest.raises(ValueError, match="CPU tensors"):
        nk.add_rms_norm(torch.zeros(2, 8), None, torch.ones(8, device=meta), 1e-5)
    kc = torch.zeros(4, 16, 2, 8)
    with pytest.raises(ValueError, match="CPU tensors"):
        nk.store_kv(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), kc, kc.clone(), torch.zeros(1, dtype=torch.long,
                                                                                            device=meta))
    with pytest.raises(ValueError, match="CPU tensors"):
        nk.paged_attention(torch.zeros(1, 4, 8, device=meta), kc, kc.clone(), torch.tensor([0, 1]),
                           torch.tensor([1]), torch.zeros(1, 1, dtype=torch.int32), 0.5)


def test_index_tables_wider_than_int32_or_not_integers_are_errors(nk):
    """A table value past int32 would wrap into another, valid-looking index; a float table would be truncated."""
    x, a, b, widths, rank, row_start, scale, seg_starts, seg_slots = _lora_case()
    buf = torch.zeros(3, x.shape[0], 16)
    wide = seg_starts.to(torch.int64)
    nk.sgmv_shrink(x, a, buf, wide, seg_slots, row_start, rank)            # int64 within range: fine
    wrapped = wide.clone()
    wrapped[-1] += 2 ** 32                                                   # wraps to the same int32 value
    with pytest.raises(ValueError, match="outside int32"):
        nk.sgmv_shrink(x, a, buf, wrapped, seg_slots, row_start, rank)
    with pytest.raises(ValueError, match="integer"):
        nk.sgmv_shrink(x, a, buf, seg_starts.float(), seg_slots, row_start, rank)
    q, kc, vc, bt, lens, cu = _paged(2, 4, 2, 16, 16, [20, 33], [1, 1], torch.float32)
    bad = bt.to(torch.int64)
    bad[0, 0] -= 2 ** 32
    with pytest.raises(ValueError, match="outside int32"):
        nk.paged_attention(q, kc, vc, cu, lens, bad, 0.25)
    with pytest.raises(ValueError, match="integer"):
        nk.paged_attention(q, kc, vc, cu, lens.float(), bt, 0.25)
    k = torch.randn(2, 2, 16)
    with pytest.raises(ValueError, match="integer"):
        nk.store_kv(k, k.clone(), kc, vc, torch.tensor([0.0, 1.0]))
