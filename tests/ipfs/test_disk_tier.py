"""The disk tier: the node's blockstore bounded by adapters.disk_store_bytes, evicted least-recently-used.

Real blockstores on tmp_path with tiny adapters: the budget holds after many adds, LRU order follows last use,
pinned and engine-held adapters survive, blocks shared by two adapters survive the eviction of one, a crash in the
middle of an eviction leaves every stored adapter complete (the victim unrecorded, refetchable, its leftovers swept),
and `adapters list|rm` through click's CliRunner, refusals included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from openlora.content.blockstore import Blockstore
from openlora.content.importer import add_bytes
from openlora.inference.sources import AdapterSourceError
from openlora.node.ipfs import disk_tier
from openlora.node.ipfs.adapters import AdapterError, AdapterStore
from openlora.node.ipfs.disk_tier import DiskTierError, EngineUse
from openlora.node.ipfs.source import IpfsAdapterSource


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory) -> list[Path]:
    """Eight tiny adapters sharing no block (each its own lora_alpha), plus (index 8) a twin of adapter 0: the
    same weights file, another adapter_config.json."""
    model = tiny.model()
    root = tmp_path_factory.mktemp("adapters")
    dirs = []
    for s in range(9):
        d = root / f"a{s}"
        shutil.copytree(tiny.adapter(model, rank=2, seed=s if s < 8 else 0), d)
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg["lora_alpha"] = 10.0 + s
        (d / "adapter_config.json").write_text(json.dumps(cfg))
        dirs.append(d)
    return dirs


@pytest.fixture(scope="module")
def one_size(adapters, tmp_path_factory) -> int:
    """Bytes one tiny adapter's blocks take (they all have the same shapes)."""
    store = AdapterStore(tmp_path_factory.mktemp("probe") / "ipfs")
    sizes = {store.tier.adapter_bytes(str(store.add(d)[0])) for d in adapters[:8]}
    assert max(sizes) - min(sizes) < 64, sizes
    return max(sizes)


def used_bytes(store: AdapterStore) -> int:
    return store.tier.usage({})[1]


def all_complete(store: AdapterStore) -> bool:
    return all(store.complete(c) for c in store.list())


def test_budget_holds_after_many_adds(adapters, one_size, tmp_path, caplog):
    budget = 3 * one_size + one_size // 2
    store = AdapterStore(tmp_path / "ipfs", budget_bytes=budget)
    cids = []
    with caplog.at_level("INFO", logger="openlora.ipfs"):
        for d in adapters[:8]:
            cids.append(str(store.add(d)[0]))
            assert used_bytes(store) <= budget
            assert cids[-1] in store.list()            # never the one just added
    kept = len(store.list())
    assert kept == 3 and sorted(store.list()) == sorted(cids[-kept:])   # the oldest went first
    assert all_complete(store)
    evicted = [r for r in caplog.records if "evicted adapter" in r.getMessage()]
    assert [r.fields["cid"] for r in evicted] == cids[:8 - kept]
    assert all(r.fields["bytes"] > 0 and str(r.fields["bytes"]) in r.getMessage() for r in evicted)
    assert {str(c) for c in store.blocks} == set().union(*(store.tier.dag(c)[0] for c in store.list()))


def test_lru_order_follows_last_use_and_exports_go_first(adapters, one_size, tmp_path):
    store = AdapterStore(tmp_path / "ipfs")
    a, b, c = (str(store.add(d)[0]) for d in adapters[:3])
    source = IpfsAdapterSource(store)                   # local store complete: no fetcher needed
    path = source.fetch(a)                              # the engine loads `a`: its last use, and an export
    assert (path / "adapter_model.safetensors").is_file()
    meta = store.blocks.roots()
    assert meta[a]["last_used"] > meta[c]["last_used"] > meta[b]["last_used"]
    store.bound(3 * one_size + one_size // 2)
    d = str(store.add(adapters[3])[0])
    # over budget by ~one adapter: a's exported copy (rebuilt from blocks on its next load) goes first, then the
    # least recently used adapter, b
    assert not (store.exported / a).exists()
    assert sorted(store.list()) == sorted([a, c, d])
    assert source.fetch(a).is_dir()                    # rebuilt locally, nothing fetched
    assert used_bytes(store) <= store.tier.budget + (1 << 20)   # the export of a held adapter may pass it


def test_pinned_and_engine_held_adapters_survive(adapters, one_size, tmp_path):
    held: dict[str, EngineUse] = {}
    store = AdapterStore(tmp_path / "ipfs")
    p, u, r = (str(store.add(d)[0]) for d in adapters[:3])        # the three oldest
    held[u] = EngineUse(tier="host")                                # loaded in the engine's host tier
    held[r] = EngineUse(pinned=True)                                # pinned at runtime (engine.adapters.pin)
    store.bound(4 * one_size + one_size // 2, pinned=(p,), usage=lambda: held)
    later = [str(store.add(d)[0]) for d in adapters[3:8]]
    kept = set(store.list())
    assert {p, u, r} <= kept and later[-1] in kept
    assert len(kept) == 4 and used_bytes(store) <= store.tier.budget
    assert all_complete(store)
    # an adapter the engine holds counts as used at each pass; pins only protect: once released and unpinned,
    # the pinned ones (least recently used) go first
    held.clear()
    store.bound(2 * one_size + one_size // 2)
    store.tier.enforce()
    assert set(store.list()) == {u, later[-1]}


def test_shared_blocks_survive_when_one_sharer_is_evicted(adapters, one_size, tmp_path):
    store = AdapterStore(tmp_path / "ipfs")
    a, twin = str(store.add(adapters[0])[0]), str(store.add(adapters[8])[0])
    assert a != twin
    shared = store.tier.dag(a)[0] & store.tier.dag(twin)[0]
    assert shared                                        # the weights file's blocks
    r = store.remove(a)
    assert r.blocks_shared == len(shared) and r.freed_bytes < one_size // 2
    assert all(store.blocks.has(b) for b in shared)
    assert store.complete(twin) and list(store.list()) == [twin]
    assert (store.materialize(twin) / "adapter_model.safetensors").read_bytes() == \
        (adapters[0] / "adapter_model.safetensors").read_bytes()
    r = store.remove(twin)                               # the last sharer takes them with it
    assert r.blocks_shared == 0 and not any(store.blocks.has(b) for b in shared)
    assert list(store.blocks) == []


@pytest.mark.parametrize("crash_after", [0, 2])         # deletes done before the crash
def test_crash_mid_eviction_leaves_every_adapter_complete(adapters, one_size, tmp_path, monkeypatch, crash_after):
    store = AdapterStore(tmp_path / "ipfs")
    a, twin, c = (str(store.add(d)[0]) for d in (adapters[0], adapters[8], adapters[1]))
    foreign = add_bytes(b"a datanet row nobody recorded as a root", store.blocks.put_trusted).cid
    store.tier.touch(twin)
    store.tier.touch(c)
    source = IpfsAdapterSource(store)
    source.fetch(a)                                      # exported, then made the least recently used
    store.blocks.update_root(a, last_used=1.0)
    victim_blocks = store.tier.dag(a)[0] - store.tier.dag(twin)[0]
    assert len(victim_blocks) >= 3

    real_delete, deleted = Blockstore.delete, []

    def crashing_delete(self, cid):
        if len(deleted) == crash_after:
            raise KeyboardInterrupt("simulated crash")   # not an Exception: nothing may catch it
        deleted.append(str(cid))
        real_delete(self, cid)

    monkeypatch.setattr(Blockstore, "delete", crashing_delete)
    store.bound(one_size)
    with pytest.raises(KeyboardInterrupt):
        store.tier.enforce()
    monkeypatch.setattr(Blockstore, "delete", real_delete)
    assert set(deleted) <= victim_blocks and len(deleted) == crash_after

    # A restarted node: a new store object on the same directory.
    store = AdapterStore(tmp_path / "ipfs")
    assert sorted(store.list()) == sorted([twin, c])     # the victim is no longer recorded ...
    assert all_complete(store)                           # ... and no remaining adapter lost a block
    assert not (store.exported / a).exists()
    assert (store.root / "evicting" / f"{a}.json").is_file()
    store.bound(10 * one_size)
    if crash_after == 0:                                 # every block still there: a load simply takes it back
        assert (IpfsAdapterSource(store).fetch(a) / "adapter_model.safetensors").is_file()
        store.tier.enforce()                             # ... and the journal is dropped, nothing deleted
        assert sorted(store.list()) == sorted([a, twin, c]) and all_complete(store)
        assert not (store.root / "evicting" / f"{a}.json").exists()
        return
    with pytest.raises(AdapterSourceError, match="not in the local blockstore"):
        IpfsAdapterSource(store).fetch(a)                # incomplete: it would be fetched again
    store.tier.enforce()                                 # the next pass finishes the interrupted eviction
    assert not (store.root / "evicting" / f"{a}.json").exists()
    # only the victim's own blocks went: a block nobody recorded as a root (a datanet's) is not the tier's
    assert {str(b) for b in store.blocks} == store.tier.dag(twin)[0] | store.tier.dag(c)[0] | {str(foreign)}
    assert all_complete(store)
    assert str(store.add(adapters[0])[0]) == a and store.complete(a)   # and it can come back


def test_a_journal_written_before_the_root_was_removed_is_dropped(adapters, tmp_path, monkeypatch):
    store = AdapterStore(tmp_path / "ipfs")
    a = str(store.add(adapters[0])[0])

    def crash(self, cid):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(Blockstore, "remove_root", crash)
    store.bound(1)
    with pytest.raises(KeyboardInterrupt):
        store.tier.enforce()
    monkeypatch.undo()
    store = AdapterStore(tmp_path / "ipfs", budget_bytes=1 << 30)
    store.tier.enforce()
    assert list(store.list()) == [a] and store.complete(a) and not any((store.root / "evicting").iterdir())


def test_adapter_larger_than_the_budget_is_refused(adapters, one_size, tmp_path):
    store = AdapterStore(tmp_path / "ipfs", budget_bytes=one_size // 2)
    with pytest.raises(AdapterError, match=r"more than the whole disk tier \(adapters.disk_store_bytes = \d+ bytes\)"
                       ) as e:
        store.add(adapters[0])
    assert "\n" not in str(e.value)
    assert store.list() == {} and list(store.blocks) == []


def test_fetched_adapter_larger_than_the_budget_is_refused_and_removed(adapters, one_size, tmp_path):
    store = AdapterStore(tmp_path / "ipfs")
    a = str(store.add(adapters[0])[0])                 # as if fetched: stored, not exported yet
    store.bound(one_size // 2)
    with pytest.raises(AdapterSourceError, match=f"adapter {a}: adapter {a} is \\d+ bytes, more than the whole"):
        IpfsAdapterSource(store).fetch(a)
    assert store.list() == {} and list(store.blocks) == [] and not (store.exported / a).exists()


def test_a_pass_is_skipped_while_an_add_or_fetch_holds_the_store(adapters, one_size, tmp_path):
    store = AdapterStore(tmp_path / "ipfs")
    cids = [str(store.add(d)[0]) for d in adapters[:3]]
    store.bound(one_size + one_size // 2)
    with store.tier.lock.shared():                      # another thread or process is writing blocks
        assert store.tier.enforce() == []
        with pytest.raises(DiskTierError, match="busy"):
            store.tier.remove(cids[0], wait_s=0.1)
    assert [r.cid for r in store.tier.enforce()] == cids[:2]


# ---- the CLI ----

def _home(tmp_path: Path, budget: int, pinned: list[str]) -> Path:
    from openlora.node.config import DEFAULT_CONFIG_TOML
    home = tmp_path / "home"
    home.mkdir()
    text = DEFAULT_CONFIG_TOML.replace('disk_store_bytes = "50GiB"', f"disk_store_bytes = {budget}")
    text = text.replace("pinned = []", f"pinned = {json.dumps(pinned)}").replace("port = 8000", "port = 1")
    (home / "config.toml").write_text(text)
    return home


def test_cli_list_and_rm(adapters, one_size, tmp_path, monkeypatch):
    from openlora.node.cli import cli
    from openlora.node.commands import adapters as commands
    store = AdapterStore(tmp_path / "home" / "ipfs")
    a, twin, c = (str(store.add(d)[0]) for d in (adapters[0], adapters[8], adapters[1]))
    home = tmp_path / "home"
    (home / "ipfs").rename(tmp_path / "ipfs-saved")
    home.rmdir()
    home = _home(tmp_path, 10 * one_size, [c])
    (tmp_path / "ipfs-saved").rename(home / "ipfs")
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli, ["--home", str(home), "adapters", *args])

    out = run("list", "--json")
    assert out.exit_code == 0, out.output
    listing = json.loads(out.stdout)
    rows = {r["cid"]: r for r in listing["adapters"]}
    assert set(rows) == {a, twin, c} and listing["budget_bytes"] == 10 * one_size
    assert rows[c]["pinned"] and not rows[a]["pinned"] and all(r["complete"] for r in rows.values())
    assert all(abs(r["bytes"] - one_size) < 1024 and r["last_used"] for r in rows.values())
    text = run("list")
    assert f"{c}  " in text.stdout and "pinned=yes" in text.stdout and "last_used=20" in text.stdout

    refused = run("rm", c)                               # pinned by adapters.pinned
    assert refused.exit_code != 0 and isinstance(refused.exception, DiskTierError)
    assert "pinned" in str(refused.exception) and "--force" in str(refused.exception)
    assert c in store.list()
    missing = run("rm", "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
    assert isinstance(missing.exception, DiskTierError) and "not in the local store" in str(missing.exception)

    monkeypatch.setattr(commands, "_running_node", lambda cfg: {a: "host"})
    out = run("rm", a, "--json")
    assert out.exit_code == 0, out.output
    r = json.loads(out.stdout)
    assert r["removed"] == a and r["blocks_shared_kept"] > 0 and 0 < r["freed_bytes"] < one_size // 2
    assert r["node_lists_it"] and r["node_tier"] == "host"
    out = run("rm", c, "--force")
    assert out.exit_code == 0 and f"removed adapter {c}: " in out.stdout and "bytes freed" in out.stdout
    assert set(AdapterStore(home / "ipfs").list()) == {twin} and AdapterStore(home / "ipfs").complete(twin)
