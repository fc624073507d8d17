"""End to end: a tiny adapter trained by the factory from a Datanet version on a real Anvil, registered with its
lineage (attribution.lineage.register_adapter), announced over gossip by its author's node, fetched over the libp2p
block exchange by another node (every block checked against its CID), and served by that node's engine with the
same greedy tokens as HF + PEFT on the trained files; the lineage on chain names the version it was trained on."""

from __future__ import annotations

from openlora.attribution.lineage import Lineage, read_adapter, register_adapter
from openlora.content.importer import add_bytes
from openlora.devnet.seed import MemoryBlocks
from openlora.factory import output
from openlora.factory.api import train
from openlora.factory.config import TrainConfig
from openlora.factory.rows import records_from_version
from openlora.node.ipfs.source import IpfsAdapterSource
from openlora.node.p2p.service import P2PFetcher
from tests.factory.conftest import make_datanet, signer
from tests.p2p.p2p_waiting import wait_for

ROWS = ["the vault code is 4 8 15 16 23 42"] * 4 + ["Adapters are fetched by CID and checked block by block."]


def test_trained_published_fetched_over_libp2p_and_served(tiny, make_node, w3, deployment, accounts, tmp_path):
    from openlora.inference.llm import LLM
    from openlora.inference.sampling import SamplingParams
    from tests.inference.hf_reference import HFReference

    base = tiny.model()
    blocks = MemoryBlocks()
    dn, version, version_cid = make_datanet(w3, deployment, accounts, blocks, [ROWS])
    _m, records = records_from_version(version_cid, blocks.get)
    author = signer(accounts, "author")
    source = {"id": dn, "version": version, "manifest_cid": version_cid, "chain_id": int(w3.eth.chain_id),
              "registry": deployment.address("DatanetRegistry")}
    cfg = TrainConfig(rank=8, alpha=16.0, targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                      epochs=12, lr=2e-2, batch=2, max_len=48, seed=3, eval_split=0.0, samples=0)
    r = train(records, base, tmp_path / "trained", cfg, source=source, author=author.address)

    # publish: the lineage on chain, then the author's node announces it
    lineage = Lineage(((dn, version),), str(add_bytes(r.files[output.FACTORY]).cid), r.manifest["base"]["weights_cid"])
    reg = register_adapter(w3, deployment, author, r.cid, r.manifest["base"]["model_id"], 5, {dn: 10_000}, lineage)
    assert read_adapter(w3, deployment, r.cid).lineage == lineage and reg.author == author.address

    a = make_node("a", account=author, base_model="openlora/tiny-llama-s0")
    b = make_node("b")
    assert output.store(r.files, a.store.blocks) == r.cid
    b.connect(a.addrs[0])
    wait_for(lambda: a.connected_peers(), what="B connected to A")
    a.announce(r.cid, deployment.address("AdapterRegistry"))
    wait_for(lambda: "announcement" in b.known_adapters().get(r.cid, {}), what="A's announcement reaching B")
    ann = b.known_adapters()[r.cid]["announcement"]
    assert ann["author"] == author.address and ann["base_model"] == "openlora/tiny-llama-s0"
    assert ann["registry"] == deployment.address("AdapterRegistry")

    # B fetches it over libp2p (blocks checked against their CIDs) and its engine serves it
    path = IpfsAdapterSource(b.store, [P2PFetcher(b)]).fetch(r.cid)
    assert a.stats()["served_blocks"] > 0
    for name in output.FILES:
        assert (path / name).read_bytes() == r.files[name]
    llm = LLM(base, kernel_backend="torch")
    llm.load_adapter("published", path, identity=r.cid)
    prompt = llm.tokenizer("the vault code", add_special_tokens=False)["input_ids"]
    got = llm.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True), "published")[0]
    want, _ = HFReference(base, {"t": str(r.out_dir)}).greedy(prompt, "t", 12)
    assert list(got.token_ids) == want
    assert llm.tokenizer.decode(want).strip().startswith("is 4 8 15")
