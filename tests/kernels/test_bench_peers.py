"""bench/bench_peers.py's FLOP ceiling: `trace_flops` checked against torch's own FLOP counter over an HF forward
(a reference this project did not write), and the ceiling worker and the GPU options run on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _peers():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "bench" / "bench_peers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_trace_flops_match_torch_flop_counter(tmp_path, kv_heads):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    from openlora.devnet.tinymodels import TinySpec, build_tiny_model
    b = _peers()
    d = build_tiny_model(tmp_path / "m", TinySpec(hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4,
                                                  num_kv_heads=kv_heads, vocab_size=384))
    cfg = json.loads((d / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    n = 37
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.arange(n)[None] + 5, logits_to_keep=1)            # one prompt, the LM head on its last token
    counted = counter.get_total_flops()
    # the eager attention multiplies the full n x n score matrix (then masks it): count it as such here
    full_attention = 2 * 2 * cfg["num_attention_heads"] * (64 // 4) * cfg["num_hidden_layers"] * n * n
    ours = b.trace_flops(cfg, [{"prompt": list(range(n))}], 1)
    assert ours["linears"] + ours["lm_head"] == counted - full_attention
    assert ours["attention"] == full_attention * (n + 1) // (2 * n)      # causal: position i attends to i + 1 keys
    assert ours["total"] == ours["linears"] + ours["attention"] + ours["lm_head"]
    shapes = b.linear_shapes(cfg)                          # the ceiling's GEMM probe: the same linears
    assert 2 * n * cfg["num_hidden_layers"] * sum(i * o for i, o in shapes[:4]) == ours["linears"]
    assert 2 * shapes[4][0] * shapes[4][1] == ours["lm_head"]
    # generated tokens: every one but the last goes back through the layers; each gets the LM head once
    two = b.trace_flops(cfg, [{"prompt": list(range(n))}] * 2, 4)
    m = n + 3
    assert two["lm_head"] == 2 * 4 * ours["lm_head"]
    assert two["linears"] == 2 * ours["linears"] * m // n


def test_ceiling_worker_and_gemm_rate(tmp_path):
    from openlora.devnet.tinymodels import TinySpec, build_tiny_model
    b = _peers()
    d = build_tiny_model(tmp_path / "m", TinySpec(num_layers=2))
    reqs = b.make_trace(6, 0, 1.0, (4, 9), 384, 0)
    for dtype in ("float32", "bfloat16"):
        res = b.worker_ceiling({"model": str(d), "dtype": dtype, "threads": 1, "requests": reqs, "output_len": 5})
        assert res["tokens"] is None and res["seconds"] > 0
        assert {"float32", dtype, "oneDNN packed float32, model shapes"} == set(res["gemm_flops_per_s"])
        assert res["seconds"] == pytest.approx(res["flops"]["total"] / max(res["gemm_flops_per_s"].values()))
        assert "TFLOP" in res["kernels"] and "on cpu" in res["kernels"]


def test_gpu_options_refuse_vllm_off_cpu(tmp_path, monkeypatch):
    b = _peers()
    monkeypatch.setattr(sys, "argv", ["bench_peers.py", "--systems", "ours,vllm", "--device", "cuda",
                                      "--model", str(tmp_path), "--work", str(tmp_path / "w")])
    with pytest.raises(SystemExit, match="vLLM runs its CPU build"):
        b.main()


def test_main_with_a_model_of_our_own_runs_every_system(tmp_path, monkeypatch):
    """The GPU stage's flow (gpu_checks.sh peers) on the CPU at toy size: --model with adapters made for it, this
    engine, HF + PEFT and the ceiling each in their own process, greedy tokens compared, the json written."""
    from openlora.devnet.tinymodels import TinySpec, build_tiny_model
    b = _peers()
    d = build_tiny_model(tmp_path / "m", TinySpec(num_layers=2))
    out = tmp_path / "out" / "peers"
    monkeypatch.setattr(sys, "argv", [
        "bench_peers.py", "--model", str(d), "--systems", "ours,peft,ceiling", "--adapters", "0", "3", "--scale",
        "--requests", "6", "--input-len", "4", "12", "--output-len", "4", "--reps", "1", "--threads", "1",
        "--ours-config", "{\"max_num_seqs\": 4}", "--gemm-time",
        "--work", str(tmp_path / "w"), "--out", str(out), "--vllm-python", str(tmp_path / "none"), "--timeout", "300"])
    b.main()
    report = json.loads((tmp_path / "out" / "peers.json").read_text())
    rows = {(r["system"], r["registered"]): r for r in report["rows"]}
    assert set(rows) == {("ours", 0), ("ours", 3), ("peft", 3), ("ceiling", 0), ("ceiling", 3)}
    assert all(r.get("tokens_per_s", 0) > 0 for r in rows.values()), [r for r in rows.values() if "tokens_per_s"
                                                                       not in r]
    agree = report["greedy_agreement"]["ours vs peft, float32, N=3"]
    assert agree["requests"] == 6 and agree["identical_requests"] == 6        # the tiny model's logits are peaked
    assert (tmp_path / "w" / f"model-{d.name}" / "adapters").is_dir()
    assert "auto: 4 seqs" in " ".join(rows[("ours", 0)]["log"])              # --ours-config reached the engine
    assert "ceiling / peft, float32, N=3" in report["ratios"]
    from openlora.kernels import cpu_native
    if cpu_native._compiler() is not None:         # the native backend packs the linears, which --gemm-time times
        assert "oneDNN" in rows[("ours", 3)]["kernels"]
        for n in (0, 3):
            r = rows[("ours", n)]
            assert r["gemm_only_tokens_per_s"] > r["tokens_per_s"] and 0 < r["gemm_seconds"][0]
            shapes = r["gemm_by_shape"]
            assert abs(sum(v["seconds"] for v in shapes.values()) - r["gemm_seconds"][0]) < 1e-6
            vocab = json.loads((d / "config.json").read_text())["vocab_size"]
            assert any(k.endswith(f"->{vocab}") for k in shapes), shapes      # the LM head is timed too
        assert report["ratios"]["ours' GEMMs alone / peft, float32, N=3"] > report["ratios"]["ours / peft, float32, N=3"]


@pytest.mark.parametrize("bad", ["5", "[1, 2]", "{x", "null", '"max_num_seqs"'])
def test_ours_config_must_be_a_json_object(bad, monkeypatch, capsys):
    b = _peers()
    monkeypatch.setattr(sys, "argv", ["bench_peers.py", "--ours-config", bad])
    with pytest.raises(SystemExit) as e:
        b.main()
    assert e.value.code == 2 and "--ours-config" in capsys.readouterr().err
