"""bfloat16 carried in float32 (kernels/csrc/cpu_kernels.c with `rb`, inference/model.py `carry_bf16`).

A bfloat16 model on a CPU without bfloat16 dot products runs its linears as float32 GEMMs; between them the native
backend keeps the activations as float32 tensors holding bfloat16 values, rounded where HF's bf16 forward rounds.
The references here are torch's own bfloat16 conversion and torch's bf16 elementwise ops (what HF runs), not this
project's code: the rounding must be torch's bit for bit, and the fused ops must round at the same points.
"""

from __future__ import annotations

import pytest
import torch

from openlora.kernels import cpu_native
from openlora.kernels import reference as ref

pytestmark = pytest.mark.skipif(cpu_native._compiler() is None, reason="no C compiler here: the native CPU kernels "
                                "cannot be built (the engine falls back to the torch kernels, tested elsewhere)")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in bfloat16 steps between two tensors of bfloat16 values of the same sign (held as float32)."""
    return ((_bits(a) >> 16) - (_bits(b) >> 16)).abs()


def test_round_bf16_is_torchs_conversion_bit_for_bit(nk):
    one = 1.0
    specials = torch.tensor([
        0.0, -0.0, one, -one,
        one + 2 ** -8, one + 3 * 2 ** -8,            # ties: to even (down), to even (up)
        -(one + 2 ** -8), one + 2 ** -8 + 2 ** -20,   # a tie's mirror; just past a tie rounds up
        3.4028234663852886e38, -3.4028234663852886e38,   # the largest float32 rounds to +-inf, as in torch
        3.3895313892515355e38,                        # the largest bfloat16 stays
        float("inf"), float("-inf"), 1e-40, -1e-42, 1.1754942e-38, 2 ** -133,   # subnormals
    ], dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(20000, generator=g) * torch.exp2(torch.randint(-140, 120, (20000,), generator=g).float())
    raw = torch.randint(-2 ** 31, 2 ** 31 - 1, (20000,), generator=g, dtype=torch.int64).to(torch.int32)
    for x in (specials, wide, raw.view(torch.float32)):      # every bit pattern: NaNs, infs, subnormals included
        x = x.view(1, -1)
        want = x.to(torch.bfloat16).float()
        got = nk.round_bf16_(x.clone())
        nan = want.isnan()
        assert torch.equal(got.isnan(), nan)
        assert torch.equal(_bits(got)[~nan], _bits(want)[~nan])


def test_round_bf16_keeps_columns_outside_the_view(nk):
    base = torch.full((4, 10), 1.0 + 2 ** -9)       # not a bfloat16 value: a touched column would change
    view = base[:, 2:7]
    nk.round_bf16_(view)
    assert torch.equal(view, torch.ones(4, 5))
    assert torch.equal(base[:, :2], torch.full((4, 2), 1.0 + 2 ** -9))
    assert torch.equal(base[:, 7:], torch.full((4, 3), 1.0 + 2 ** -9))
    with pytest.raises(ValueError, match="float32"):
        nk.round_bf16_(torch.ones(2, 3, dtype=torch.bfloat16))


def _bf16(*shape, g, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)


def test_fused_ops_with_rounding_match_torch_bf16_ops(nk):
    """HF's bf16 forward, op by op in torch bf16, against the fused ops on the same values held in float32."""
    from openlora.inference.model import _rotate_half, rms_norm
    g = torch.Generator().manual_seed(11)
    T, H = 33, 576
    h, d = _bf16(T, H, g=g, scale=3.0), _bf16(T, H, g=g)
    w = (torch.rand(H, generator=g) + 0.5).to(torch.bfloat16)
    hf = h.float()
    got = nk.add_rms_norm(hf, d.float(), w.float(), 1e-5, round_bf16=True)
    res = h + d                                                   # torch bf16: computed in float32, rounded
    assert torch.equal(_bits(hf), _bits(res.float())), "the residual add rounds as torch's bf16 add"
    want = rms_norm(res, w, 1e-5).float()                         # HF LlamaRMSNorm in bf16
    # the sum of squares runs in another order (and 1/sqrt vs torch's rsqrt): a row's scale may differ in the last
    # float32 bit, which moves a value whose float32 product sits at a rounding tie by one bfloat16 step
    ulps = _ulps(got, want)
    assert int(ulps.max()) <= 1 and float((ulps > 0).float().mean()) < 0.01
    assert torch.equal(_bits(got), _bits(got.bfloat16().float())), "every output is a bfloat16 value"

    # RoPE: each product rounded, then the sum; products of bfloat16 values are exact in float32, so bit for bit
    Hq, Hkv, D = 9, 3, 64
    qkv = _bf16(T, (Hq + 2 * Hkv) * D, g=g, scale=2.0)
    pos = torch.arange(T, dtype=torch.float32) * 37
    freqs = pos[:, None] * (10000.0 ** (-torch.arange(0, D, 2).float() / D))[None]
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos().bfloat16(), emb.sin().bfloat16()
    want = qkv.clone()
    for lo, n in ((0, Hq), (Hq * D, Hkv)):
        part = want[:, lo:lo + n * D].view(T, n, D)
        part.copy_(part * cos[:, None] + _rotate_half(part) * sin[:, None])
    got = qkv.float()
    nk.rope_(got, Hq + Hkv, D, cos.float(), sin.float(), round_bf16=True)
    assert torch.equal(_bits(got), _bits(want.float()))

    # SiLU * up: the SiLU rounded, then the product (this exp differs from torch's in the last float32 bits)
    gu = _bf16(T, 2 * 1536, g=g, scale=4.0)
    got = nk.silu_mul(gu.float(), round_bf16=True)
    want = (torch.nn.functional.silu(gu[:, :1536]) * gu[:, 1536:]).float()
    ulps = _ulps(got, want)
    assert int(ulps.max()) <= 1 and float((ulps > 0).float().mean()) < 0.01
    unrounded = nk.silu_mul(gu.float())
    assert not torch.equal(unrounded, got), "without rounding the result is not the bf16 one"
    # past exp's overflow torch's SiLU is -0 (finite gate) or NaN (-inf); the native one says the same
    edge = torch.tensor([[-90.0, -1e30, float("-inf"), -88.8, 3.0, 8.0, 8.0, 8.0, 8.0, 8.0]]).bfloat16()
    want = (torch.nn.functional.silu(edge[:, :5]) * edge[:, 5:]).float()
    for rb in (False, True):
        got = nk.silu_mul(edge.float(), round_bf16=rb)
        assert torch.equal(got[:, :4].isnan(), want[:, :4].isnan()) and torch.equal(got[:, :4].nan_to_num(),
                                                                                    want[:, :4].nan_to_num())
        assert torch.equal(torch.signbit(got[:, :2]), torch.signbit(want[:, :2]))


def test_fused_ops_refuse_rows_that_overlap(nk):
    """An expanded tensor's rows share memory: a written one would be summed into once per row, by racing threads
    (torch's own in-place ops refuse it the same way)."""
    base = torch.ones(1, 8)
    with pytest.raises(ValueError, match="rows apart"):
        nk.add_rms_norm(base.expand(4, 8), torch.ones(4, 8), torch.ones(8), 1e-5, round_bf16=True)
    with pytest.raises(ValueError, match="rows apart"):
        nk.round_bf16_(base.expand(3, 8))
    with pytest.raises(ValueError, match="rows apart"):
        nk.rope_(torch.ones(1, 32).expand(2, 32), 2, 16, torch.ones(2, 16), torch.zeros(2, 16))
    assert torch.equal(base, torch.ones(1, 8))
    nk.round_bf16_(torch.ones(1, 8).expand(1, 8))       # one row cannot overlap itself


def test_store_kv_into_a_bf16_cache_rounds_as_torch(nk):
    g = torch.Generator().manual_seed(9)
    T, Hq, Hkv, D = 6, 4, 2, 8
    qkv = torch.randn(T, (Hq + 2 * Hkv) * D, generator=g) * 100      # not bfloat16 values: they must round
    k = qkv[:, Hq * D:(Hq + Hkv) * D].view(T, Hkv, D)
    v = qkv[:, (Hq + Hkv) * D:].view(T, Hkv, D)
    slots = torch.tensor([3, -1, 0, 17, 9, 31])
    kc1, vc1 = torch.zeros(4, 8, Hkv, D, dtype=torch.bfloat16), torch.zeros(4, 8, Hkv, D, dtype=torch.bfloat16)
    kc2, vc2 = kc1.clone(), vc1.clone()
    nk.store_kv(k, v, kc1, vc1, slots)                 # the native kernel itself, not the backend's dispatch
    ref.store_kv(k, v, kc2, vc2, slots)
    assert torch.equal(kc1.view(torch.int16), kc2.view(torch.int16)) and kc1.float().abs().sum() > 0
    assert torch.equal(vc1.view(torch.int16), vc2.view(torch.int16))
    with pytest.raises(ValueError, match="past the KV cache"):
        nk.store_kv(k, v, kc1, vc1, torch.tensor([3, -1, 0, 32, 9, 31]))
    with pytest.raises(ValueError, match="do not fit"):
        nk.store_kv(k, v, kc1.half(), vc1.half(), slots)


def test_linear_keep_f32_is_the_bf16_output_held_in_float32(nk):
    """`LoRALinear(..., keep_f32=True)` returns float32 holding exactly the bf16 tensor the plain call returns."""
    from openlora.inference.lora import LoRALinear
    g = torch.Generator().manual_seed(2)
    w = torch.randn(96, 64, generator=g).bfloat16()
    lin = LoRALinear(w, torch.randn(96, generator=g).bfloat16(), 0, "o", (96,))
    assert lin.pack_for_cpu(upcast_bf16=True)
    be = cpu_native.backend(nk)
    x = torch.randn(5, 64, generator=g).bfloat16()
    plain = lin(x, None, None, be)
    kept = lin(x.float(), None, None, be, keep_f32=True)
    assert plain.dtype == torch.bfloat16 and kept.dtype == torch.float32
    assert torch.equal(_bits(kept), _bits(plain.float()))
    assert not torch.equal(kept, x.float() @ w.float().t()), "rounded, not the raw float32 product"


def test_engine_carries_bf16_in_float32_with_the_same_logits(tiny, monkeypatch):
    """The bf16 engine on a CPU without bf16 dot products, with and without the carry: the model's logits at every
    step (prefills and decodes, with an adapter) agree to the bit but for the rare one-step flips of RMSNorm's sum
    order and SiLU's exp (none on this box), and the carry really runs (every GEMM gets float32 input). A rounding
    point dropped from the forward changes most logits, so this catches it (the greedy tokens alone would not)."""
    from openlora.inference import LLM, SamplingParams
    from openlora.inference import model as model_mod
    from openlora.inference.lora import LoRALinear
    monkeypatch.setattr(model_mod, "cpu_has_bf16_dot", lambda: False)
    base = tiny.model("llama")
    ad = tiny.adapter(base, rank=8, targets=("q_proj", "v_proj", "gate_proj", "down_proj"), seed=4)
    llm = LLM(base, dtype="bfloat16", device="cpu", kernel_backend="native")
    llm.load_adapter("a", ad)
    m = llm.engine.model
    assert m.bf16_upcast and m.carry_bf16
    inputs: list = []
    real_call = LoRALinear.__call__

    def spy(self, x, *args, **kw):
        inputs.append((x.dtype, kw.get("keep_f32", args[3] if len(args) > 3 else False)))
        return real_call(self, x, *args, **kw)

    monkeypatch.setattr(LoRALinear, "__call__", spy)
    logits: list = []
    real_forward = m.forward
    monkeypatch.setattr(m, "forward", lambda *a, **k: logits.append(real_forward(*a, **k).clone()) or logits[-1])
    prompts = [[5, 9, 17, 33, 2, 40], [7, 7, 8, 60, 61] * 20, [11, 3, 19, 28, 90, 4, 4]]
    params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=1)
    runs = {}
    for carry in (True, False):
        m.carry_bf16 = carry
        inputs.clear()
        logits.clear()
        outs = llm.generate(prompts, params, adapters=["a", None, "a"])
        assert all(o.error is None for o in outs)
        runs[carry] = ([list(o.token_ids) for o in outs], [t.clone() for t in logits])
        assert inputs and all(dt == (torch.float32 if carry else torch.bfloat16) and keep is carry
                              for dt, keep in inputs), set(inputs)
    assert runs[True][0] == runs[False][0]
    got, want = torch.cat(runs[True][1]), torch.cat(runs[False][1])
    assert got.shape == want.shape and got.shape[0] >= 6
    assert torch.equal(_bits(got), _bits(got.bfloat16().float())), "logits are bf16 values"
    step = want.abs().clamp(min=2 ** -126) * 2 ** -7                 # one bf16 step at each logit's magnitude
    differ = (got != want)
    assert float(differ.float().mean()) <= 0.01 and bool(((got - want).abs() <= step)[differ].all())
