"""attribution.lineage on a real Anvil: registering adapters with and without lineage, reading them back, and every
refusal as one line (argument checks before any transaction, the contract's custom errors decoded)."""

from __future__ import annotations

import itertools

import pytest
from eth_account import Account

from openlora.attribution import lineage as L
from openlora.attribution.pricing import adapter_terms
from openlora.content.importer import add_bytes
from openlora.devnet.seed import ROLES

_n = itertools.count()


def fresh_cid() -> str:
    return str(add_bytes(f"adapter {next(_n)} of test_lineage".encode()).cid)


@pytest.fixture(scope="module")
def author(accounts):
    return Account.from_key(accounts[ROLES["author"]].key)


@pytest.fixture(scope="module")
def demo(deployment):
    x = deployment.extra
    return int(x["datanet_id"]), int(x["datanet_version"]["version"])


def _lineage(demo, **kw):
    d, v = demo
    args = {"datanet_versions": {d: v}, "manifest_cid": str(add_bytes(b"manifest").cid),
            "base_weights_cid": str(add_bytes(b"base weights").cid)}
    args.update(kw)
    return L.Lineage(**args)


def test_register_with_lineage_and_read_it_back(w3, deployment, author, demo):
    cid = fresh_cid()
    lin = _lineage(demo)
    r = L.register_adapter(w3, deployment, author, cid, "smollm2-135m-instruct", 5, {demo[0]: 10_000}, lin)
    assert r.cid == cid and r.author == author.address and r.lineage == lin
    assert r.adapter_id == "0x" + deployment.contract(w3, "AdapterRegistry").functions.adapterIdOf(cid).call().hex()
    rec = L.read_adapter(w3, deployment, cid)
    assert (rec.author, rec.price_per_token, rec.base_model, rec.retired) == (author.address, 5,
                                                                             "smollm2-135m-instruct", False)
    assert rec.datanet_weights == ((demo[0], 10_000),)
    assert L.read_lineage(w3, deployment, cid) == lin
    assert lin.version_of(demo[0]) == demo[1]
    # the event carries the lineage
    logs = deployment.contract(w3, "AdapterRegistry").events.AdapterLineage().get_logs(
        from_block=r.block, to_block=r.block)
    assert len(logs) == 1
    ev = logs[0]["args"]
    assert (list(ev["datanetIds"]), list(ev["datanetVersions"]), ev["manifestCid"], ev["baseWeightsCid"]) == \
        ([demo[0]], [demo[1]], lin.manifest_cid, lin.base_weights_cid)
    # pricing (positional reader of getAdapter) still reads the same terms
    terms = adapter_terms(w3, deployment, cid)
    assert (terms.author, terms.price_per_token, terms.datanet_weights) == (author.address, 5, ((demo[0], 10_000),))


def test_register_without_lineage(w3, deployment, author, demo):
    cid = fresh_cid()
    r = L.register_adapter(w3, deployment, author, cid, "tiny-llama", 0, [(demo[0], 10_000)])
    assert r.lineage is None and r.gas_used > 0
    assert L.read_lineage(w3, deployment, cid) is None
    assert L.read_adapter(w3, deployment, cid).datanet_weights == ((demo[0], 10_000),)
    assert not deployment.contract(w3, "AdapterRegistry").functions.hasLineage(bytes.fromhex(r.adapter_id[2:])).call()


def _refused(w3, deployment, author, match, *args, **kw):
    block = w3.eth.block_number
    nonce = w3.eth.get_transaction_count(author.address)
    with pytest.raises(L.LineageError, match=match) as e:
        L.register_adapter(w3, deployment, author, *args, **kw)
    assert "\n" not in str(e.value)
    assert w3.eth.get_transaction_count(author.address) == nonce, "nothing was sent"
    assert w3.eth.block_number == block
    return str(e.value)


def test_chain_refusals_are_decoded(w3, deployment, author, demo):
    d, v = demo
    cid = fresh_cid()
    _refused(w3, deployment, author, rf"Datanet 999 does not exist in DatanetRegistry 0x", cid, "b", 1,
             {999: 10_000})
    _refused(w3, deployment, author, rf"Datanet {d} has no published version {v + 1} \(it has versions 1\.\.{v}\)",
             cid, "b", 1, {d: 10_000}, _lineage(demo, datanet_versions={d: v + 1}))
    L.register_adapter(w3, deployment, author, cid, "b", 1, {d: 10_000})
    msg = _refused(w3, deployment, author, rf"adapter {cid} is already registered", cid, "b", 1, {d: 10_000})
    assert author.address in msg
    _refused(w3, deployment, author, "already registered", cid, "b", 1, {d: 10_000}, _lineage(demo))


def test_a_datanet_without_a_version(w3, deployment, accounts, author):
    from openlora.datanets.registry import Registry
    curator = Account.from_key(accounts[ROLES["curator"]].key)
    new = Registry(w3, deployment).create(curator, str(add_bytes(b"empty datanet").cid)).value
    _refused(w3, deployment, author, rf"Datanet {new} has no published version 1 \(it has published no version yet\)",
             fresh_cid(), "b", 1, {new: 10_000}, L.Lineage({new: 1}, str(add_bytes(b"m").cid),
                                                           str(add_bytes(b"b").cid)))


def test_a_poor_account_is_told_to_fund_itself(w3, deployment, demo):
    poor = Account.create()
    _refused(w3, deployment, poor, rf"account {poor.address} has 0 wei; .* fund it first", fresh_cid(), "b", 1,
             {demo[0]: 10_000})


@pytest.mark.parametrize("weights, match", [
    ({}, "no Datanet given"),
    ({1: 5_000}, "sum to 5000 bps; they must sum to exactly 10000"),
    ({1: 6_000, 2: 4_001}, "sum to 10001 bps"),
    ({1: 10_001}, "more than 10000"),
    ({1: 0, 2: 10_000}, "bps 0 of Datanet 1 is out of range"),
    ({0: 10_000}, "Datanet id 0 is out of range"),
    ({-1: 10_000}, "Datanet id -1 is out of range"),
    ({1: True}, "not a .* pair of whole numbers"),
    ({1: 10_000.0}, "not a .* pair of whole numbers"),
    ({"1": 10_000}, "not a .* pair of whole numbers"),
    ([(1, 5_000), (1, 5_000)], "Datanet 1 is named twice"),
    ([(1, 5_000, 3)], "not a .* pair"),
    ({i: 1 for i in range(1, 18)}, "17 Datanets, at most 16"),
    (7, "must be .* pairs or a mapping"),
])
def test_bad_weights_refused_before_the_chain(w3, deployment, author, weights, match):
    _refused(w3, deployment, author, match, fresh_cid(), "b", 1, weights)


@pytest.mark.parametrize("cid, base, price, match", [
    ("", "b", 1, "adapter CID is empty"),
    (None, "b", 1, "adapter CID is empty"),
    (b"bafy", "b", 1, "must be a string, not bytes"),
    ("not-a-cid", "b", 1, "is not a CID"),
    ("b" + "a" * 300, "b", 1, "too long"),
    ("BAFKREIGH2AKISCAILDCQABSYG3DFR6CHU3FGPREGIYMSCK7E7AQA4S52ZY", "b", 1, "canonical form"),
    ("CID", "", 1, "base model id is empty"),
    ("CID", "  ", 1, "base model id is empty"),
    ("CID", "x" * 300, 1, "at most 256 characters"),
    ("CID", "bad\nname", 1, "printable"),
    ("CID", "b", -1, "price per token -1 must be"),
    ("CID", "b", 1.5, "must be a whole number"),
    ("CID", "b", 2**256, "must be a whole number"),
    ("CID", "b", True, "must be a whole number"),
])
def test_bad_arguments_refused_before_the_chain(w3, deployment, author, demo, cid, base, price, match):
    cid = fresh_cid() if cid == "CID" else cid
    _refused(w3, deployment, author, match, cid, base, price, {demo[0]: 10_000})


def test_bad_lineage_refused(w3, deployment, author, demo):
    d, v = demo
    m, b = str(add_bytes(b"m").cid), str(add_bytes(b"b").cid)
    for kw, match in [({"datanet_versions": {d: 0}}, f"version 0 of Datanet {d} is out of range"),
                      ({"datanet_versions": {}}, "no Datanet given"),
                      ({"manifest_cid": ""}, "manifest CID is empty"),
                      ({"manifest_cid": "Qmnope"}, "manifest CID 'Qmnope' is not a CID"),
                      ({"base_weights_cid": ""}, "base weights CID is empty")]:
        with pytest.raises(L.LineageError, match=match):
            L.Lineage(**{"datanet_versions": {d: v}, "manifest_cid": m, "base_weights_cid": b, **kw})
    _refused(w3, deployment, author, r"the lineage names Datanets \[1, 2\], the weights name \[1\]", fresh_cid(),
             "b", 1, {1: 10_000}, L.Lineage({1: 1, 2: 1}, m, b))
    _refused(w3, deployment, author, "lineage must be a Lineage", fresh_cid(), "b", 1, {d: 10_000},
             {"datanet_versions": {d: v}})


def test_read_unknown_adapter(w3, deployment):
    cid = fresh_cid()
    with pytest.raises(L.LineageError, match=f"adapter {cid} is not registered in AdapterRegistry 0x"):
        L.read_lineage(w3, deployment, cid)
    with pytest.raises(L.LineageError, match="is not a CID"):
        L.read_adapter(w3, deployment, "nope")


def test_revert_reason_decoding_of_odd_data():
    from openlora.attribution import artifacts
    abi = artifacts.load("AdapterRegistry").abi
    sel = bytes.fromhex("57c64d8c")   # UnknownDatanetVersion(uint256,uint256)
    ok = sel + (3).to_bytes(32, "big") + (9).to_bytes(32, "big")
    assert L.revert_reason(abi, "0x" + ok.hex()) == ("UnknownDatanetVersion", {"datanetId": 3, "version": 9})
    assert L.revert_reason(abi, {"data": ok}) == ("UnknownDatanetVersion", {"datanetId": 3, "version": 9})
    assert L.revert_reason(abi, "0x" + sel.hex() + "00") == ("UnknownDatanetVersion", {})   # truncated args
    for junk in (None, "", "0x", "0xzz", "0x1234", 12, "0x" + "ff" * 40, [1]):
        assert L.revert_reason(abi, junk) is None


def test_lineage_values_are_normalised():
    m, b = str(add_bytes(b"m").cid), str(add_bytes(b"b").cid)
    assert L.Lineage({2: 1, 1: 3}, m, b).datanet_versions == ((1, 3), (2, 1))
    assert L.Lineage([(2, 1), (1, 3)], m, b) == L.Lineage({1: 3, 2: 1}, m, b)
    assert L.Lineage({1: 1}, m, b).version_of(2) is None


def test_fuzz_arguments_and_revert_data_never_escape_as_other_errors():
    """Any value in any argument is a LineageError (or accepted), never another exception; any revert data
    decodes to a known error or None."""
    from hypothesis import given
    from hypothesis import strategies as st

    from openlora.attribution import artifacts
    from tests.fuzz.fuzzing import any_values, fuzz

    abi = artifacts.load("AdapterRegistry").abi
    selectors = [bytes.fromhex(s) for s in ("57c64d8c", "9b7e7a0e", "00000000")]

    @fuzz(40)
    @given(any_values, any_values, any_values, any_values)
    def lineage(versions, manifest, base, weights):
        try:
            lin = L.Lineage(versions, manifest, base)
            assert all(v >= 1 for _, v in lin.datanet_versions)
        except L.LineageError:
            pass
        try:
            pairs = L._weights(weights)
            assert sum(w for _, w in pairs) == L.BPS
        except L.LineageError:
            pass

    @fuzz(100)
    @given(st.sampled_from(selectors), st.binary(max_size=200))
    def revert(selector, rest):
        got = L.revert_reason(abi, "0x" + (selector + rest).hex())
        assert got is None or isinstance(got[0], str) and isinstance(got[1], dict)

    lineage()
    revert()
