"""Loading HF directories: sharded checkpoints, half precision, and clear errors for what cannot be served."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from openlora.inference import LLM, ModelLoadError, SamplingParams
from tests.inference.hf_reference import HFReference

PROMPT = [5, 17, 33, 100, 200, 45, 7, 9, 11]


def prefill_logits(llm: LLM, prompt: list[int]) -> torch.Tensor:
    eng = llm.engine
    eng.add_request(prompt, SamplingParams(max_tokens=1, temperature=0.0))
    return eng.runner.run(eng.scheduler.schedule()).logits[0]


def test_sharded_checkpoint_loads_and_matches(tiny, tmp_path):
    from transformers import AutoModelForCausalLM
    src = tiny.model("qwen2")
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(src).save_pretrained(sharded, max_shard_size="50KB")
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja") or f.name == "openlora_tiny.json":
            shutil.copy(f, sharded / f.name)
    assert (sharded / "model.safetensors.index.json").is_file()
    got = prefill_logits(LLM(sharded, dtype="float32", device="cpu"), PROMPT)
    want = HFReference(src).logits(PROMPT, None)[-1]
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 3e-2), ("float16", 5e-3)])
def test_half_precision_close_to_hf_in_the_same_dtype(tiny, dtype, tol):
    """bf16 keeps 8 mantissa bits (eps 2^-8 = 3.9e-3), fp16 11 (eps 9.8e-4); over 2 layers of sums of ~100
    rounded terms the logits may differ by a few eps of the largest logit: the tolerances are ~8 eps."""
    from transformers import AutoModelForCausalLM
    src = tiny.model("llama")
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, dtype)).eval()
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([PROMPT])).logits[0, -1].float()
    got = prefill_logits(LLM(src, dtype=dtype, device="cpu"), PROMPT)
    assert float((got - want).abs().max() / want.abs().max()) <= tol


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unsupported_architecture_is_named(tiny, tmp_path):
    d = copy_model(tiny.model("llama"), tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"architecture \['GPT2LMHeadModel'\] is not supported"):
        LLM(d, device="cpu")


def test_missing_and_misshapen_weights_are_named(tiny, tmp_path):
    d = copy_model(tiny.model("llama"), tmp_path / "m")
    w = load_file(d / "model.safetensors")
    del w["model.layers.1.mlp.down_proj.weight"]
    save_file(w, d / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"weights missing .*model\.layers\.1\.mlp\.down_proj\.weight"):
        LLM(d, device="cpu")
    w = load_file(tiny.model("llama") / "model.safetensors")
    w["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(7, 64)
    save_file(w, d / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"k_proj\.weight has shape \(7, 64\), the config implies \(32, 64\)"):
        LLM(d, device="cpu")


def test_pickle_checkpoints_are_never_loaded(tiny, tmp_path):
    d = copy_model(tiny.model("llama"), tmp_path / "m")
    (d / "model.safetensors").unlink()
    torch.save({}, d / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickled checkpoints are never loaded"):
        LLM(d, device="cpu")
