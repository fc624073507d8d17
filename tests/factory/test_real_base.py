"""A few training steps on the real demo base (SmolLM2-135M-Instruct, fp32 on CPU): chat rows go through its chat
template, the result is a PEFT adapter the engine's own loader accepts for that base, and the LoRA B matrices
moved away from their zero init. Skipped when the base model cannot be fetched (an offline machine without it)."""

from __future__ import annotations

import json
import math

import pytest

from openlora.factory import output
from openlora.factory.api import train_rows

ROWS = [{"prompt": "What does a LoRA adapter change?", "completion": "A low-rank update of frozen weights."},
        "Content identifiers let anyone check every row of a Datanet version."]


@pytest.fixture(scope="module")
def base():
    from openlora.devnet.base_model import BaseModelError, ensure_base_model
    try:
        return ensure_base_model(quiet=True)
    except BaseModelError as e:
        pytest.skip(f"the demo base model is not available here: {e}")


def test_a_few_steps_on_the_real_base(base, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from openlora.inference.lora import read_peft_adapter
    from openlora.inference.model_config import read_model_spec
    from openlora.factory.rows import Record, encode

    tok = AutoTokenizer.from_pretrained(str(base))
    e = encode(Record(prompt=ROWS[0]["prompt"], completion=ROWS[0]["completion"]), tok, 128)
    assert tok.decode(list(e.ids[:e.prompt_len])).startswith("<|im_start|>")      # its own chat template
    assert tok.decode([t for t, lab in zip(e.ids, e.labels) if lab != -100]).startswith("A low-rank update")

    r = train_rows(base, ROWS, tmp_path / "adapter", rank=4, alpha=8.0, epochs=1, batch=1, max_len=48, lr=1e-3,
                   samples=0)
    assert r.steps == 2 and math.isfinite(r.final_loss)
    m = r.manifest
    assert m["base"]["model_id"] == read_model_spec(base).model_id
    assert m["environment"]["device_class"].endswith("-fp32") and m["environment"]["threads"] == 1
    cfg = json.loads((r.out_dir / output.CONFIG).read_text())
    assert cfg["target_modules"] == ["q_proj", "v_proj"] and cfg["base_model_name_or_path"] == m["base"]["model_id"]
    weights = load_file(str(r.out_dir / output.WEIGHTS))
    assert len(weights) == 30 * 2 * 2                                  # 30 layers x (q, v) x (A, B)
    assert all(float(t.abs().max()) > 0 for k, t in weights.items() if "lora_B" in k)
    assert all(t.dtype == torch.float32 for t in weights.values())
    read_peft_adapter(r.out_dir, "factory", read_model_spec(base))     # the engine's loader accepts it
