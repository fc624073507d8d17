"""Issue 14 items 6 and 11 at import time: nothing the node reads from a directory it was given follows a symlink
or reads a FIFO/socket/device (the importer, `adapters add`, the engine's local source and disk store), and an
adapter gets a CID only if the engine's own loader accepts it for the node's base model."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from openlora.inference.adapter_store import DiskStore
from openlora.inference.model_config import read_model_spec
from openlora.inference.sources import AdapterSourceError, LocalDirSource, check_adapter_dir
from openlora.node.errors import NodeError
from openlora.node.ipfs.adapters import AdapterError, AdapterStore, engine_validator
from openlora.node.ipfs.errors import IpfsError
from openlora.content.importer import add_path

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
SECRET = b"root:x:0:0:secret line that must never be imported\n"


@pytest.fixture
def adapter(tiny, tmp_path) -> Path:
    d = tmp_path / "adapter"
    shutil.copytree(tiny.adapter(tiny.model(), rank=4), d)
    return d


@pytest.fixture
def secret(tmp_path) -> Path:
    p = tmp_path / "passwd"
    p.write_bytes(SECRET)
    return p


def no_roots(store: AdapterStore) -> bool:
    return store.list() == {} and not any(p.name.startswith(".import-") for p in store.root.iterdir())


# ---- item 6: the importer ----------------------------------------------------------------------------------------

def test_importer_refuses_symlinked_file_dir_and_nested_symlink(tmp_path, secret):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ok").write_bytes(b"fine")
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "leak").symlink_to(secret)
    with pytest.raises(IpfsError, match=r"sub/leak: is a symbolic link"):
        add_path(tmp_path / "a")                         # a symlink in a directory the walk enters
    (tmp_path / "a" / "sub" / "leak").unlink()
    (tmp_path / "a" / "sub" / "linkdir").symlink_to(tmp_path / "a", target_is_directory=True)
    with pytest.raises(IpfsError, match=r"linkdir: is a symbolic link"):
        add_path(tmp_path / "a")                         # a symlinked directory inside
    (tmp_path / "a" / "sub" / "linkdir").unlink()
    add_path(tmp_path / "a")
    (tmp_path / "dirlink").symlink_to(tmp_path / "a", target_is_directory=True)
    with pytest.raises(IpfsError, match="symbolic link"):
        add_path(tmp_path / "dirlink")                   # the directory given is itself a symlink
    (tmp_path / "filelink").symlink_to(secret)
    with pytest.raises(IpfsError, match="symbolic link"):
        add_path(tmp_path / "filelink")


def test_importer_refuses_fifo_socket_and_device_without_blocking(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    os.mkfifo(d / "fifo")                                # opening it for reading would block forever
    with pytest.raises(IpfsError, match="not a regular file or directory"):
        add_path(d)
    os.unlink(d / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock"))
    try:
        with pytest.raises(IpfsError, match="not a regular file or directory"):
            add_path(d)
    finally:
        s.close()
        os.unlink(d / "sock")
    with pytest.raises(IpfsError, match="not a regular file or directory"):
        add_path(Path("/dev/null"))                      # a character device


# ---- item 6: adapter import and `adapters add` ------------------------------------------------------------------

def test_adapter_with_symlinked_weights_is_refused_and_nothing_stored(adapter, secret, tmp_path):
    store = AdapterStore(tmp_path / "ipfs")
    (adapter / WEIGHTS).unlink()
    (adapter / WEIGHTS).symlink_to(secret)
    with pytest.raises(AdapterError, match=rf"{WEIGHTS}: is a symbolic link"):
        store.add(adapter)
    assert no_roots(store)
    assert not any(SECRET in p.read_bytes() for p in (tmp_path / "ipfs").rglob("*") if p.is_file())


def test_adapter_dir_that_is_a_symlink_or_a_special_adapter_file_is_refused(adapter, tmp_path):
    store = AdapterStore(tmp_path / "ipfs")
    clean, _ = store.add(adapter)
    link = tmp_path / "link"
    link.symlink_to(adapter, target_is_directory=True)
    with pytest.raises(AdapterError, match="symbolic link"):
        store.add(link)
    shutil.copy(adapter / CONFIG, tmp_path / "cfg")
    (adapter / CONFIG).unlink()
    os.mkfifo(adapter / CONFIG)                          # would block a plain open() forever
    with pytest.raises(AdapterError, match=f"{CONFIG}: not a regular file or directory"):
        store.add(adapter)
    os.unlink(adapter / CONFIG)
    (adapter / CONFIG).mkdir()
    with pytest.raises(AdapterError, match=f"{CONFIG}: not a regular file"):
        store.add(adapter)
    (adapter / CONFIG).rmdir()
    shutil.copy(tmp_path / "cfg", adapter / CONFIG)
    # entries that are not adapter files are never read nor imported, whatever they are
    os.mkfifo(adapter / "notes.fifo")
    (adapter / "notes").symlink_to(tmp_path / "cfg")
    assert store.add(adapter)[0] == clean
    assert list(store.list()) == [str(clean)]


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLORA_")}
    return subprocess.run([sys.executable, "-m", "openlora.node.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300, stdin=subprocess.DEVNULL)


def test_cli_adapters_add_refuses_symlinks_in_one_line(adapter, secret, tmp_path):
    (adapter / WEIGHTS).unlink()
    (adapter / WEIGHTS).symlink_to(secret)
    r = run_cli("--home", str(tmp_path / "home"), "adapters", "add", str(adapter))
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == \
        f"error: {adapter / WEIGHTS}: is a symbolic link; symlinks are never imported (copy the file instead)"
    assert "Traceback" not in r.stderr


# ---- item 6: the engine's local source and disk store -------------------------------------------------------------

def test_engine_sources_refuse_symlinks(adapter, secret, tmp_path):
    assert check_adapter_dir(adapter) == [CONFIG, WEIGHTS]
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    (bad / WEIGHTS).unlink()
    (bad / WEIGHTS).symlink_to(secret)
    with pytest.raises(AdapterSourceError, match="symbolic link"):
        LocalDirSource().fetch(str(bad))
    link = tmp_path / "link"
    link.symlink_to(adapter, target_is_directory=True)
    with pytest.raises(AdapterSourceError, match="is a symbolic link"):
        LocalDirSource().fetch(str(link))
    os.mkfifo(tmp_path / "fifo-adapter")
    with pytest.raises(AdapterSourceError, match="not a directory"):
        LocalDirSource().fetch(str(tmp_path / "fifo-adapter"))

    class Lying:                                          # a source that hands back a directory with a symlink
        name = "lying"

        def fetch(self, ref):
            return bad

    for copy in (True, False):
        store = DiskStore(tmp_path / f"disk-{copy}", 1 << 30, Lying(), copy=copy)
        with pytest.raises(AdapterSourceError, match="symbolic link"):
            store.ensure("x")
        assert copy is False or not any((tmp_path / f"disk-{copy}").iterdir())
    good = DiskStore(tmp_path / "disk-good", 1 << 30, LocalDirSource(), copy=True).ensure(str(adapter))
    assert (good / WEIGHTS).read_bytes() == (adapter / WEIGHTS).read_bytes() and not (good / WEIGHTS).is_symlink()


def test_engine_load_adapter_refuses_symlinked_weights(tiny, adapter, secret):
    from openlora.inference import LLM, AdapterError as EngineAdapterError
    llm = LLM(tiny.model(), dtype="float32", device="cpu")
    (adapter / WEIGHTS).unlink()
    (adapter / WEIGHTS).symlink_to(secret)
    with pytest.raises(EngineAdapterError, match="symbolic link"):
        llm.load_adapter("x", adapter)


# ---- item 11: the engine's checks before a CID ------------------------------------------------------------------

def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / CONFIG).read_text())
    cfg.update(changes)
    (d / CONFIG).write_text(json.dumps(cfg))


def _edit_weights(d: Path, fn) -> None:
    t = load_file(str(d / WEIGHTS))
    fn(t)
    save_file(t, str(d / WEIGHTS))


def _rank0(t):
    for k in list(t):
        t[k] = t[k][:0] if "lora_A" in k else t[k][:, :0]


def _lm_head(t):
    t["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 8)


def _bad_shape(t):
    k = next(k for k in t if "lora_A" in k)
    t[k] = torch.zeros(4, t[k].shape[1] + 1)


def _int_dtype(t):
    k = next(k for k in t if "lora_A" in k)
    t[k] = torch.zeros(t[k].shape, dtype=torch.int32)


BAD = {
    "dora": (lambda d: _edit_config(d, use_dora=True), "use_dora"),
    "modules_to_save": (lambda d: _edit_config(d, modules_to_save=["lm_head"]), "modules_to_save"),
    "bias": (lambda d: _edit_config(d, bias="all"), "bias"),
    "other_base": (lambda d: _edit_config(d, base_model_name_or_path="meta-llama/Llama-3-8B"), "targets base model"),
    "rank0": (lambda d: (_edit_config(d, r=0), _edit_weights(d, _rank0)), r"has rank 0; allowed ranks are 1\.\."),
    "rank_over_max": (lambda d: None, r"has rank 4; allowed ranks are 1\.\.2"),     # checked with max_rank=2
    "config_rank_differs": (lambda d: _edit_config(d, r=4096), "adapter_config.json says 4096"),
    "lm_head": (lambda d: _edit_weights(d, _lm_head), "lm_head"),
    "shape": (lambda d: _edit_weights(d, _bad_shape), "the base model needs"),
    "dtype": (lambda d: _edit_weights(d, _int_dtype), "float"),
    "pickle": (lambda d: (d / "adapter_model.bin").write_bytes(b"\x80\x04pickle"), "pickled weights"),
    "not_safetensors": (lambda d: (d / WEIGHTS).write_bytes(b"PK\x03\x04 a zip, not safetensors"), "corrupt"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_import_refuses_what_the_engine_would_refuse(case, tiny, adapter, tmp_path):
    spec = read_model_spec(tiny.model())
    store = AdapterStore(tmp_path / "ipfs")
    mutate, why = BAD[case]
    mutate(adapter)
    with pytest.raises(AdapterError, match=why) as e:
        store.add(adapter, validate=engine_validator(spec, max_rank=2 if case == "rank_over_max" else 64))
    assert str(tmp_path / "ipfs") not in str(e.value)      # the message names the user's directory, not a scratch copy
    assert no_roots(store)


def test_import_with_manifest_base_model_of_another_model_is_refused(tiny, adapter, tmp_path):
    spec = read_model_spec(tiny.model())
    store = AdapterStore(tmp_path / "ipfs")
    with pytest.raises(AdapterError, match="targets base model 'org/other-model'"):
        store.add(adapter, base_model="org/other-model", validate=engine_validator(spec))
    cid, manifest = store.add(adapter, validate=engine_validator(spec))
    assert manifest["base_model"] == spec.model_id and str(cid) in store.list()


def test_cli_add_validates_against_the_given_model(tiny, adapter, tmp_path):
    _edit_config(adapter, use_dora=True)
    r = run_cli("--home", str(tmp_path / "home"), "adapters", "add", str(adapter), "--model", str(tiny.model()))
    assert r.returncode == 1 and "use_dora=true is not supported" in r.stderr and "Traceback" not in r.stderr
    _edit_config(adapter, use_dora=False)
    r = run_cli("--home", str(tmp_path / "home"), "adapters", "add", str(adapter), "--model", str(tiny.model()))
    assert r.returncode == 0 and r.stdout.strip().startswith("bafy"), r.stderr


def test_node_error_root(adapter, tmp_path):
    assert issubclass(AdapterError, NodeError)
