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
