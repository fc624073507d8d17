"""The devnet's demo Datanet is real: seeded through datanets/ (a few hundred readable rows from three contributors,
one contribution rejected, one near duplicate flagged, version 1 published with weights from content), and after
`openlora-node devnet up` in a node home, `openlora-node datanet verify` and `show` work there at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from openlora.attribution.pricing import contributor_weights
from openlora.datanets import manifest as mf
from openlora.datanets.registry import Registry
from openlora.devnet.chain import free_port
from openlora.devnet.seed import MemoryBlocks, seed_datanet

REPO = Path(__file__).resolve().parents[2]


def test_seeded_datanet_is_published_from_content(w3, deployment):
    extra = deployment.extra
    dn, cs, v = extra["datanet_id"], extra["contributions"], extra["datanet_version"]
    assert sum(c["rows"] for c in cs) >= 250 and len({c["contributor"] for c in cs}) >= 3
    assert [c["status"] for c in cs].count("rejected") == 1 and all(c["reason"] for c in cs)
    reg = Registry(w3, deployment)
    onchain = reg.version(dn)
    assert (onchain.version, onchain.manifest_cid, onchain.total_weight) == (1, v["manifest_cid"], v["total_weight"])
    assert onchain.weights == {c["id"]: c["weight"] for c in cs if c["status"] == "accepted"}
    assert all(c["weight"] > 0 for c in cs if c["status"] == "accepted")
    # payouts follow the published weights
    by_who: dict[str, int] = {}
    for c in cs:
        if c["status"] == "accepted":
            by_who[c["contributor"]] = by_who.get(c["contributor"], 0) + c["weight"]
    assert contributor_weights(w3, deployment, dn) == by_who

    # the same seeding again (a second Datanet on this chain), timed, with its blocks kept to inspect
    blocks = MemoryBlocks()
    t0 = time.perf_counter()
    again = seed_datanet(w3, deployment, blocks)
    assert time.perf_counter() - t0 < 10
    m = mf.verify(again["datanet_version"]["manifest_cid"], blocks.get)
    flags = [r for c in m["contributions"] for r in c["rows"] if "duplicate" in r]
    assert [f["duplicate"] for f in flags] == ["near"] and flags[0]["similarity_bps"] >= 6000
    assert m["total_weight"] == v["total_weight"]           # content alone decides the weights


def _node(home: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openlora.node.cli", "--home", str(home), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_devnet_up_then_datanet_verify_and_show_in_the_home(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("devnet-test-password\n")
    assert _node(tmp_path, "init", "--password-file", str(pw)).returncode == 0
    try:
        up = _node(tmp_path, "devnet", "up", "--port", str(free_port()))
        assert up.returncode == 0, up.stderr
        assert "rejected, 1 duplicate row(s) flagged" in up.stdout and "published version 1 of Datanet 1" in up.stdout
        ver = _node(tmp_path, "datanet", "verify", "1", "--json")
        assert ver.returncode == 0, ver.stderr
        got = json.loads(ver.stdout)
        assert got["ok"] and got["version"] == 1 and got["rows"] >= 250 and got["contributions"] == 4
        shown = json.loads(_node(tmp_path, "datanet", "show", "1", "--json").stdout)
        rejected = [c for c in shown["contributions"] if c["status"] == "rejected"]
        assert len(rejected) == 1 and rejected[0]["reason"].startswith("spam")
        roots = json.loads(next((tmp_path / "ipfs" / "roots").glob(f"{got['manifest_cid']}.json")).read_text())
        assert roots["kind"] == "datanet-version" and roots["datanet_id"] == 1
    finally:
        _node(tmp_path, "devnet", "down")
