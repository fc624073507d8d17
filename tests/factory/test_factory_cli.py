"""`openlora-node factory train | verify | show | publish` on a real Anvil and a real node home (tiny demo base):
trained from a Datanet version found on chain, imported into the blockstore under its CID, re-derived bit for bit
by `verify`, refused in one line for bad input, caught by `verify` when the claimed recipe is not what was
trained, and published with its lineage on chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openlora.attribution.lineage import read_lineage
from openlora.content.blockstore import Blockstore
from openlora.content.importer import add_bytes
from openlora.factory import output
from openlora.factory.api import train
from openlora.factory.config import TrainConfig
from openlora.factory.rows import records_from_version, split
from openlora.node.cli import main
from openlora.node.config import DEFAULT_CONFIG_TOML
from tests.factory.conftest import CHAT_ROWS, TEXT_ROWS, make_datanet, signer

HP = ["--rank", "4", "--epochs", "2", "--batch", "4", "--max-len", "40", "--samples", "1", "--threads", "1",
      "--eval-split", "0.25"]


@pytest.fixture(scope="module")
def home(tmp_path_factory, anvil, deployment, accounts, w3):
    root = tmp_path_factory.mktemp("factory-cli")
    h = root / "home"
    h.mkdir()
    (h / "config.toml").write_text(DEFAULT_CONFIG_TOML.replace('rpc_url = "http://127.0.0.1:8545"',
                                                               f'rpc_url = "{anvil.url}"'))
    deployment.write(h / "deployment.json")
    keys = root / "keys"
    keys.mkdir()
    for role in ("author", "curator"):
        (keys / role).write_text("0x" + bytes(signer(accounts, role).key).hex())
    dn, version, cid = make_datanet(w3, deployment, accounts, Blockstore(h / "ipfs"), [TEXT_ROWS, CHAT_ROWS])
    return h, dn, version, cid


def cli(h: Path, capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(["--home", str(h), "factory", *args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(home, accounts):
    import contextlib
    import io
    h, dn, version, _ = home
    author = signer(accounts, "author").address
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["--home", str(h), "factory", "train", "--datanet", str(dn), *HP, "--author", author])
        except SystemExit as e:
            assert not e.code, err.getvalue()
    text = out.getvalue()
    cid = text.splitlines()[0].removeprefix("adapter ").strip()
    return cid, text, err.getvalue()


def test_train_imports_the_adapter_and_prints_its_figures(home, trained):
    h, dn, version, version_cid = home
    cid, out, err = trained
    assert "step 4/4" in err and "tok/s" in err and "ETA" in err          # the progress line (stderr)
    assert "held-out: 2 rows" in out and "base" in out and "adapter" in out and "sample 1:" in out
    store = Blockstore(h / "ipfs")
    meta = store.root_meta(cid)
    assert meta["kind"] == "adapter" and meta["manifest"]["factory"] == output.FACTORY
    exported = h / "ipfs" / "adapters" / cid
    m = json.loads((exported / output.FACTORY).read_bytes())
    assert m["datanet"]["id"] == dn and m["datanet"]["version"] == version
    assert m["datanet"]["manifest_cid"] == version_cid and m["rows"]["count"] == 9
    assert m["base"]["model_id"] == "openlora/tiny-llama-s0" and m["hyperparameters"]["rank"] == 4


def test_verify_retrains_to_the_same_cid_and_show_prints_the_manifest(home, trained, capsys):
    h, dn, *_ = home
    cid = trained[0]
    code, out, err = cli(h, capsys, "verify", cid, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["ok"] is True and r["reproduced_cid"] == cid and r["differences"] == []
    code, out, _ = cli(h, capsys, "show", cid)
    assert code == 0 and f"data: Datanet {dn} version 1" in out and "rank=4" in out and "threads=1" in out


def test_verify_says_what_differs_when_the_claim_is_not_what_was_trained(home, trained, capsys, accounts):
    """An adapter whose manifest claims version 1 and lr 1e-3 but was trained with one row changed and lr 2e-3."""
    from openlora.node.commands.factory import _import
    h, dn, version, version_cid = home
    store = Blockstore(h / "ipfs")
    m, records = records_from_version(version_cid, store.get)
    base = h / "models" / "demo"
    good = json.loads((h / "ipfs" / "adapters" / trained[0] / output.FACTORY).read_bytes())
    source, author = good["datanet"], signer(accounts, "author").address
    cfg = TrainConfig.from_dict(good["hyperparameters"])
    changed = list(records)
    i = split(len(records), cfg.eval_split, cfg.seed)[0][0]          # a training row (not a held-out one)
    changed[i] = type(changed[i])(text="Edited: " + (changed[i].text or ""), prompt=changed[i].prompt,
                                  completion=changed[i].completion)
    for recs, lr, want in ((changed, cfg.lr, "factory-manifest.rows.sha256"),
                           (records, cfg.lr * 2, "factory-manifest.training.final_loss")):
        r = train(recs, base, None, TrainConfig.from_dict({**cfg.as_dict(), "lr": lr}), source=source, author=author)
        files = dict(r.files)
        if lr != cfg.lr:   # claim the other learning rate in the manifest (and keep the node manifest consistent)
            fm = json.loads(files[output.FACTORY])
            fm["hyperparameters"]["lr"] = cfg.lr
            files = output.build_files(cfg, fm["base"]["model_id"], author, files[output.WEIGHTS], fm)
        cid = output.tree_cid(files)
        _import(None, h, base, files, cid, {})
        code, out, err = cli(h, capsys, "verify", cid)
        assert code == 1 and f"NOT reproduced: {cid} retrains to" in out, err
        assert want in out and "adapter_model.safetensors: the bytes differ" in out, out


def test_bad_input_gets_one_line(home, capsys, w3, deployment, accounts):
    from openlora.datanets.registry import Registry
    h, dn, *_ = home
    empty = Registry(w3, deployment).create(signer(accounts, "curator"), "bafkreiemptydatanet").value
    cases = [
        (["train", "--datanet", "999"], "Datanet 999 does not exist on DatanetRegistry"),
        (["train", "--datanet", str(empty)], f"Datanet {empty} has no published version yet"),
        (["train", "--datanet", str(dn), "--version", "7"], f"Datanet {dn} has no version 7"),
        (["train", "--datanet", str(dn), "--rank", "0"], "rank must be 1..256, got 0"),
        (["train", "--datanet", str(dn), "--lr", "0"], "lr (learning rate) must be > 0"),
        (["train", "--datanet", str(dn), "--lr", "-0.5"], "lr (learning rate) must be > 0"),
        (["train", "--datanet", str(dn), "--targets", "q_proj,lm_head"], "unknown module(s) 'lm_head'"),
        (["train", "--datanet", str(dn), "--base", str(add_bytes(b"other weights").cid)], "base model mismatch"),
        (["train", "--datanet", str(dn), "--base", str(h / "nowhere")], "not an HF model directory"),
        (["verify", "not-a-cid"], "is not a CID"),
        (["show", str(add_bytes(b"nothing here").cid)], "is not held here"),
        (["publish", str(add_bytes(b"nothing here").cid), "--price", "-1"], "--price must be >= 0"),
    ]
    for args, msg in cases:
        code, out, err = cli(h, capsys, *args)
        assert code == 1 and msg in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)


def test_publish_registers_the_lineage_on_chain(home, trained, capsys, w3, deployment, accounts):
    h, dn, version, _ = home
    cid = trained[0]
    keys = h.parent / "keys"
    code, _, err = cli(h, capsys, "publish", cid, "--price", "7", "--key-file", str(keys / "curator"))
    assert code == 1 and "publish it with the author's key" in err and err.count("\n") == 1
    code, out, err = cli(h, capsys, "publish", cid, "--price", "7", "--key-file", str(keys / "author"), "--json")
    assert code == 0, err
    r = json.loads(out)
    fm = (h / "ipfs" / "adapters" / cid / output.FACTORY).read_bytes()
    lineage = read_lineage(w3, deployment, cid)
    assert lineage.datanet_versions == ((dn, version),)
    assert lineage.manifest_cid == str(add_bytes(fm).cid) == r["manifest_cid"]
    assert lineage.base_weights_cid == json.loads(fm)["base"]["weights_cid"]
    assert r["announced_to"] == []
    code, _, err = cli(h, capsys, "publish", cid, "--price", "7", "--key-file", str(keys / "author"))
    assert code == 1 and "already registered" in err.lower() and err.count("\n") == 1


def test_an_adapter_not_made_by_the_factory_is_named_as_such(home, capsys, tmp_path):
    from openlora.devnet.tinymodels import write_lora_files
    from openlora.node.ipfs.adapters import AdapterStore
    h = home[0]
    plain = write_lora_files(tmp_path / "plain", h / "models" / "demo", rank=2)
    cid = str(AdapterStore(h / "ipfs").add(plain)[0])
    for args in (["show", cid], ["verify", cid]):
        code, _, err = cli(h, capsys, *args)
        assert code == 1 and "was not made by the Model Factory" in err and err.count("\n") == 1, err
