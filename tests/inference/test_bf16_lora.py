"""The engine in bf16 end to end with several adapters in one batch, against HF + PEFT in bf16.

The CPU LoRA path in bf16 is the one-slice path of kernels/torch_ops.py (float32 accumulation, one rounding into
the bf16 output, as the references define); HF + PEFT computes its LoRA in bf16 with its own roundings, so the
logits may differ by a few bf16 eps of the largest logit (the tolerance is ~8 eps, as for the base model in
test_model_loading.py). Greedy tokens are compared where the reference's top-2 margin exceeds that tolerance.
"""

from __future__ import annotations

import torch

from openlora.inference import LLM, SamplingParams

PROMPTS = [[5, 9, 17, 33, 2, 40], [7, 7, 8, 60, 61], [11, 3, 19, 28, 90, 4, 4]]
TOL = 3e-2


def test_bf16_engine_with_adapters_close_to_peft_bf16(tiny):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = tiny.model("llama")
    ads = {"a": tiny.adapter(base, rank=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=1),
           "b": tiny.adapter(base, rank=16, targets=("q_proj", "v_proj", "gate_proj", "down_proj"), seed=2)}
    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).eval()
    peft = PeftModel.from_pretrained(hf, str(ads["a"]), adapter_name="a")
    peft.load_adapter(str(ads["b"]), adapter_name="b")
    peft.eval()
    llm = LLM(base, dtype="bfloat16", device="cpu")
    for n, p in ads.items():
        llm.load_adapter(n, p)
    names = ["a", "b", None]
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=1, temperature=0.0, logprobs=1), adapters=names)
    assert llm.engine.model.dtype == torch.bfloat16 and llm.engine.lora_pool.a_fused["qkv"].dtype == torch.bfloat16
    checked = 0
    for prompt, name, out in zip(PROMPTS, names, outs):
        assert out.error is None
        with torch.no_grad():
            if name is None:
                with peft.disable_adapter():
                    want = peft(input_ids=torch.tensor([prompt])).logits[0, -1].float()
            else:
                peft.set_adapter(name)
                want = peft(input_ids=torch.tensor([prompt])).logits[0, -1].float()
                with peft.disable_adapter():
                    plain = peft(input_ids=torch.tensor([prompt])).logits[0, -1].float()
                # the adapter moves the logits by far more than the tolerance: ignoring it would fail below
                assert float((plain - want).abs().max() / want.abs().max()) > 3 * TOL
        eng = llm.engine
        eng.add_request(prompt, SamplingParams(max_tokens=1, temperature=0.0), adapter=name)
        while True:        # the adapter is resident already; one scheduling step runs the prefill
            sched = eng.scheduler.schedule()
            if not sched.empty:
                break
        got = eng.runner.run(sched).logits[0]
        eng.scheduler.abort(sched.scheduled[0].seq.request_id)
        assert float((got - want).abs().max() / want.abs().max()) <= TOL, name
        top2 = want.topk(2).values
        if float(top2[0] - top2[1]) > 2 * TOL * float(want.abs().max()):
            assert out.token_ids[0] == int(want.argmax())
            checked += 1


def test_bf16_on_a_cpu_without_bf16_dot_products_packs_float32_and_keeps_bf16_semantics(tiny, monkeypatch):
    """Where the CPU has no bf16 dot products (this CI box: AVX2), the base linears run as float32 GEMMs over the
    bf16 weights (exact products, float32 accumulation, output rounded to bf16): the same logits as the plain bf16
    linears within bf16 rounding, with the activations, KV cache and LoRA pool still bf16. A CPU that has them
    keeps the bf16 GEMMs."""
    from openlora.inference import lora as lora_mod
    from openlora.inference import model as model_mod
    base = tiny.model("llama")
    ad = tiny.adapter(base, rank=8, targets=("q_proj", "v_proj", "gate_proj"), seed=4)
    logits: dict = {}
    for native_bf16 in (False, True):
        monkeypatch.setattr(model_mod, "cpu_has_bf16_dot", lambda v=native_bf16: v)
        llm = LLM(base, dtype="bfloat16", device="cpu")
        llm.load_adapter("a", ad)
        m = llm.engine.model
        assert m.bf16_upcast is (not native_bf16)
        linear = m.layers[0].linears["qkv"]
        assert linear.packed is (not native_bf16) and linear.out_dtype == torch.bfloat16
        assert ("upcast" in m.linear_kernels) is (not native_bf16)
        assert llm.engine.runner.kv_caches[0][0].dtype == torch.bfloat16
        assert llm.engine.lora_pool.a_fused["qkv"].dtype == torch.bfloat16
        outs = llm.generate(PROMPTS, SamplingParams(max_tokens=4, temperature=0.0, logprobs=1),
                            adapters=["a", None, "a"])
        assert all(o.error is None for o in outs)
        logits[native_bf16] = [(list(o.token_ids), o.logprobs) for o in outs]
        if not native_bf16:
            assert lora_mod.can_pack_cpu(torch.zeros(2, 2, dtype=torch.bfloat16), upcast_bf16=True)
            assert not lora_mod.can_pack_cpu(torch.zeros(2, 2, dtype=torch.bfloat16))
    for (tok_up, lp_up), (tok_plain, lp_plain) in zip(logits[False], logits[True]):
        # the same tokens as long as both agree; there, each chosen token's logprob within bf16 rounding
        for t_u, t_p, a, b in zip(tok_up, tok_plain, lp_up, lp_plain):
            if t_u != t_p:
                break
            assert abs(a - b) <= 0.05, (a, b)
        assert tok_up[0] == tok_plain[0]


def test_bf16_keeps_bf16_linears_when_float32_copies_would_not_fit(tiny, monkeypatch, caplog):
    """An operator who chose bf16 to fit memory keeps bf16 weights: no float32 copies when they would take more
    than half of the memory available (a warning says why)."""
    from openlora.inference import model as model_mod
    monkeypatch.setattr(model_mod, "cpu_has_bf16_dot", lambda: False)
    monkeypatch.setattr(model_mod, "host_available_bytes", lambda: 1 << 10)
    with caplog.at_level("WARNING"):
        llm = LLM(tiny.model("llama"), dtype="bfloat16", device="cpu")
    m = llm.engine.model
    assert not m.bf16_upcast and not m.layers[0].linears["qkv"].packed
    assert m.layers[0].linears["qkv"].weight.dtype == torch.bfloat16
    assert "stay bfloat16" in caplog.text and m.linear_kernels == "torch F.linear in bfloat16"
    out = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=2, temperature=0.0))[0]
    assert out.error is None and len(out.token_ids) == 2
