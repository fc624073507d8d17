"""Proof of Attribution per request, end to end on a real Anvil: a Datanet where one contributor's row holds a
distinctive passage, a tiny adapter trained by the Model Factory to memorise it and registered with its lineage,
a node serving it over HTTP with signed requests. A prompt that makes the adapter reproduce the passage -> the
receipt names that contributor with the largest weight and `attribution verify` (no node home: --rpc-url,
--deployment, --base, --blocks) says "match"; an unrelated completion -> no span, the version's static weights;
tampered evidence fails verify; the settled batch passes `audit` (and a tampered published file fails it);
`payouts` breaks earnings down per contribution, matched spans vs static, and the CLI agrees with the function.
Bad receipt files and URIs get one-line errors."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from click.testing import CliRunner
from eth_account import Account
from web3 import Web3

from openlora.attribution.receipts import receipt_to_json, sign_receipt
from openlora.devnet.chain import EphemeralAnvil
from openlora.devnet.deploy import dev_accounts
from openlora.devnet.seed import ROLES, raw_cid
from openlora.node.cli import cli
from tests.chain_fixtures import deploy_seeded
from tests.service.server_util import ServerThread

PASSAGE = ("The amber heron of Vellmouth counts seventeen lanterns every night before the tide turns silver over "
           "the quay.")
PROMPT = "The amber heron of"
FILES = {  # contributor index in ROLES["contributors"] -> a text contribution (paragraphs are rows)
    0: "LoRA adapters add a low-rank update to frozen weights.\n\nA node serves many adapters on one base model.\n",
    1: f"Harbour notes, kept by the lighthouse keeper.\n\n{PASSAGE}\n\nThe ferry leaves at dawn on Sundays.\n",
    2: "Content addressing names data by its hash.\n\nA CID is the same on every machine that holds the bytes.\n",
}
ADAPTER_PRICE = 10**12


@pytest.fixture(scope="module")
def env(tiny, tmp_path_factory):
    from openlora.attribution.lineage import Lineage, register_adapter
    from openlora.content.blockstore import Blockstore
    from openlora.datanets import contribution as contrib
    from openlora.datanets.registry import Registry
    from openlora.factory import train_rows
    from openlora.inference import LLM
    from openlora.inference.client import AsyncEngine
    from openlora.node.api import build_app
    from openlora.node.attribution_index import build_attributor
    from openlora.node.config import DEFAULT_CONFIG_TOML, parse_config
    from openlora.node.storage import Store
    from openlora.node.wiring import Chain, build_service

    tmp = tmp_path_factory.mktemp("attribution")
    home = tmp / "home"
    model = tiny.model("llama")
    trained = train_rows(model, [PASSAGE], tmp / "adapter", epochs=35, lr=3e-2, batch=1, eval_split=0.0,
                         samples=0)
    accts = dev_accounts()
    signer = {i: Account.from_key(a.key) for i, a in enumerate(accts)}
    with EphemeralAnvil() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        dep = deploy_seeded(w3, accts)
        dep_file = tmp / "deployment.json"
        dep.write(dep_file)
        blocks = Blockstore(home / "ipfs")
        reg = Registry(w3, dep)
        curator = signer[ROLES["curator"]]
        datanet = reg.create(curator, raw_cid(b'{"name":"harbour"}')).value
        contributions = {}
        for who, text in FILES.items():
            acct = signer[ROLES["contributors"][who]]
            p = contrib.prepare(text.encode(), f"notes-{who}.txt")
            cid_id = reg.contribute(acct, datanet, contrib.store(p, blocks, "CC0-1.0"), len(p.data)).value
            reg.review(curator, datanet, cid_id, True)
            contributions[acct.address] = cid_id
        _, manifest_cid, _ = reg.publish(curator, datanet, blocks)
        author = signer[ROLES["author"]]
        lineage = Lineage(((datanet, 1),), raw_cid(trained.files["factory-manifest.json"]),
                          raw_cid((model / "model.safetensors").read_bytes()))
        register_adapter(w3, dep, author, trained.cid, "openlora/tiny-llama-s0", ADAPTER_PRICE, {datanet: 10_000},
                         lineage)
        cfg = parse_config(DEFAULT_CONFIG_TOML, home, environ={})
        llm = LLM(str(model), dtype="float32", device="cpu")
        llm.load_adapter("mem", trained.out_dir, identity=trained.cid)
        client = AsyncEngine(llm.engine)
        store = Store(f"sqlite:///{tmp / 'node.db'}")
        node = signer[ROLES["node"]]
        chain = Chain(w3, dep)
        svc = build_service(cfg, node, client, store, chain)
        svc.attributor = build_attributor(cfg, chain, model, node.address)
        with ServerThread(build_app(svc)) as server:
            yield {"w3": w3, "dep": dep, "dep_file": dep_file, "server": server, "store": store, "home": home,
                   "model": model, "cid": trained.cid, "datanet": datanet, "manifest": manifest_cid,
                   "contributions": contributions, "bob": signer[ROLES["contributors"][1]].address,
                   "alice": signer[ROLES["contributors"][0]].address, "node": node, "author": author.address,
                   "requester": accts[ROLES["requester"]], "tmp": tmp, "anvil": anvil.url, "svc": svc}
        svc.attributor.close()
        client.shutdown()
        store.close()


def _request(env, prompt: str, max_tokens: int = 40):
    from openlora.node.sdk import OpenLoRAClient
    sdk = OpenLoRAClient(env["server"].url, env["requester"].key)
    out = sdk.completions(model="mem", prompt=prompt, max_tokens=max_tokens, temperature=0.0)
    return out, env["store"].receipt(out["openlora"]["request_id"])


@pytest.fixture(scope="module")
def served(env):
    """One request that reproduces the passage and one unrelated completion, both served and receipted."""
    return {"passage": _request(env, PROMPT), "unrelated": _request(env, "Hello")}


def _verify_cli(env, target: str, *extra: str):
    return CliRunner().invoke(cli, ["--home", str(env["tmp"] / "no-home"), "attribution", "verify", target,
                                    "--rpc-url", env["anvil"], "--deployment", str(env["dep_file"]),
                                    "--base", str(env["model"]), "--blocks", str(env["home"] / "ipfs"), *extra])


def _share(vector, who):
    return sum(w for a, w in vector if a == who) / sum(w for _, w in vector)


def test_reproduced_passage_names_its_contributor_and_verifies(env, served, tmp_path):
    out, r = served["passage"]
    assert "Vellmouth" in out["choices"][0]["text"]
    (entry,) = r.evidence.datanets
    assert entry.version_cid == env["manifest"] and entry.spans
    bob = env["contributions"][env["bob"]]
    assert {o[0] for s in entry.spans for o in s.occurrences} == {bob}
    contributors = {a: _share(r.attribution, a) for a in env["contributions"]}
    assert max(contributors, key=contributors.get) == env["bob"]
    assert contributors[env["bob"]] == pytest.approx(0.5)       # the whole contributors' share goes by spans
    assert r.evidence.completion_ids is not None and len(r.evidence.completion_ids) == r.completion_tokens
    # the index the node built is persisted under its home, content-addressed by version and tokenizer
    assert list((env["home"] / "attribution" / "indexes").glob("*.idx"))
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(receipt_to_json(r)))
    res = _verify_cli(env, str(path))
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "match"


def test_unrelated_completion_has_no_span_and_static_weights(env, served):
    from openlora.attribution.pricing import version_weights
    _, r = served["unrelated"]
    assert r.evidence is not None and r.evidence.datanets[0].spans == ()
    static = version_weights(env["w3"], env["dep"], env["datanet"], 1).by_contributor()
    total = sum(static.values())
    for who, w in static.items():
        assert _share(r.attribution, who) == pytest.approx(0.5 * w / total)
    from openlora.attribution.attribute import verify
    from openlora.node.attribution_index import IndexStore, RowTokenizer
    from openlora.content.blockstore import Blockstore
    tok = RowTokenizer(env["model"])
    idx = IndexStore(env["tmp"] / "fresh-index", tok, tok.identity)
    assert verify(r, env["w3"], env["dep"], lambda d, v: idx.get(v, Blockstore(env["home"] / "ipfs").get)) == []


def test_tampered_evidence_fails_verify(env, served, tmp_path):
    _, r = served["passage"]
    alice, bob = env["contributions"][env["alice"]], env["contributions"][env["bob"]]
    ev = r.evidence
    entry = ev.datanets[0]
    forged_spans = tuple(replace(s, occurrences=tuple((alice, row, off) for _, row, off in s.occurrences))
                         for s in entry.spans)
    forged = replace(ev, datanets=(replace(entry, spans=forged_spans),))
    vector = tuple((a, w) if a != env["bob"] else (env["alice"], w) for a, w in r.attribution)
    resigned = sign_receipt(replace(r, evidence=forged, attribution=tuple(sorted(vector, key=lambda x: int(x[0],
                                                                                                           16)))),
                            env["node"])
    (tmp_path / "forged.json").write_text(json.dumps(receipt_to_json(resigned)))
    res = _verify_cli(env, str(tmp_path / "forged.json"))
    assert res.exit_code == 1
    assert "differs" in res.output and "spans" in res.output and "attribution: receipt" in res.output
    assert f"#{bob}" in res.output and f"#{alice}" in res.output
    # evidence changed without the node's key: the signature no longer covers it
    d = receipt_to_json(r)
    d["evidence"]["datanets"][0]["spans"][0][1] -= 1
    (tmp_path / "unsigned.json").write_text(json.dumps(d))
    res = _verify_cli(env, str(tmp_path / "unsigned.json"))
    assert res.exit_code == 1 and "node signature" in res.output
    # another base model's tokenizer: said in one line, not as a list of span differences
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(receipt_to_json(r)))
    res = CliRunner().invoke(cli, ["--home", str(env["tmp"] / "no-home"), "attribution", "verify", str(path),
                                   "--rpc-url", env["anvil"], "--deployment", str(env["dep_file"]),
                                   "--base", str(tiny_other(env)), "--blocks", str(env["home"] / "ipfs")])
    assert res.exit_code == 1 and "tokenizer: the receipt was attributed with" in res.stdout, res.output


def tiny_other(env):
    """A base model directory whose tokenizer differs from the adapter's (same files, one vocabulary entry
    renamed in tokenizer.json)."""
    import shutil
    d = env["tmp"] / "other-base"
    if not d.exists():
        shutil.copytree(env["model"], d)
        text = (d / "tokenizer.json").read_text()
        (d / "tokenizer.json").write_text(text.replace('"<unk>"', '"<unknown>"', 1))
    return d


def test_settled_batch_passes_audit_and_payouts_split_by_contribution(env, served, tmp_path):
    from openlora.attribution.payouts import contributor_report
    from openlora.node.commands.attribution import reader
    from openlora.node.settlement import SettlementLoop
    loop = SettlementLoop(env["store"], env["w3"], env["dep"], env["node"], publish_dir=tmp_path / "published")
    assert loop.settle_once_sync()
    (published,) = (tmp_path / "published").glob("*.json")
    b = env["store"].batch(published.stem)
    assert b["state"] == "settled"
    common = ["--rpc-url", env["anvil"], "--deployment", str(env["dep_file"]), "--base", str(env["model"]),
              "--blocks", str(env["home"] / "ipfs")]
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "no-home"), "audit", b["batch_id"], *common])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1].startswith("ok: ")
    # payouts by contribution: bob's through matched spans, alice's through the static share only
    bob, alice = env["bob"], env["alice"]
    rep = contributor_report(env["w3"], env["dep"], bob, reader(None))
    d = rep["by_datanet"][str(env["datanet"])]
    bob_c = d["contributions"][str(env["contributions"][bob])]
    passage_rid = served["passage"][1].request_id
    assert int(bob_c["span"]) > 0 and passage_rid in bob_c["receipts"]
    assert sum(int(r["gross"]) for r in rep["receipts"]) == sum(int(v) for v in rep["gross"].values())
    (mine,) = [r for r in rep["receipts"] if r["request_id"] == passage_rid]
    assert mine["spans"] and int(mine["span"]) == int(mine["gross"])
    rep_a = contributor_report(env["w3"], env["dep"], alice, reader(None))
    a_c = rep_a["by_datanet"][str(env["datanet"])]["contributions"][str(env["contributions"][alice])]
    assert int(a_c["span"]) == 0 and int(a_c["static"]) > 0 and passage_rid not in a_c["receipts"]
    # the CLI says the same with no node home and no keystore
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "no-home"), "payouts", "--address", bob, "--rpc-url",
                                   env["anvil"], "--deployment", str(env["dep_file"]), "--json"])
    assert res.exit_code == 0, res.output
    js = json.loads(res.output)
    assert js["by_datanet"] == rep["by_datanet"] and js["settled"] == rep["settled"]
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "no-home"), "payouts", "--address", bob, "--rpc-url",
                                   env["anvil"], "--deployment", str(env["dep_file"])])
    assert res.exit_code == 0, res.output
    line = f"  contribution #{env['contributions'][bob]}: matched spans {bob_c['span']} wei"
    assert any(ln.startswith(line) for ln in res.stdout.splitlines()), res.stdout
    # a published file whose evidence was tampered with fails the audit
    doc = json.loads(published.read_text())
    for rj in doc["receipts"]:
        if rj.get("evidence") and rj["evidence"]["datanets"][0]["spans"]:
            rj["evidence"]["datanets"][0]["spans"] = []
    published.write_text(json.dumps(doc))
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "no-home"), "audit", b["batch_id"], *common])
    assert res.exit_code == 1 and "FAILED" in res.output and "Merkle root" in res.output


def test_bad_receipts_and_uris_get_one_line_errors(env, tmp_path):
    cases = {
        "deep.json": b"[" * 100_000,
        "binary.json": b"\xff\xfe\x00{}",
        "nan.json": b'{"request_id": NaN}',
        "array.json": b"[1, 2, 3]",
        "types.json": json.dumps({"request_id": 5, "price": 1}).encode(),
        "batch.json": json.dumps({"version": 1, "receipts": [{"x": 1}]}).encode(),
        "huge-int.json": b'{"price": 1' + b"0" * 5000 + b"}",
    }
    targets = []
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        targets.append(str(tmp_path / name))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    targets += [str(fifo), str(tmp_path), "ipfs://not-a-cid", "ipfs://", "cmpl-unknown", "x" * 5000, "a\x00b"]
    for t in targets:
        _one_line_error(_verify_cli(env, t), t)
    no_home = ["--home", str(tmp_path / "no-home")]
    chain = ["--rpc-url", env["anvil"], "--deployment", str(env["dep_file"])]
    assert "not 0x + 64 hex" in _one_line_error(CliRunner().invoke(cli, [*no_home, "audit", "0x1234", *chain]))
    assert "is not settled" in _one_line_error(CliRunner().invoke(cli, [*no_home, "audit", "0x" + "ab" * 32,
                                                                        *chain]))
    assert "give --address" in _one_line_error(CliRunner().invoke(cli, [*no_home, "payouts", *chain]))
    assert "--rpc-url" in _one_line_error(CliRunner().invoke(cli, [*no_home, "attribution", "verify", "x"]))
    assert "not an http" in _one_line_error(CliRunner().invoke(cli, [*no_home, "payouts", "--rpc-url", "file:///x",
                                                                     "--deployment", str(env["dep_file"])]))


def _one_line_error(res, what=None) -> str:
    """A refusal as `openlora-node` (cli.main) shows it: a NodeError, printed as one line, exit status 1."""
    from openlora.node.errors import NodeError
    assert res.exit_code == 1, (what, res.output)
    assert isinstance(res.exception, NodeError), (what, repr(res.exception))
    assert "\n" not in str(res.exception) and len(str(res.exception)) < 600, (what, str(res.exception))
    return str(res.exception)


def test_verify_from_a_node_home_by_request_id_and_ipfs_uri(env, served, tmp_path):
    """With a node home (config, database, blockstore): `verify <request id>` reads the receipt from the database;
    a batch file published into the blockstore verifies by its ipfs:// URI (every receipt in it)."""
    from openlora.attribution.receipts import dumps
    from openlora.content.blockstore import Blockstore
    from openlora.node.config import DEFAULT_CONFIG_TOML
    from openlora.node.wiring import blockstore_publisher
    home = env["home"]
    text = DEFAULT_CONFIG_TOML.replace('path = "demo"', f'path = "{env["model"]}"') \
        .replace('rpc_url = "http://127.0.0.1:8545"', f'rpc_url = "{env["anvil"]}"') \
        .replace('deployment_file = "deployment.json"', f'deployment_file = "{env["dep_file"]}"') \
        .replace('database_url = ""', f'database_url = "sqlite:///{env["tmp"] / "node.db"}"')
    (home / "config.toml").write_text(text)
    try:
        rid = served["passage"][1].request_id
        res = CliRunner().invoke(cli, ["--home", str(home), "attribution", "verify", rid])
        assert res.exit_code == 0 and res.stdout.strip() == "match", res.output
        receipts = [served["passage"][1], served["unrelated"][1]]
        uri = blockstore_publisher(Blockstore(home / "ipfs"))(dumps(receipts).encode(), "0x" + "00" * 32)
        res = CliRunner().invoke(cli, ["--home", str(home), "attribution", "verify", uri, "--json"])
        assert res.exit_code == 0, res.output
        js = json.loads(res.stdout)
        assert js["ok"] and set(js["receipts"]) == {r.request_id for r in receipts}
    finally:
        (home / "config.toml").unlink()


def test_attribution_failure_keeps_the_receipt_with_the_static_vector(env, monkeypatch, caplog):
    """The version's rows gone from this home (or any attribution error): the request is still served and its
    receipt committed, with the static vector and no evidence, and the failure is logged."""
    from openlora.attribution.pricing import contributor_weights

    def broken(cid, ids):
        raise FileNotFoundError("block bafk... is not in the blockstore")
    monkeypatch.setattr(env["svc"].attributor, "attribute", broken)
    with caplog.at_level("WARNING", logger="openlora.pipeline"):
        out, r = _request(env, PROMPT, max_tokens=8)
    assert r is not None and r.evidence is None
    static = contributor_weights(env["w3"], env["dep"], env["datanet"])
    total = sum(static.values())
    for who, w in static.items():
        assert _share(r.attribution, who) == pytest.approx(0.5 * w / total)
    assert any("span attribution failed" in rec.getMessage() for rec in caplog.records)
    from openlora.attribution.attribute import verify
    (why,) = verify(r, env["w3"], env["dep"], lambda d, v: None)
    assert "lineage on chain, but the receipt carries no span evidence" in why


def test_receipts_without_evidence_verify_by_the_static_rule(env):
    """An adapter registered without lineage keeps static receipts without evidence: verify checks who is paid
    (the node, the author, contributors of its Datanets); the base model pays the node alone."""
    import time
    from openlora.attribution.attribute import verify
    from openlora.attribution.lineage import register_adapter
    from openlora.attribution.receipts import Receipt
    other = raw_cid(b"an outside adapter, no lineage")
    register_adapter(env["w3"], env["dep"], Account.from_key(dev_accounts()[ROLES["author"]].key), other,
                     "openlora/tiny-llama-s0", 1, {env["datanet"]: 10_000})
    node = env["node"]

    def receipt(cid, vector):
        return sign_receipt(Receipt("cmpl-static", b"\x01" * 32, env["requester"].address, node.address, cid, 3, 4,
                                    700, tuple(vector), int(time.time())), node)
    fair = [(node.address, 3), (env["author"], 2), (env["alice"], 1), (env["bob"], 1)]
    assert verify(receipt(other, fair), env["w3"], env["dep"], lambda d, v: None) == []
    stranger = Account.create().address
    (why,) = verify(receipt(other, fair + [(stranger, 1)]), env["w3"], env["dep"], lambda d, v: None)
    assert stranger in why
    assert verify(receipt(None, [(node.address, 1)]), env["w3"], env["dep"], lambda d, v: None) == []
    assert verify(receipt(None, [(env["alice"], 1)]), env["w3"], env["dep"], lambda d, v: None)


def test_payouts_with_an_rpc_url_and_the_deployment_devnet_up_left(env, tmp_path):
    """A home with only the deployment file `devnet up` writes (no config, no keystore): `payouts --rpc-url URL
    --address X` runs (issue 19)."""
    (tmp_path / "deployment.json").write_text(env["dep_file"].read_text())
    res = CliRunner().invoke(cli, ["--home", str(tmp_path), "payouts", "--rpc-url", env["anvil"], "--address",
                                   env["bob"], "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["address"] == env["bob"]
