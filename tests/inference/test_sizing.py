"""Auto sizing (inference/sizing.py): the KV cache, LoRA pool and host tier from free memory and the model's shapes.

SmolLM2-135M's shapes (30 layers, hidden 576, 3 KV heads of 64) are given as a config.json, so no weights are
needed; the memory probes are replaced by fixed numbers.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from openlora.inference import LLM, EngineConfig
from openlora.inference import sizing
from openlora.inference.model_config import read_model_spec

GiB = 2**30
SMOLLM2 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
           "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
           "rope_theta": 100000.0, "tie_word_embeddings": True}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    d = tmp_path_factory.mktemp("smollm2-shapes")
    (d / "config.json").write_text(json.dumps(SMOLLM2))
    return read_model_spec(d)


def plan(spec, device="cpu", free=16 * GiB, host=16 * GiB, **kw):
    args = dict(kv_cache_bytes="auto", lora_pool_bytes="auto", host_cache_bytes="auto", max_num_seqs=64,
                max_model_len=8192, max_loras=64, max_num_batched_tokens=2048)
    args.update(kw)
    return sizing.plan_memory(spec, torch.float32, torch.device(device), free_bytes=free, host_free_bytes=host,
                              **args)


def test_cpu_auto_sizes_fit_the_model_and_the_machine(spec):
    p = plan(spec)
    row = sizing.lora_bytes_per_row(spec, torch.float32)
    tok = sizing.kv_bytes_per_token(spec, torch.float32)
    assert tok == 2 * 30 * 3 * 64 * 4 and row == 30 * 4 * sum(i + o for i, o in spec.module_shapes().values())
    # 64 slots x rank 32 of this 30-layer model need 2.3 GiB: capped at 25% of 30% of 16 GiB
    assert p.lora_pool_bytes == int(0.25 * 0.3 * 16 * GiB)
    assert p.lora_pool_bytes // row >= 33 * 32 // 2          # far more than the old 64 MiB (~52 rows)
    # KV: 64 sequences of 8192 tokens would need 24 GiB; capped at 60% of the budget (and 4 GiB)
    assert p.kv_cache_bytes == int(0.6 * 0.3 * 16 * GiB) and p.kv_cache_bytes < 4 * GiB
    assert p.host_cache_bytes == min(4 * p.lora_pool_bytes, 4 * GiB)       # 4 pools, capped at 25% of the host
    assert p.kv_cache_bytes + p.lora_pool_bytes <= 0.3 * 16 * GiB
    assert "capped" in p.sources["kv_cache_bytes"] and "capped" in p.sources["lora_pool_bytes"]


def test_small_memory_keeps_minimums_and_big_memory_stops_at_need(spec):
    p = plan(spec, free=1 * GiB, host=1 * GiB)
    assert p.kv_cache_bytes >= 8192 * sizing.kv_bytes_per_token(spec, torch.float32)       # one full sequence
    assert p.lora_pool_bytes >= sizing.MIN_POOL_ROWS * sizing.lora_bytes_per_row(spec, torch.float32)
    assert p.host_cache_bytes >= p.lora_pool_bytes
    big = plan(spec, free=1024 * GiB, host=1024 * GiB)
    assert big.kv_cache_bytes == 4 * GiB                                   # the CPU cap (vLLM CPU's default)
    assert big.lora_pool_bytes == 64 * 32 * sizing.lora_bytes_per_row(spec, torch.float32)   # the need, no more


def test_gpu_kv_takes_what_the_pool_leaves(spec):
    p = plan(spec, device="cuda", free=80 * GiB, host=64 * GiB)
    budget = int(0.9 * 80 * GiB) - sizing.activation_bytes(spec, 2048, 64)
    assert p.lora_pool_bytes == 64 * 32 * sizing.lora_bytes_per_row(spec, torch.float32)
    assert p.kv_cache_bytes == min(64 * 8192 * sizing.kv_bytes_per_token(spec, torch.float32),
                                   budget - p.lora_pool_bytes)


def test_explicit_sizes_are_kept(spec):
    p = plan(spec, kv_cache_bytes=123 * 2**20, lora_pool_bytes=7 * 2**20, host_cache_bytes=9 * 2**20)
    assert (p.kv_cache_bytes, p.lora_pool_bytes, p.host_cache_bytes) == (123 * 2**20, 7 * 2**20, 9 * 2**20)
    assert set(p.sources.values()) == {"config"}


@pytest.mark.parametrize("bad", [0, -1, "big", True, 1.5])
def test_engine_config_refuses_bad_sizes(bad):
    with pytest.raises(ValueError, match="kv_cache_bytes=.*must be 'auto' or a number of bytes"):
        EngineConfig(model="x", kv_cache_bytes=bad)


def test_engine_logs_its_sizes_at_start(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="openlora.engine"):
        llm = LLM(tiny.model("llama"), dtype="float32", device="cpu")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("memory:"))
    assert "KV cache" in line and "LoRA pool" in line and "host tier" in line and "auto" in line
    eng = llm.engine
    assert eng.blocks.num_blocks * eng.blocks.block_size * sizing.kv_bytes_per_token(eng.spec, torch.float32) \
        <= eng.memory.kv_cache_bytes
    assert eng.memory.lora_pool_bytes >= 64 * 2**20          # small models keep the old fixed sizes as a floor
    assert eng.adapters.host_budget == eng.memory.host_cache_bytes
    explicit = LLM(tiny.model("llama"), dtype="float32", device="cpu", lora_pool_bytes=2**20, kv_cache_bytes=2**20)
    assert explicit.engine.memory.sources["lora_pool_bytes"] == "config"
    assert explicit.engine.lora_pool.num_rows == max(1, 2**20 // sizing.lora_bytes_per_row(eng.spec, torch.float32))
