"""`adapters add` / `adapters register` / `adapters announce` on a real Anvil (tests/chain_fixtures.py): an outside
adapter is refused by the engine's own checks before it gets a CID, is registered without lineage by its author
(the node's keystore), is announced over gossip to a real py-libp2p host that checks AdapterRegistry, and every bad
input is one line (exit 1; click usage errors exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from eth_account import Account
from safetensors.torch import load_file, save_file

from openlora.attribution.lineage import read_adapter
from openlora.devnet.chain import free_port
from openlora.devnet.seed import ROLES
from openlora.node.cli import main
from openlora.node.config import DEFAULT_CONFIG_TOML
from openlora.node.ipfs.adapters import AdapterStore
from tests.chain_fixtures import accounts, anvil, deployment, w3  # noqa: F401  (pytest fixtures)

PASSWORD = "register-test-password"


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out.strip(), out.err.strip()


def one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in err, err
    return last


@pytest.fixture
def home(tmp_path, anvil, deployment, accounts, tiny, monkeypatch) -> Path:
    """A node home on the session's devnet: the seeded demo node's key, the tiny Llama as its model, no node
    running (its API port is free), p2p listening on a free port."""
    h = tmp_path / "home"
    h.mkdir()
    (h / "config.toml").write_text(DEFAULT_CONFIG_TOML)
    key = accounts[ROLES["node"]].key
    (h / "keystore.json").write_text(json.dumps(Account.encrypt(key, PASSWORD, kdf="scrypt", iterations=16)))
    deployment.write(h / "deployment.json")
    for k, v in {"PASSWORD": PASSWORD, "CHAIN_RPC_URL": anvil.url, "MODEL_PATH": str(tiny.model()),
                 "API_PORT": str(free_port()), "P2P_LISTEN": f"/ip4/127.0.0.1/tcp/{free_port()}"}.items():
        monkeypatch.setenv(f"OPENLORA_{k}", v)
    return h


@pytest.fixture
def adapter_dir(tiny, tmp_path) -> Path:
    """The same adapter (CID) in every test: it may already be registered on the module's chain."""
    d = tmp_path / "adapter"
    shutil.copytree(tiny.adapter(tiny.model(), rank=4, seed=11), d)
    return d


@pytest.fixture
def fresh_adapter_dir(tiny, tmp_path) -> Path:
    """An adapter no other test registers."""
    d = tmp_path / "fresh-adapter"
    shutil.copytree(tiny.adapter(tiny.model(), rank=4, seed=12), d)
    return d


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(changes)
    (d / "adapter_config.json").write_text(json.dumps(cfg))


def _add_lm_head(d: Path) -> None:
    t = load_file(str(d / "adapter_model.safetensors"))
    t["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 8)
    save_file(t, str(d / "adapter_model.safetensors"))


REFUSED = {
    "dora": (lambda d: _edit_config(d, use_dora=True), "use_dora=true is not supported"),
    "modules_to_save": (lambda d: _edit_config(d, modules_to_save=["lm_head"]), "modules_to_save"),
    "bias": (lambda d: _edit_config(d, bias="lora_only"), "bias='lora_only' is not supported"),
    "lm_head": (_add_lm_head, "lm_head"),
    "other_base": (lambda d: _edit_config(d, base_model_name_or_path="meta-llama/Llama-3-8B"),
                   "targets base model 'meta-llama/Llama-3-8B'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_add_refuses_what_the_engine_refuses_before_a_cid(case, home, adapter_dir, capsys):
    mutate, why = REFUSED[case]
    mutate(adapter_dir)
    code, out, err = run(capsys, "--home", str(home), "adapters", "add", str(adapter_dir))
    assert why in one_line_error(code, err) and out == ""
    assert AdapterStore(home / "ipfs").list() == {}


def test_add_refuses_a_base_model_flag_of_another_model(home, adapter_dir, capsys):
    code, out, err = run(capsys, "--home", str(home), "adapters", "add", str(adapter_dir), "--base-model", "org/x")
    assert "targets base model 'org/x'" in one_line_error(code, err)
    assert AdapterStore(home / "ipfs").list() == {}


def _add(capsys, home, adapter_dir, *extra) -> str:
    code, out, err = run(capsys, "--home", str(home), "adapters", "add", str(adapter_dir), *extra)
    assert code == 0, err
    assert "adapters register" in err            # the next step is named
    return out


def test_register_without_lineage_then_refuse_a_second_time(home, adapter_dir, w3, deployment, accounts, capsys):
    cid = _add(capsys, home, adapter_dir)
    node = accounts[ROLES["node"]].address
    code, out, err = run(capsys, "--home", str(home), "adapters", "register", cid, "--price", "7",
                         "--datanet", "1", "--no-announce", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert (got["cid"], got["author"], got["price_per_token"], got["datanets"]) == (cid, node, 7, [[1, 10000]])
    rec = read_adapter(w3, deployment, cid)
    assert (rec.author, rec.price_per_token, rec.datanet_weights, rec.lineage) == (node, 7, ((1, 10_000),), None)
    assert rec.base_model == AdapterStore(home / "ipfs").list()[cid]["manifest"]["base_model"]
    code, out, err = run(capsys, "--home", str(home), "adapters", "show", cid)
    assert code == 0 and "lineage: none" in out and f"author {node}" in out and "1: 10000 bps" in out, err
    code, out, err = run(capsys, "--home", str(home), "adapters", "register", cid, "--price", "7", "--datanet", "1")
    assert f"adapter {cid} is already registered in AdapterRegistry (author {node})" in one_line_error(code, err)


@pytest.mark.parametrize("args, match", [
    (["--datanet", "1:5000"], "sum to 5000 bps; they must sum to exactly 10000"),
    (["--datanet", "1:6000", "--datanet", "999:4000"], "Datanet 999 does not exist in DatanetRegistry"),
    (["--datanet", "1:10000", "--base-model", "org/other"], "differs from the adapter's manifest"),
])
def test_register_refusals_are_one_line(home, adapter_dir, capsys, args, match):
    cid = _add(capsys, home, adapter_dir)
    code, out, err = run(capsys, "--home", str(home), "adapters", "register", cid, "--price", "1", *args)
    assert match in one_line_error(code, err)


@pytest.mark.parametrize("args, match", [
    (["--datanet", "x"], "'x' is not ID:BPS"),
    (["--datanet", "1:a"], "'1:a' is not ID:BPS"),
    (["--datanet", "1", "--datanet", "2"], "give each Datanet's weight as ID:BPS"),
    (["--datanet", "1", "--price", "-1"], "-1 is not in the range x>=0"),
    (["--price", "1"], "Missing option '--datanet'"),
])
def test_register_usage_errors(home, capsys, args, match):
    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    argv = ["--home", str(home), "adapters", "register", cid, *args]
    if "--price" not in args:
        argv += ["--price", "1"]
    code, out, err = run(capsys, *argv)
    assert code == 2 and match in err and "Traceback" not in err, err


def test_register_of_what_this_home_does_not_hold(home, capsys, w3, deployment):
    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    code, out, err = run(capsys, "--home", str(home), "adapters", "register", cid, "--price", "1", "--datanet", "1")
    assert "is not held in this home" in one_line_error(code, err) and "--base-model" in err
    code, out, err = run(capsys, "--home", str(home), "adapters", "register", "not-a-cid", "--price", "1",
                         "--datanet", "1")
    assert "is not a CID" in one_line_error(code, err)
    code, out, err = run(capsys, "--home", str(home), "adapters", "register", cid, "--price", "1", "--datanet", "1",
                         "--base-model", "openlora/tiny-llama-s0")
    assert code == 0, err
    assert "not announced: this home does not hold" in err
    assert read_adapter(w3, deployment, cid).base_model == "openlora/tiny-llama-s0"


def test_register_with_another_key_than_the_manifest_author(home, adapter_dir, tmp_path, capsys):
    cid = _add(capsys, home, adapter_dir)
    other = tmp_path / "other.key"
    other.write_text(Account.create().key.hex())
    code, out, err = run(capsys, "--home", str(home), "adapters", "register", cid, "--price", "1", "--datanet", "1",
                         "--key-file", str(other))
    assert "was added with author" in one_line_error(code, err)


def test_register_needs_a_config_and_a_chain(tmp_path, capsys, monkeypatch, home):
    code, out, err = run(capsys, "--home", str(tmp_path / "nohome"), "adapters", "register",
                         "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", "--price", "1",
                         "--datanet", "1")
    one_line_error(code, err)
    monkeypatch.setenv("OPENLORA_CHAIN_RPC_URL", f"http://127.0.0.1:{free_port()}")
    code, out, err = run(capsys, "--home", str(home), "adapters", "register",
                         "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", "--price", "1",
                         "--datanet", "1")
    assert "chain not reachable" in one_line_error(code, err)


def test_announce_reaches_a_peer_that_checks_the_registry(home, fresh_adapter_dir, w3, deployment, accounts,
                                                           tmp_path, capsys):
    """A real py-libp2p host B that accepts announcements only of adapters registered on chain by their author:
    before registration B drops the announcement, after `adapters register` it learns it."""
    from eth_account import Account as A

    from openlora.node.p2p.host import P2PSettings
    from openlora.node.p2p.registry import AdapterRegistryCheck
    from openlora.node.p2p.service import P2PService
    from tests.p2p.p2p_waiting import wait_for

    cid = _add(capsys, home, fresh_adapter_dir)
    node = accounts[ROLES["node"]].address
    check = AdapterRegistryCheck.from_deployment(w3, deployment, negative_ttl_s=0.0)
    b = P2PService(tmp_path / "b", AdapterStore(tmp_path / "b" / "ipfs"), A.create(),
                   P2PSettings(heartbeat_interval_s=0.5, announce_interval_s=1.0), registry_check=check).start()
    try:
        peer = b.addrs[0]
        code, out, err = run(capsys, "--home", str(home), "adapters", "announce", cid, "--peer", peer)
        assert code == 0 and f"announced {cid} (author {node}" in out, err
        wait_for(lambda: b.stats()["dropped"].get("not-registered"), what="B dropping the unregistered adapter")
        assert cid not in b.known_adapters() or "announcement" not in b.known_adapters()[cid]

        code, out, err = run(capsys, "--home", str(home), "adapters", "register", cid, "--price", "3",
                             "--datanet", "1", "--peer", peer)
        assert code == 0 and f"announced {cid}" in err, err
        wait_for(lambda: "announcement" in b.known_adapters().get(cid, {}), what="B learning the announcement")
        ann = b.known_adapters()[cid]["announcement"]
        assert ann["author"] == node and ann["base_model"] == read_adapter(w3, deployment, cid).base_model
    finally:
        b.stop()


def test_announce_refusals(home, adapter_dir, tmp_path, capsys):
    cid = _add(capsys, home, adapter_dir)
    code, out, err = run(capsys, "--home", str(home), "adapters", "announce", cid)
    assert "no peer to announce to" in one_line_error(code, err) and "openlora-node start" in err
    other = tmp_path / "other.key"
    other.write_text(Account.create().key.hex())
    code, out, err = run(capsys, "--home", str(home), "adapters", "announce", cid, "--key-file", str(other),
                         "--peer", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDZ6JUi2qmmQpjzTEnsvCEm2NLbgFC6pn3eSHYYVYsYCz")
    assert "only its author can announce it" in one_line_error(code, err)
    code, out, err = run(capsys, "--home", str(home), "adapters", "announce", cid, "--timeout", "3",
                         "--peer", f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/"
                                   "12D3KooWDZ6JUi2qmmQpjzTEnsvCEm2NLbgFC6pn3eSHYYVYsYCz")
    assert "could not connect to any peer to announce to" in one_line_error(code, err)
    code, out, err = run(capsys, "--home", str(home), "adapters", "announce",
                         "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
    assert "is not held in this home" in one_line_error(code, err)


def test_show_reads_the_record_and_the_lineage(home, w3, deployment, accounts, capsys):
    from openlora.attribution.lineage import Lineage, register_adapter
    from openlora.content.importer import add_bytes
    author = Account.from_key(accounts[ROLES["author"]].key)
    d, v = int(deployment.extra["datanet_id"]), int(deployment.extra["datanet_version"]["version"])
    cid = str(add_bytes(b"an adapter trained by the factory (test_show)").cid)
    lin = Lineage({d: v}, str(add_bytes(b"training manifest").cid), str(add_bytes(b"base weights").cid))
    register_adapter(w3, deployment, author, cid, "smollm2-135m-instruct", 9, {d: 10_000}, lin)
    code, out, err = run(capsys, "--home", str(home), "adapters", "show", cid, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert (got["author"], got["base_model"], got["price_per_token"], got["datanets"], got["retired"]) == \
        (author.address, "smollm2-135m-instruct", 9, [[d, 10_000]], False)
    assert got["lineage"] == {"datanet_versions": [[d, v]], "manifest_cid": lin.manifest_cid,
                              "base_weights_cid": lin.base_weights_cid}
    code, out, err = run(capsys, "--home", str(home), "adapters", "show", cid)
    assert code == 0 and f"trained on Datanet {d} version {v}; training manifest {lin.manifest_cid}" in out, err
    other = str(add_bytes(b"never registered (test_show)").cid)
    code, out, err = run(capsys, "--home", str(home), "adapters", "show", other)
    assert f"adapter {other} is not registered in AdapterRegistry" in one_line_error(code, err)
    code, out, err = run(capsys, "--home", str(home), "adapters", "show", "nope")
    assert "is not a CID" in one_line_error(code, err)


def _mesh(service) -> int:
    from openlora.node.p2p import gossip
    return service.bridge.call(service._async(
        lambda: len(service.node.pubsub.router.mesh.get(gossip.TOPIC_ANNOUNCE, ()))))


def test_a_running_node_checks_announcements_on_chain_and_announces_its_registered_adapters(
        home, tiny, tmp_path, w3, deployment, accounts, capsys):
    """node/wiring.py Network.use_chain (what `start` runs once the chain is connected)."""
    from openlora.node.config import load_config
    from openlora.node.p2p.host import P2PSettings
    from openlora.node.p2p.service import P2PService
    from openlora.node.wiring import Chain, Network
    from tests.p2p.p2p_waiting import wait_for

    dirs = {}
    for seed in (13, 14):
        dirs[seed] = tmp_path / f"a{seed}"
        shutil.copytree(tiny.adapter(tiny.model(), rank=4, seed=seed), dirs[seed])
    registered, unregistered = _add(capsys, home, dirs[13]), _add(capsys, home, dirs[14])
    code, out, err = run(capsys, "--home", str(home), "adapters", "register", registered, "--price", "2",
                         "--datanet", "1", "--no-announce")
    assert code == 0, err
    node_account = Account.from_key(accounts[ROLES["node"]].key)
    net = Network(load_config(home), node_account, "openlora/tiny-llama-s0")
    stranger = Account.create()
    b = P2PService(tmp_path / "b", AdapterStore(tmp_path / "b" / "ipfs"), stranger, P2PSettings()).start()
    try:
        b.connect(net.p2p.addrs[0])
        wait_for(lambda: _mesh(net.p2p) and _mesh(b), what="both hosts in the announce mesh")
        assert net.use_chain(Chain(w3, deployment), node_account) == 1
        wait_for(lambda: "announcement" in b.known_adapters().get(registered, {}), what="the node's announcement")
        assert b.known_adapters()[registered]["announcement"]["author"] == node_account.address
        assert "announcement" not in b.known_adapters().get(unregistered, {})     # (its heartbeat lists it)
        # announcements the node receives are now checked on chain: a stranger's unregistered adapter is dropped
        cid, _ = b.store.add(dirs[14], author=stranger.address)
        b.announce(str(cid))
        wait_for(lambda: net.p2p.stats()["dropped"].get("not-registered"), what="the node dropping it")
        assert "announcement" not in net.p2p.known_adapters().get(str(cid), {})
    finally:
        b.stop()
        net.stop()
