"""The Datanet loop on a real Anvil and a real blockstore: contributor -> curator -> publish -> verify, through the
library (datanets.registry) and the CLI (`openlora-node datanet ...`): duplicates flagged and weightless, weights
on chain equal to those recomputed from content, tampering caught, every refusal one line; pricing reads the
latest version's weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

from openlora.attribution.pricing import contributor_weights
from openlora.content.blockstore import Blockstore
from openlora.content.cid import as_cid
from openlora.datanets import contribution as contrib
from openlora.datanets import manifest as mf
from openlora.datanets.errors import DatanetError, VerificationError
from openlora.datanets.registry import Registry
from openlora.datanets.tokenize import count_tokens
from openlora.devnet.seed import ROLES
from openlora.node.cli import main
from openlora.node.config import DEFAULT_CONFIG_TOML

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "Low-rank adapters let one base model serve many fine-tuned tasks at the same time on one GPU.",
    "A settlement contract pays each contributor by pull after a batch of receipts is published.",
    "Curators review every contribution before it becomes part of a published Datanet version.",
    "Content identifiers make every row of a dataset checkable by anyone who holds the blocks.",
    "Operators earn a share of every request their node serves, settled in batches on chain.",
]
LIGHT_EDIT = TEXTS[1].replace("pays", "rewards")


def jsonl(*texts: str) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def acct(accounts, role: str, i: int = 0):
    idx = ROLES[role][i] if isinstance(ROLES[role], list) else ROLES[role]
    return Account.from_key(accounts[idx].key)


def test_library_loop_weights_verify_and_pricing(w3, deployment, accounts, tmp_path):
    reg, bs = Registry(w3, deployment), Blockstore(tmp_path / "ipfs")
    alice, bob, carol = (acct(accounts, "contributors", i) for i in range(3))
    curator = acct(accounts, "curator")
    dn = reg.create(curator, "bafkreimetadata").value

    def give(who, data, name):
        p = contrib.prepare(data, name)
        return reg.contribute(who, dn, contrib.store(p, bs, "CC-BY-4.0"), len(p.data)).value

    c1 = give(alice, jsonl(TEXTS[0], TEXTS[1]), "alice.jsonl")
    c2 = give(bob, jsonl(TEXTS[0], LIGHT_EDIT, TEXTS[2]), "bob.jsonl")     # exact copy + light edit + new
    c3 = give(carol, b"Spam spam spam.\n\nMore spam.\n", "carol.txt")

    with pytest.raises(DatanetError, match=f"{alice.address} is not the curator of Datanet {dn}"):
        reg.review(alice, dn, c1, True)
    reg.review(curator, dn, c1, True)
    flags = reg.assess(dn, c2, bs.get)
    assert [r.get("duplicate") for r in flags["rows"]] == ["exact", "near", None]
    assert flags["weight"] == count_tokens("words-v1", TEXTS[2])
    reg.review(curator, dn, c2, True)
    reg.review(curator, dn, c3, False)
    with pytest.raises(DatanetError, match="already reviewed \\(rejected\\)"):
        reg.review(curator, dn, c3, True)

    sent, cid, m = reg.publish(curator, dn, bs)
    assert sent.value == 1 and [c["id"] for c in m["contributions"]] == [c1, c2]
    w_alice = count_tokens("words-v1", TEXTS[0]) + count_tokens("words-v1", TEXTS[1])
    v = reg.version(dn)
    assert v.manifest_cid == cid and v.weights == {c1: w_alice, c2: flags["weight"]}
    assert v.total_weight == w_alice + flags["weight"]
    assert 100_000 < sent.gas_used < 400_000
    report = reg.verify(dn, None, bs.get)
    assert report["rows"] == 5 and report["total_weight"] == v.total_weight
    # payouts follow the published weights (derived from content), not the declared sizes
    assert contributor_weights(w3, deployment, dn) == {alice.address: w_alice, bob.address: flags["weight"]}

    # a curator who publishes weights that differ from the manifest is caught against the chain
    fn = reg.c.functions.publishVersion(dn, 2, cid, v.total_weight, [c1, c2], [w_alice - 1, flags["weight"] + 1])
    reg._send(curator, fn, "publishing a forged version")
    with pytest.raises(VerificationError, match=f"contribution {c1} weight: manifest {w_alice}, chain {w_alice - 1}"):
        reg.verify(dn, 2, bs.get)
    assert reg.verify(dn, 1, bs.get)["version"] == 1

    # a tampered row block is caught, naming the row
    row = m["contributions"][1]["rows"][2]["cid"]
    path = bs._path(as_cid(row))
    path.write_bytes(path.read_bytes().replace(b"Curators", b"Kurators"))
    with pytest.raises(VerificationError, match=f"row 2: .*{row}.* corrupt"):
        reg.verify(dn, 1, bs.get)


# ---- the CLI ---------------------------------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path, anvil, deployment, accounts):
    h = tmp_path / "home"
    h.mkdir()
    (h / "config.toml").write_text(DEFAULT_CONFIG_TOML.replace('rpc_url = "http://127.0.0.1:8545"',
                                                               f'rpc_url = "{anvil.url}"'))
    deployment.write(h / "deployment.json")
    keys = tmp_path / "keys"
    keys.mkdir()
    for role, i in (("curator", 0), ("contributors", 0), ("contributors", 1), ("contributors", 2)):
        a = acct(accounts, role, i)
        (keys / f"{role}{i}").write_text("0x" + bytes(a.key).hex())
    (keys / "broke").write_text("0x" + "42" * 32)   # an account that never held ETH
    return h


class Cli:
    def __init__(self, home: Path, capsys):
        self.home, self.capsys = home, capsys

    def __call__(self, *args: str, key: str | None = None) -> tuple[int, str, str]:
        argv = ["--home", str(self.home), "datanet", *args]
        if key:
            argv += ["--key-file", str(self.home.parent / "keys" / key)]
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def json(self, *args: str, key: str | None = None) -> dict:
        code, out, err = self(*args, "--json", key=key)
        assert code == 0, err
        return json.loads(out)


def test_cli_loop_and_refusals(home, capsys, tmp_path, deployment, w3):
    cli = Cli(home, capsys)
    dn = cli.json("create", "--name", "test", key="curator0")["datanet_id"]
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.jsonl").write_bytes(jsonl(TEXTS[0], TEXTS[1], TEXTS[3]))
    (files / "b.md").write_bytes(f"# Notes\n\n{TEXTS[0]}\n\n{LIGHT_EDIT}\n\n{TEXTS[4]}\n".encode())
    (files / "c.txt").write_bytes(b"buy now buy now buy now\r\n")
    (files / "bin.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    c1 = cli.json("contribute", str(dn), str(files / "a.jsonl"), key="contributors0")
    assert c1["rows"] == 3 and c1["tokens"] == sum(count_tokens("words-v1", t) for t in (TEXTS[0], TEXTS[1], TEXTS[3]))
    c2 = cli.json("contribute", str(dn), str(files / "b.md"), "--license", "CC0-1.0", key="contributors1")
    c3 = cli.json("contribute", str(dn), str(files / "c.txt"), key="contributors2")

    # refusals: one line each, nothing sent
    count_before = Registry(w3, deployment).datanet(dn).contribution_count
    code, _, err = cli("contribute", str(dn), str(files / "bin.txt"), key="contributors0")
    assert code == 1 and err.strip() == "error: bin.txt: a binary file (NUL byte at offset 8); contribute UTF-8 " \
                                        "text, Markdown or JSONL"
    assert Registry(w3, deployment).datanet(dn).contribution_count == count_before
    code, _, err = cli("contribute", "999", str(files / "a.jsonl"), key="contributors0")
    assert code == 1 and err.count("\n") == 1 and "Datanet 999 does not exist on DatanetRegistry" in err
    code, _, err = cli("review", str(dn), str(c1["contribution_id"]), "--accept", "--reason", "mine",
                       key="contributors0")
    assert code == 1 and err.count("\n") == 1 and "is not the curator of Datanet" in err
    code, _, err = cli("contribute", str(dn), str(files / "a.jsonl"), key="broke")
    assert code == 1 and err.count("\n") == 1 and "has 0 wei" in err and "fund it first" in err

    pend = {p["id"]: p for p in cli.json("pending", str(dn))["pending"]}
    assert pend[c1["contribution_id"]]["exact_duplicates"] == 0
    code, out, _ = cli("review", str(dn), str(c1["contribution_id"]), "--accept", "--reason", "clean",
                       key="curator0")
    assert code == 0 and "accepted contribution" in out
    pend = {p["id"]: p for p in cli.json("pending", str(dn))["pending"]}
    b = pend[c2["contribution_id"]]
    assert (b["rows"], b["exact_duplicates"], b["near_duplicates"]) == (4, 1, 1)
    code, out, _ = cli("pending", str(dn))
    assert "FLAGGED: 1 exact, 1 near duplicate row(s)" in out
    assert cli.json("review", str(dn), str(c2["contribution_id"]), "--accept", "--reason", "new rows count",
                    key="curator0")["decision"] == "accepted"
    cli.json("review", str(dn), str(c3["contribution_id"]), "--reject", "--reason", "spam", key="curator0")

    pub = cli.json("publish", str(dn), key="curator0")
    expect_b = count_tokens("words-v1", "# Notes") + count_tokens("words-v1", TEXTS[4])
    assert {p["id"]: p["weight"] for p in pub["contributions"]} == {
        c1["contribution_id"]: c1["tokens"], c2["contribution_id"]: expect_b}
    assert pub["total_weight"] == c1["tokens"] + expect_b and pub["version"] == 1

    ver = cli.json("verify", str(dn))
    assert ver["ok"] and ver["manifest_cid"] == pub["manifest_cid"] and ver["rows"] == 7
    code, out, _ = cli("verify", str(dn), "--version", "1")
    assert code == 0 and "verified" in out and f"total weight {pub['total_weight']:,} tokens (words-v1)" in out
    shown = cli.json("show", str(dn))
    assert [c["status"] for c in shown["contributions"]] == ["accepted", "accepted", "rejected"]
    assert shown["contributions"][2]["reason"] == "spam" and shown["versions"][0]["total_weight"] == pub["total_weight"]
    rows = cli.json("show", str(dn), "--contribution", str(c2["contribution_id"]))
    assert rows["license"] == "CC0-1.0" and rows["rows"][0]["text"] == "# Notes"
    assert any(d["id"] == dn and d["versions"] == 1 for d in cli.json("list")["datanets"])

    # tamper with a row in the home's blockstore: verify fails in one line naming it
    row = mf.read(pub["manifest_cid"], Blockstore(home / "ipfs").get)["contributions"][0]["rows"][2]["cid"]
    path = Blockstore(home / "ipfs")._path(as_cid(row))
    path.write_bytes(path.read_bytes()[:-3] + b"XX}")
    code, _, err = cli("verify", str(dn))
    assert code == 1 and err.count("\n") == 1 and row in err and "corrupt" in err

    # wrong network: a deployment file for another chain id
    dep = json.loads((home / "deployment.json").read_text())
    dep["chain_id"] = 1
    (home / "deployment.json").write_text(json.dumps(dep))
    code, _, err = cli("list")
    assert code == 1 and err.count("\n") == 1 and "has chain id 31337, the deployment file says 1" in err


def test_cli_entry_point_and_no_registry_at_address(home, deployment):
    dep = json.loads((home / "deployment.json").read_text())
    dep["addresses"]["DatanetRegistry"] = "0x" + "11" * 20
    (home / "deployment.json").write_text(json.dumps(dep))
    res = subprocess.run([sys.executable, "-m", "openlora.node.cli", "--home", str(home), "datanet", "list"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "no DatanetRegistry at 0x1111111111111111111111111111111111111111 on chain 31337" in res.stderr
