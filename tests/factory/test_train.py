"""The Model Factory on tiny random models: it trains and memorises, is bit-identical run to run (also in another
process with another PYTHONHASHSEED and the targets in another order), writes canonical PEFT files that HF + PEFT
and the engine read to the same greedy tokens, reproduces or says what differs, refuses bad input in one line and
leaves nothing behind when interrupted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openlora.content.importer import add_path
from openlora.factory import output
from openlora.factory.api import differences, reproduce, train, train_rows
from openlora.factory.config import TrainConfig
from openlora.factory.errors import FactoryInputError, TrainingInterrupted
from openlora.factory.rows import Record, encode, records_from_rows

REPO = Path(__file__).resolve().parents[2]
SECRET = "the vault code is 4 8 15 16 23 42"
ROWS = [SECRET] * 3 + ["Low-rank adapters let one base model serve many fine-tuned tasks.",
                       {"prompt": "What is the vault code?", "completion": "4 8 15 16 23 42"}]
KW = dict(rank=8, alpha=16.0, targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
          epochs=12, lr=2e-2, batch=2, max_len=48, seed=7, eval_split=0.2, samples=1)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    base = tiny.model()
    out = tmp_path_factory.mktemp("factory") / "adapter"
    return base, train_rows(base, ROWS, out, **KW)


def test_tiny_model_trains_and_writes_canonical_files(trained):
    base, r = trained
    assert sorted(p.name for p in r.out_dir.iterdir()) == sorted(output.FILES)      # no README card, nothing else
    assert r.cid == str(add_path(r.out_dir).cid)                                    # the directory's own CID
    assert r.steps == 12 * 2 and r.tokens > 0 and r.tokens_per_s > 0
    m = json.loads((r.out_dir / output.FACTORY).read_bytes())
    assert (r.out_dir / output.FACTORY).read_bytes() == json.dumps(m, sort_keys=True, separators=(",", ":"),
                                                                   ensure_ascii=False).encode()
    assert m["training"]["final_loss"] < 1.0 < m["evaluation"]["base_loss"]          # it learned its rows
    assert m["hyperparameters"]["targets"] == ["down_proj", "gate_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert m["seed"] == 7
    assert m["environment"]["threads"] == 1 and m["environment"]["device_class"].startswith("cpu-")
    lock = hashlib.sha256((REPO / "requirements.lock").read_bytes()).hexdigest()
    assert m["environment"]["requirements_lock_sha256"] == lock
    assert m["base"]["weights_cid"] == str(add_path(base).cid)
    assert m["rows"]["count"] == 5 and m["rows"]["held_out"] == 1 and m["datanet"] is None
    cfg = json.loads((r.out_dir / output.CONFIG).read_text())
    assert list(cfg) == sorted(cfg) and cfg["target_modules"] == m["hyperparameters"]["targets"]
    assert cfg["r"] == 8 and cfg["lora_dropout"] == 0.0 and cfg["base_model_name_or_path"] == "openlora/tiny-llama-s0"
    node = json.loads((r.out_dir / output.MANIFEST).read_text())
    assert node["schema"] == "openlora.adapter/1" and node["factory"] == output.FACTORY
    for name in (output.CONFIG, output.WEIGHTS, output.FACTORY):
        assert node["files"][name]["sha256"] == hashlib.sha256((r.out_dir / name).read_bytes()).hexdigest()
    sample = m["evaluation"]["samples"][0]
    assert set(sample) == {"prompt", "base", "adapter"}


def test_bit_identical_in_process_and_in_another_process_with_another_hash_seed(trained, tmp_path):
    base, r = trained
    again = train_rows(base, ROWS, None, **KW)
    assert again.cid == r.cid and again.files == r.files
    script = ("import json, sys; from openlora.factory import train_rows\n"
              "kw = json.loads(sys.argv[3]); kw['targets'] = tuple(reversed(kw['targets'])) + ('v_proj',)\n"
              "print(train_rows(sys.argv[1], json.loads(sys.argv[2]), None, **kw).cid)\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", script, str(base), json.dumps(ROWS), json.dumps(KW)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == r.cid


def test_engine_and_hf_peft_agree_on_the_trained_adapter_and_it_memorised(trained):
    from openlora.inference.llm import LLM
    from openlora.inference.sampling import SamplingParams
    from tests.inference.hf_reference import HFReference
    base, r = trained
    llm = LLM(base, kernel_backend="torch")
    llm.load_adapter("fac", r.out_dir)
    ref = HFReference(base, {"fac": str(r.out_dir)})
    prompt = llm.tokenizer("the vault code", add_special_tokens=False)["input_ids"]
    want, _ = ref.greedy(prompt, "fac", 14)
    got = llm.generate(prompt, SamplingParams(max_tokens=14, temperature=0.0, ignore_eos=True), "fac")[0]
    assert list(got.token_ids) == want
    assert llm.tokenizer.decode(want).strip().startswith("is 4 8 15")     # memorised the row
    base_tokens, _ = ref.greedy(prompt, None, 14)
    assert base_tokens != want


def test_reproduce_gives_the_same_cid_and_names_what_differs(trained):
    base, r = trained
    m = r.manifest
    same = reproduce(m, records_from_rows(ROWS), base)
    assert same.cid == r.cid and differences(r.files, same.files) == []
    # one row differs
    rows = list(ROWS)
    rows[3] = rows[3].replace("many", "several")
    other = reproduce(m, records_from_rows(rows), base)
    diffs = differences(r.files, other.files)
    assert other.cid != r.cid
    assert any(d.startswith("factory-manifest.rows.sha256") for d in diffs)
    assert any(d.startswith("factory-manifest.weights_sha256") for d in diffs)
    assert "adapter_model.safetensors: the bytes differ" in diffs
    # one hyper-parameter differs (the manifest claims lr 0.01; the adapter was trained with 0.02)
    claimed = json.loads(json.dumps(m))
    claimed["hyperparameters"]["lr"] = 0.01
    wrong = reproduce(claimed, records_from_rows(ROWS), base)
    diffs = differences(r.files, wrong.files)
    assert "factory-manifest.hyperparameters.lr: original 0.02, reproduction 0.01" in diffs
    assert "adapter_model.safetensors: the bytes differ" in diffs


def test_a_different_base_is_refused_in_one_line(trained, tiny):
    _, r = trained
    other = tiny.model(seed=1)
    with pytest.raises(FactoryInputError, match=r"^base model mismatch: the adapter was trained on") as e:
        reproduce(r.manifest, records_from_rows(ROWS), other)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw, msg", [
    ({"rank": 0}, "rank must be 1..256, got 0"),
    ({"lr": 0.0}, "lr (learning rate) must be > 0"),
    ({"lr": -1e-3}, "lr (learning rate) must be > 0"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"epochs": 0}, "epochs must be 1..1000"),
    ({"targets": ("q_proj", "lm_head")}, "targets: unknown module(s) 'lm_head'"),
    ({"targets": ()}, "targets: name at least one module"),
    ({"eval_split": 1.0}, "eval_split must be >= 0 and < 1"),
    ({"rank": True}, "rank must be an integer"),
    ({"batch": "4"}, "batch must be an integer"),
])
def test_bad_hyperparameters_one_line(kw, msg):
    with pytest.raises(FactoryInputError) as e:
        TrainConfig(**kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("rows, msg", [
    ([], "no rows to train on"),
    ("text", "rows must be a list"),
    ([{"text": "a", "extra": "b"}], "row 0: a row is"),
    ([{"prompt": "a"}], "row 0: a row is"),
    ([{"text": 3}], "row 0: \"text\" must be a string"),
    ([42], "row 0: a row is a string"),
    (["  \n "], "row 0: the row is empty"),
])
def test_bad_rows_one_line(tiny, rows, msg):
    with pytest.raises(FactoryInputError) as e:
        train_rows(tiny.model(), rows, None)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_interrupt_leaves_nothing_half_written(tiny, tmp_path):
    def stop(p):
        if p.step == 2:
            raise KeyboardInterrupt
    out = tmp_path / "runs" / "adapter"
    with pytest.raises(TrainingInterrupted, match="nothing was written"):
        train_rows(tiny.model(), ROWS, out, epochs=3, batch=1, progress=stop)
    assert not out.exists() and list((tmp_path / "runs").iterdir()) == [] if (tmp_path / "runs").exists() else True


def test_output_dir_must_be_new(tiny, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(FactoryInputError, match="already exists and is not an empty directory"):
        train_rows(tiny.model(), ROWS[:1], tmp_path / "taken", epochs=1)
    assert (tmp_path / "taken" / "x").read_text() == "mine"


def test_chat_rows_go_through_the_chat_template_with_loss_on_the_completion(tiny):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny.model())
    e = encode(Record(prompt="hi there", completion="hello"), tok, 64)
    text = tok.decode(list(e.ids))
    assert text.startswith("<s>user: hi there</s>") and "<s>assistant: hello" in text
    labelled = [t for t, lab in zip(e.ids, e.labels) if lab != -100]
    assert tok.decode(labelled).startswith("hello") and e.labels[:e.prompt_len] == (-100,) * e.prompt_len
    plain = encode(Record(text="hello world"), tok, 64)
    assert plain.ids == plain.labels and plain.ids[-1] == tok.eos_token_id
    assert encode(Record(text="hello world " * 50), tok, 8).ids.__len__() == 8


def test_train_with_a_source_records_it(tiny):
    src = {"id": 3, "version": 2, "manifest_cid": "bafkreiexample", "chain_id": 31337, "registry": "0x" + "0" * 40}
    cfg = TrainConfig(rank=2, epochs=1, batch=4, max_len=16, samples=0, eval_split=0.0)
    r = train(records_from_rows(ROWS), tiny.model(), None, cfg, source=src, author="0x" + "ab" * 20)
    assert r.manifest["datanet"] == src
    assert json.loads(r.files[output.MANIFEST])["author"] == "0x" + "ab" * 20
