"""Adapter lifecycle: just-in-time loading through tiers, byte-budget eviction, pins, fairness, bad adapters."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from openlora.devnet.tinymodels import ALL_TARGETS
from openlora.inference import LLM, SamplingParams
from openlora.inference.lora import LoRAPool
from openlora.inference.sources import LocalDirSource
from tests.inference.hf_reference import HFReference

PROMPTS = [[5 + i, 17, 33 + i, 100, 200 - i, 45, 7] for i in range(20)]
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def model(tiny):
    return tiny.model("llama")


@pytest.fixture(scope="module")
def twenty(tiny, model):
    ranks = [2, 4, 8, 16]
    targets = [("q_proj", "v_proj"), ALL_TARGETS, ("o_proj", "down_proj"), ("k_proj", "gate_proj", "up_proj")]
    return {f"a{i}": tiny.adapter(model, rank=ranks[i % 4], targets=targets[i % 4], seed=100 + i) for i in range(20)}


@pytest.fixture(scope="module")
def expected(model, twenty):
    ref = HFReference(model, {k: str(v) for k, v in twenty.items()})
    return [ref.greedy(p, f"a{i}", GREEDY.max_tokens)[0] for i, p in enumerate(PROMPTS)]


def two_adapter_pool_bytes(model_spec, rank: int = 16) -> int:
    import torch
    return 2 * rank * LoRAPool.bytes_per_row(model_spec, torch.float32)


def small_pool_llm(model, **kw) -> LLM:
    from openlora.inference.model_config import read_model_spec
    spec = read_model_spec(Path(model))
    return LLM(model, dtype="float32", device="cpu", lora_pool_bytes=two_adapter_pool_bytes(spec), max_loras=2, **kw)


def test_outputs_match_hf_while_adapters_are_evicted_and_reloaded(model, twenty, expected):
    llm = small_pool_llm(model)
    for name, path in twenty.items():
        llm.register_adapter(name, path)                # lazy: nothing read yet
    assert all(i.tier == "disk" for i in llm.list_adapters())
    names = [f"a{i}" for i in range(20)]
    for _ in range(2):                                   # twice: the second round reloads evicted adapters
        outs = llm.generate(PROMPTS, GREEDY, adapters=names)
        for i, out in enumerate(outs):
            assert out.error is None and out.token_ids == expected[i], f"adapter a{i} diverged from HF+PEFT"
    m = llm.adapter_metrics()
    assert m["device_evictions"] >= 36 and m["device_loads"] >= 38      # 2 slots for 20 adapters, two rounds
    assert m["tiers"]["device"]["adapters"] <= 2
    assert m["host_loads"] == 20 and m["load_latency_s"]["count"] == 20


def test_eviction_never_frees_an_adapter_in_use(model, twenty):
    llm = small_pool_llm(model, max_num_seqs=3, max_num_batched_tokens=16)
    eng = llm.engine
    for name, path in twenty.items():
        llm.register_adapter(name, path)
    violations = []
    original_remove = eng.lora_pool.remove

    def checked_remove(slot):
        users = [s.request_id for s in eng.scheduler.running if s.slot == slot]
        if users:
            violations.append((slot, users))
        original_remove(slot)

    eng.lora_pool.remove = checked_remove
    names = [f"a{i % 7}" for i in range(21)]
    outs = llm.generate(PROMPTS + [PROMPTS[0]], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
                        adapters=names)
    assert all(o.error is None for o in outs)
    assert eng.adapters.counters["device_evictions"] > 5
    assert not violations, f"slots evicted while running sequences used them: {violations}"
    # the manager refuses outright to drop an adapter with references
    slot = eng.adapters.acquire("a0") if eng.adapters.status("a0") == "ready" else None
    if slot is not None:
        with pytest.raises(RuntimeError, match="would be evicted while"):
            eng.adapters._drop_device(eng.adapters._entries["a0"])
        eng.adapters.release("a0")


def test_pinned_adapter_stays_resident(model, twenty):
    llm = small_pool_llm(model)
    for name, path in twenty.items():
        llm.register_adapter(name, path)
    llm.generate([PROMPTS[0]], GREEDY, adapters=["a0"])
    llm.pin_adapter("a0")
    llm.generate(PROMPTS[1:6], GREEDY, adapters=[f"a{i}" for i in range(1, 6)])
    info = {i.name: i for i in llm.list_adapters()}
    assert info["a0"].tier == "device" and info["a0"].pinned and info["a0"].evictions == 0
    # unload: refused while a request holds the adapter, done (and its slot freed) once idle
    eng = llm.engine
    eng.add_request(PROMPTS[0], SamplingParams(max_tokens=50, ignore_eos=True), "a0", request_id="busy")
    eng.step()
    with pytest.raises(Exception, match="in use"):
        llm.unload_adapter("a0")
    eng.abort("busy")
    llm.unload_adapter("a0")
    assert "a0" not in {i.name for i in llm.list_adapters()}
    out = llm.generate([PROMPTS[0]], GREEDY, adapters=["a0"])[0]
    assert "unknown adapter 'a0'" in out.error


class GatedSource(LocalDirSource):
    """A source whose fetch of one adapter blocks until released: stands in for a slow network fetch."""

    def __init__(self, slow: str):
        super().__init__()
        self.slow, self.gate, self.calls = slow, threading.Event(), []

    def fetch(self, ref: str) -> Path:
        self.calls.append(ref)
        if Path(ref).name == self.slow:
            assert self.gate.wait(30), "test gate never opened"
        return super().fetch(ref)


def test_loading_is_asynchronous_and_overlaps_serving(model, twenty):
    from openlora.inference import EngineConfig, LLMEngine
    slow = Path(twenty["a3"]).name
    source = GatedSource(slow)
    eng = LLMEngine(EngineConfig(model=str(model), dtype="float32", device="cpu"), source=source)
    for name, path in twenty.items():
        eng.register_adapter(name, str(path))
    eng.add_request(PROMPTS[3], GREEDY, "a3", request_id="slow")
    assert any(Path(c).name == slow for c in source.calls) or eng.adapters.status("a3") == "loading"
    eng.add_request(PROMPTS[1], GREEDY, "a1", request_id="fast")
    done: dict[str, object] = {}
    deadline = time.monotonic() + 60
    while "fast" not in done and time.monotonic() < deadline:
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
    assert "fast" in done and "slow" not in done, "a loading adapter must not hold up other requests"
    assert eng.adapters.status("a3") == "loading"
    source.gate.set()
    while eng.has_unfinished() and time.monotonic() < deadline:
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
    assert done["slow"].error is None and len(done["slow"].token_ids) == GREEDY.max_tokens
    assert eng.adapters.metrics()["load_wait_s"]["count"] >= 1
    eng.adapters.shutdown()


def test_burst_for_one_adapter_does_not_starve_another(model, twenty):
    llm = LLM(model, dtype="float32", device="cpu", max_num_seqs=2)
    llm.load_adapter("a0", twenty["a0"])
    llm.load_adapter("a1", twenty["a1"])
    eng = llm.engine
    for i in range(30):
        eng.add_request(PROMPTS[i % 20], GREEDY, "a0", request_id=f"burst{i}")
    eng.step()
    eng.add_request(PROMPTS[0], GREEDY, "a1", request_id="late")
    order = []
    while eng.has_unfinished():
        order += [o.request_id for o in eng.step() if o.finished]
    assert order.index("late") < 6, f"the lone request waited behind the burst: finished at {order.index('late')}"


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_bad_lazy_adapters_fail_only_their_requests_and_are_not_retried(model, twenty, tmp_path):
    nan = _copy(twenty["a0"], tmp_path / "nan")
    t = load_file(nan / "adapter_model.safetensors")
    next(iter(t.values()))[0, 0] = float("inf")
    save_file(t, nan / "adapter_model.safetensors")
    base = _copy(twenty["a1"], tmp_path / "base")
    cfg = json.loads((base / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "Qwen/Qwen3-8B"
    (base / "adapter_config.json").write_text(json.dumps(cfg))
    llm = LLM(model, dtype="float32", device="cpu")
    llm.register_adapter("nan", nan)
    llm.register_adapter("base", base)
    llm.register_adapter("missing", tmp_path / "does-not-exist")
    llm.register_adapter("good", twenty["a2"])
    for _ in range(2):
        outs = llm.generate([PROMPTS[0]] * 4, GREEDY, adapters=["nan", "base", "missing", "good"])
        assert "NaN or Inf" in outs[0].error
        assert "targets base model 'Qwen/Qwen3-8B'" in outs[1].error
        assert "no adapter_config.json" in outs[2].error
        assert outs[3].error is None and len(outs[3].token_ids) == GREEDY.max_tokens
    assert llm.adapter_metrics()["load_failures"] == 3, "a bad adapter is remembered, not loaded again"
    assert {i.name: i.tier for i in llm.list_adapters()}["nan"] == "failed"


def test_host_and_disk_tiers_evict_by_bytes(model, twenty, tmp_path):
    one = sum(f.stat().st_size for f in Path(twenty["a1"]).iterdir() if f.is_file())
    llm = LLM(model, dtype="float32", device="cpu", max_loras=2, host_cache_bytes=3 * 40_000,
              disk_store_dir=str(tmp_path / "store"), disk_store_bytes=3 * one)
    for name, path in twenty.items():
        llm.register_adapter(name, path)
    outs = llm.generate(PROMPTS[:10], GREEDY, adapters=[f"a{i}" for i in range(10)])
    assert all(o.error is None for o in outs), [o.error for o in outs if o.error]
    m = llm.adapter_metrics()
    assert m["tiers"]["host"]["used_bytes"] <= max(m["tiers"]["host"]["budget_bytes"],
                                                   # tiers are inclusive: device-resident adapters stay in host
                                                   sum(i.bytes for i in llm.list_adapters() if i.tier == "device"))
    assert m["host_evictions"] > 0
    assert m["tiers"]["disk"]["evictions"] > 0 and m["tiers"]["disk"]["fetches"] == 10
    assert len(list((tmp_path / "store").iterdir())) <= 3 + 1
    assert 0.0 <= (m["hit_ratio"] or 0.0) <= 1.0


def test_fast_written_adapters_load_in_peft_and_match(model, tmp_path):
    from openlora.devnet.tinymodels import write_lora_files
    d = write_lora_files(tmp_path / "fast", model, rank=6, targets=("q_proj", "down_proj"), seed=3)
    ref = HFReference(model, {"fast": str(d)})
    llm = LLM(model, dtype="float32", device="cpu")
    llm.load_adapter("fast", d)
    out = llm.generate([PROMPTS[0]], GREEDY, adapters=["fast"])[0]
    assert out.token_ids == ref.greedy(PROMPTS[0], "fast", GREEDY.max_tokens)[0]


def test_disk_store_never_evicts_an_adapter_a_loader_is_reading(twenty, tmp_path):
    """Two loader threads: one reads adapter A's files while the other brings B in over budget. A stays."""
    from openlora.inference.adapter_store import DiskStore
    one = sum(f.stat().st_size for f in Path(twenty["a1"]).iterdir() if f.is_file())
    store = DiskStore(tmp_path / "store", budget_bytes=one, source=LocalDirSource())
    with store.checkout(str(twenty["a1"])) as a_dir:
        store.ensure(str(twenty["a5"]))                # over budget: something must go, but not A
        assert (a_dir / "adapter_model.safetensors").is_file()
    store.ensure(str(twenty["a9"]))                    # A is no longer being read: now it may be evicted
    assert not a_dir.exists() and store.evictions >= 1


def test_pool_knows_which_fused_linears_each_adapter_targets(model, twenty):
    """A batch skips the LoRA launches of fused linears that none of its adapters targets (a q/v adapter costs
    nothing in gate_up and down); the pool records the targets per slot and forgets them when the slot is freed."""
    import torch
    from openlora.inference.lora import read_peft_adapter
    from openlora.inference.model_config import read_model_spec
    spec = read_model_spec(Path(model))
    pool = LoRAPool(spec, num_rows=64, num_slots=4, dtype=torch.float32, device=torch.device("cpu"))
    want = {"a0": {"qkv"}, "a1": {"qkv", "o", "gate_up", "down"}, "a2": {"o", "down"}, "a3": {"qkv", "gate_up"}}
    slots = {}
    for name, fused in want.items():
        w = read_peft_adapter(twenty[name], name, spec)
        assert set(w.fused_targets()) == fused
        slots[name] = pool.insert(w)
        assert pool.fused_of(slots[name]) == fused
    pool.remove(slots["a2"])
    with pytest.raises(KeyError):
        pool.fused_of(slots["a2"])
