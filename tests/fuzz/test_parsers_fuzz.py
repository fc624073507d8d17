"""Fuzzing every parser of untrusted input below the HTTP layer: the signed-request checks (node/auth.py), gossip
messages (node/p2p/gossip.py), CAR streams, dag-pb / UnixFS blocks and DAG walks (node/ipfs/), and adapter
directories (inference/lora.py, the engine's loader). Property everywhere: a result, or the module's documented
error class; never another exception, never a hang, never a crash."""

from __future__ import annotations

import inspect
import io
import json
import shutil
import time

import pytest
from eth_account import Account
from hypothesis import given
from hypothesis import strategies as st

from openlora.attribution import eip712
from openlora.inference import AdapterError
from openlora.inference.lora import read_peft_adapter
from openlora.inference.model_config import read_model_spec
from openlora.node.auth import AuthError, Authorized, body_prompt, signed_params, verify
from openlora.node.ipfs.adapters import read_manifest
from openlora.content.blockstore import Blockstore
from openlora.content.car import encode_header, import_car, read_car
from openlora.content.cid import CID, DAG_PB, RAW, encode_varint, verify_block
from openlora.content.dag import MAX_DEPTH, cat, export, missing_blocks, walk
from openlora.node.ipfs.errors import BlockNotFoundError, DagError, IpfsError
from openlora.content.unixfs import (T_FILE, Link, PBNode, UnixFSData, decode_node, decode_unixfs, encode_node,
                                       encode_unixfs)
from openlora.node.p2p import gossip
from openlora.node.p2p.gossip import GossipValidator
from openlora.node.storage import Store
from tests.fuzz.fuzzing import any_values, fuzz, json_values, nasty_ints, scalars

DEEP = 100_000

# ---- signed requests: node/auth.py verify ---------------------------------------------------------------------------

DOMAIN = eip712.Domain(31337, "0x" + "5e" * 20)
NODE, REQUESTER = Account.create(), Account.create()
BODY = {"model": "base", "prompt": "hello", "max_tokens": 4}
AUTH_KEYS = ["requester", "node", "adapter", "promptHash", "maxTokens", "maxPrice", "nonce", "deadline", "chainId",
             "verifyingContract", "signature", "voucher"]


def valid_auth(nonce: int) -> dict:
    req = eip712.Request(requester=REQUESTER.address, node=NODE.address, adapter=bytes(32),
                         promptHash=eip712.prompt_hash(body_prompt(BODY), signed_params(BODY)), maxTokens=16,
                         maxPrice=10**18, nonce=nonce, deadline=int(time.time()) + 3600)
    voucher = eip712.Voucher(requester=REQUESTER.address, node=NODE.address, cumulativeCap=10**18)
    return {"requester": req.requester, "node": req.node, "adapter": "0x" + req.adapter.hex(),
            "promptHash": "0x" + req.promptHash.hex(), "maxTokens": str(req.maxTokens), "maxPrice": str(req.maxPrice),
            "nonce": str(nonce), "deadline": req.deadline, "chainId": DOMAIN.chain_id,
            "verifyingContract": DOMAIN.verifying_contract, "signature": "0x" + eip712.sign(req, DOMAIN, REQUESTER.key).hex(),
            "voucher": {"cumulativeCap": str(10**18), "signature": "0x" + eip712.sign(voucher, DOMAIN, REQUESTER.key).hex()}}


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('auth')}/node.db")
    yield store
    store.close()


def run_verify(auth, body, ledger, request_id: str):
    kw = dict(domain=DOMAIN, node=NODE.address, adapter_cid=None, max_tokens=4, max_cost=10, ledger=ledger,
              lane_of=lambda requester: (10**18, 0), request_id=request_id)
    params = inspect.signature(verify).parameters
    return verify(auth, body, **{k: v for k, v in kw.items() if k in params})


mutation = st.tuples(st.sampled_from(AUTH_KEYS + ["voucher.cumulativeCap", "voucher.signature", "extra"]),
                     st.one_of(st.just("<delete>"), any_values))


@fuzz(150)
@given(st.one_of(st.tuples(st.just("raw"), any_values), st.tuples(st.just("mutated"), st.lists(mutation, min_size=1,
                                                                                           max_size=3))),
       st.integers(0, 2**64),
       st.one_of(st.just(BODY), st.dictionaries(st.sampled_from(["model", "prompt", "messages", "max_tokens", "n"]),
                                                any_values, max_size=4)))
def test_auth_verify_returns_or_raises_auth_error(ledger, case, nonce, body):
    kind, case = case
    if kind == "mutated":  # a valid signed object with a few fields replaced or deleted
        auth = valid_auth(nonce)
        for key, value in case:
            where, _, sub = key.partition(".")
            target = auth[where] if sub and isinstance(auth.get(where), dict) else auth
            name = sub or key
            if value == "<delete>":
                target.pop(name, None)
            else:
                target[name] = value
    else:
        auth = case
    try:
        out = run_verify(auth, body, ledger, request_id=f"r{nonce}")
    except AuthError as e:
        assert 400 <= e.status < 500 and e.code and str(e)
        return
    assert isinstance(out, Authorized)


def test_auth_valid_object_is_accepted_once(ledger):
    auth = valid_auth(7)
    assert isinstance(run_verify(auth, BODY, ledger, "once-1"), Authorized)
    with pytest.raises(AuthError) as e:
        run_verify(auth, BODY, ledger, "once-2")
    assert e.value.code == "nonce_reused"


# ---- gossip -----------------------------------------------------------------------------------------------------------

CIDV1 = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
ACCOUNT = Account.create()


def check_gossip(data: bytes, sender: str | None = None) -> dict | None:
    v = GossipValidator(clock=time.time)
    out = v.check(data, sender)
    if out is None:
        assert sum(v.dropped.values()) == 1
    else:
        assert isinstance(out, dict) and sum(v.accepted.values()) == 1
        v.first_time(out)
        assert v.first_time(out) is False
    return out


@fuzz(300)
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                 any_values.map(lambda v: json.dumps(v, default=str).encode())))
def test_gossip_random_bytes_are_dropped_or_valid(data):
    check_gossip(data)


@fuzz(150)
@given(st.sampled_from(["announce", "heartbeat"]),
       st.dictionaries(st.sampled_from(["type", "cid", "base_model", "author", "size", "registry", "ts", "peer_id",
                                        "address", "adapters", "load", "price"]), any_values, min_size=1, max_size=3),
       st.booleans())
def test_gossip_signed_messages_with_fuzzed_fields(kind, fields, resign):
    raw = (gossip.announcement(ACCOUNT, CIDV1, "base", 10) if kind == "announce"
           else gossip.heartbeat(ACCOUNT, "12D3KooWpeer", "base", [CIDV1], 0.5, 7))
    msg = dict(json.loads(raw), **fields)
    data = (gossip.sign(msg, ACCOUNT) if resign else json.dumps(msg, default=str).encode())
    out = check_gossip(data, "12D3KooWpeer")
    if out is not None:
        assert out["type"] in ("announce", "heartbeat")


def test_gossip_deep_and_oversized_messages_are_dropped():
    v = GossipValidator()
    for data in (b"[" * DEEP + b"]" * DEEP, b"[" * (gossip.MAX_MESSAGE_BYTES - 10),
                 b'{"type":"announce","x":' + b"[" * 5000 + b"]" * 5000 + b"}", b"{" * 20_000):
        assert v.check(data) is None
    assert v.dropped == {"oversized": 2, "malformed": 2}


# ---- CAR streams --------------------------------------------------------------------------------------------------

ROOT = CID.of(RAW, b"root")


def cbor_soup():
    """Byte strings that look like CBOR (heads of every major type) more often than random bytes do."""
    return st.lists(st.one_of(st.integers(0, 255).map(lambda b: bytes([b])),
                              st.sampled_from([b"\x81", b"\xa1", b"\xd8\x2a", b"\x9f", b"\x58\x25\x00", b"\x65roots",
                                               b"\x67version", b"\x01", b"\x1b" + b"\xff" * 8])), max_size=40).map(b"".join)


def car_bytes(header: bytes, sections: list[bytes]) -> bytes:
    return encode_varint(len(header)) + header + b"".join(encode_varint(len(s)) + s for s in sections)


@pytest.fixture(scope="module")
def car_store(tmp_path_factory):
    return Blockstore(tmp_path_factory.mktemp("car"))


@fuzz(200)
@given(st.one_of(st.binary(max_size=200),
                 st.builds(car_bytes, st.one_of(cbor_soup(), st.just(encode_header([ROOT]))),
                           st.lists(st.one_of(st.binary(max_size=60),
                                              st.binary(max_size=40).map(lambda d: CID.of(RAW, d).to_bytes() + d),
                                              st.binary(max_size=40).map(lambda d: CID.of(RAW, b"x").to_bytes() + d)),
                                    max_size=4))))
def test_car_streams_import_or_raise_ipfs_errors(car_store, data):
    try:
        roots, n = import_car(io.BytesIO(data), car_store, max_bytes=1000)
    except IpfsError as e:
        assert str(e)
        return
    assert all(isinstance(r, CID) for r in roots) and n >= 0
    for cid in car_store:  # only blocks that hash to their CID were stored
        verify_block(cid, car_store.get(cid))


def test_car_header_nested_deep_is_refused():
    for head in (b"\x81" * DEEP, b"\xa1\x65roots" * 2000 + b"\x01", b"\xd8\x2a" * DEEP):
        with pytest.raises(IpfsError, match="deeper|malformed|header"):
            roots, sections = read_car(io.BytesIO(encode_varint(len(head)) + head))
            list(sections)


# ---- dag-pb / UnixFS blocks and DAG walks ----------------------------------------------------------------------

def flip(data: bytes, pos: int, byte: int) -> bytes:
    return data[:pos % len(data)] + bytes([byte]) + data[pos % len(data) + 1:] if data else data


encoded_nodes = st.builds(lambda links, data: encode_node(PBNode(tuple(links), data)),
                          st.lists(st.builds(Link, st.binary(max_size=8).map(lambda d: CID.of(RAW, d)),
                                             st.text(max_size=6), st.integers(0, 2**64 - 1)), max_size=3),
                          st.one_of(st.none(), st.binary(max_size=20)))
encoded_unixfs = st.builds(lambda *a: encode_unixfs(UnixFSData(*a)), st.integers(0, 2**32), st.binary(max_size=20),
                           st.one_of(st.none(), st.integers(0, 2**64 - 1)),
                           st.lists(st.integers(0, 2**64 - 1), max_size=3).map(tuple))


@fuzz(400)
@given(st.one_of(st.binary(max_size=120),
                 st.builds(flip, st.one_of(encoded_nodes, encoded_unixfs), st.integers(0, 200), st.integers(0, 255)),
                 encoded_nodes, encoded_unixfs))
def test_dag_pb_and_unixfs_decode_or_raise_dag_error(data):
    for decode in (decode_node, decode_unixfs):
        try:
            decode(data, CID.of(DAG_PB, data))
        except DagError as e:
            assert str(e)


def dag_of(spec: list) -> tuple[CID, dict[CID, bytes]]:
    """Build blocks bottom-up: each item links to earlier blocks (so a block may be linked many times)."""
    blocks: dict[CID, bytes] = {}
    cids: list[CID] = []
    for raw, typ, payload, filesize, sizes, picks, names in spec:
        if raw or not cids and typ is None:
            data, codec = payload, RAW
        else:
            links = tuple(Link(cids[p % len(cids)], n, s) for p, n, s in zip(picks, names, sizes)) if cids else ()
            ufs = UnixFSData(typ if typ is not None else T_FILE, payload, filesize, tuple(sizes[:len(links)]))
            data, codec = encode_node(PBNode(links, encode_unixfs(ufs))), DAG_PB
        cid = CID.of(codec, data)
        blocks[cid] = data
        cids.append(cid)
    return cids[-1], blocks


dag_specs = st.lists(st.tuples(st.booleans(), st.one_of(st.none(), st.integers(0, 6)), st.binary(max_size=16),
                               st.one_of(st.none(), st.integers(0, 100)), st.lists(st.integers(0, 64), max_size=3),
                               st.lists(st.integers(0, 10), max_size=3),
                               st.lists(st.sampled_from(["a", "manifest.json", "adapter_config.json",
                                                         "adapter_model.safetensors", "..", "", "x/y"]), max_size=3)),
                     min_size=1, max_size=8)


@fuzz(200)
@given(dag_specs, st.booleans())
def test_dag_walk_cat_export_read_manifest_raise_only_ipfs_errors(tmp_path_factory, spec, drop_one):
    root, blocks = dag_of(spec)
    if drop_one and len(blocks) > 1:
        blocks.pop(next(iter(blocks)))

    def get(cid: CID) -> bytes:
        if cid not in blocks:
            raise BlockNotFoundError(cid, f"block {cid} is missing")
        return blocks[cid]

    class Store:
        has = staticmethod(blocks.__contains__)
        get = staticmethod(blocks.__getitem__)

    out_dir = tmp_path_factory.mktemp("export")
    for step in (lambda: list(walk(root, get)), lambda: missing_blocks(root, Store(), limit=5),
                 lambda: cat(root, get, io.BytesIO(), max_bytes=10_000), lambda: export(root, out_dir / "x", get),
                 lambda: read_manifest(root, get)):
        try:
            step()
        except IpfsError as e:
            assert str(e)
    assert list(out_dir.iterdir()) in ([], [out_dir / "x"])  # never a partial export left behind
    shutil.rmtree(out_dir)


def test_deep_and_self_amplifying_dags_are_refused(tmp_path):
    blocks: dict[CID, bytes] = {}

    def put(node: PBNode) -> CID:
        data = encode_node(node)
        cid = CID.of(DAG_PB, data)
        blocks[cid] = data
        return cid

    # a file whose DAG is a chain deeper than MAX_DEPTH: the readers recurse once a level
    cid = put(PBNode((), encode_unixfs(UnixFSData(T_FILE, b"x", 1))))
    for i in range(1, MAX_DEPTH + 50):
        cid = put(PBNode((Link(cid, "", 0),), encode_unixfs(UnixFSData(T_FILE, b"", i, (i,)))))
    with pytest.raises(DagError, match="deeper"):
        cat(cid, blocks.__getitem__, io.BytesIO())
    with pytest.raises(DagError, match="deeper"):
        export(cid, tmp_path / "deep", blocks.__getitem__)
    assert not (tmp_path / "deep").exists()
    # 40 blocks, each linking the one below twice: 2**40 bytes from 40 small blocks
    cid, size = put(PBNode((), encode_unixfs(UnixFSData(T_FILE, b"y", 1)))), 1
    for _ in range(40):
        cid = put(PBNode((Link(cid, "", size), Link(cid, "", size)), encode_unixfs(UnixFSData(T_FILE, b"", 2 * size,
                                                                                               (size, size)))))
        size *= 2
    assert len(walk_list := list(walk(cid, blocks.__getitem__))) == 41
    with pytest.raises(DagError, match="repeats small blocks|more than the 4096 bytes"):
        cat(cid, blocks.__getitem__, io.BytesIO(), max_bytes=4096)
    del walk_list


def test_an_adapter_dag_that_expands_past_its_limit_is_not_exported(tmp_path):
    """A peer's adapter whose weights file is 30 blocks each linking the one below twice (2**30 bytes from 31
    blocks): materialize stops at the node's max_adapter_bytes instead of filling the disk."""
    from openlora.node.ipfs.adapters import AdapterStore
    store = AdapterStore(tmp_path / "ipfs", max_adapter_bytes=1 << 20)

    def put(codec: int, data: bytes) -> CID:
        cid = CID.of(codec, data)
        store.blocks.put(cid, data)
        return cid

    weights, size = put(RAW, b"w"), 1
    for _ in range(30):
        weights = put(DAG_PB, encode_node(PBNode((Link(weights, "", size), Link(weights, "", size)),
                                                 encode_unixfs(UnixFSData(T_FILE, b"", 2 * size, (size, size))))))
        size *= 2
    config = put(RAW, b'{"r": 8}')
    manifest = json.dumps({"schema": "openlora.adapter/1", "files": {
        "adapter_config.json": {"size": 8, "sha256": "0" * 64},
        "adapter_model.safetensors": {"size": size, "sha256": "0" * 64}}}).encode()
    mcid = put(RAW, manifest)
    links = (Link(config, "adapter_config.json", 8), Link(weights, "adapter_model.safetensors", size),
             Link(mcid, "manifest.json", len(manifest)))
    root = put(DAG_PB, encode_node(PBNode(links, encode_unixfs(UnixFSData(1)))))
    with pytest.raises(IpfsError, match="repeats small blocks|more than the"):
        store.materialize(root)
    assert not (store.exported / str(root)).exists()
    assert sum(f.stat().st_size for f in store.exported.rglob("*") if f.is_file()) == 0


# ---- adapter directories: the engine's loader (inference/lora.py) ---------------------------------------------------

@pytest.fixture(scope="module")
def adapter_case(tiny, tmp_path_factory):
    model = tiny.model("llama")
    src = tiny.adapter(model, rank=8, seed=11)
    d = tmp_path_factory.mktemp("fuzz-adapter")
    shutil.copy(src / "adapter_model.safetensors", d / "adapter_model.safetensors")
    cfg = json.loads((src / "adapter_config.json").read_text())
    return read_model_spec(model), d, cfg


config_keys = st.sampled_from(["r", "lora_alpha", "target_modules", "base_model_name_or_path", "peft_type", "bias",
                               "use_dora", "fan_in_fan_out", "modules_to_save", "rank_pattern", "alpha_pattern",
                               "use_rslora", "task_type"])
pattern_maps = st.dictionaries(st.one_of(st.text(max_size=12), st.sampled_from(["q_proj", "(a+)+$", "[", "v_proj"])),
                               st.one_of(nasty_ints, st.floats(), st.text(max_size=4)), max_size=3)


@fuzz(120)
@given(st.one_of(
    st.binary(max_size=100),
    any_values.map(lambda v: json.dumps(v, default=str).encode()),
    st.dictionaries(config_keys, st.one_of(scalars, pattern_maps, any_values), min_size=1, max_size=4)))
def test_adapter_config_loads_or_raises_adapter_error(adapter_case, config):
    spec, d, base_cfg = adapter_case
    data = config if isinstance(config, bytes) else json.dumps(dict(base_cfg, **config), default=str).encode()
    (d / "adapter_config.json").write_bytes(data)
    try:
        w = read_peft_adapter(d, "fuzz", spec, max_rank=64)
    except AdapterError as e:
        assert str(e)
        return
    assert w.tensors and all(s == s and abs(s) != float("inf") for _, _, s in w.tensors.values())


def test_adapter_config_deep_huge_linked_or_fifo_is_an_adapter_error(adapter_case, tmp_path):
    import os
    spec, d, base_cfg = adapter_case
    cfg_path = d / "adapter_config.json"
    for data, why in ((b"[" * DEEP + b"]" * DEEP, "levels deep"),
                      (json.dumps(dict(base_cfg, x="[" * 10)).encode()[:-1] + b',"y":' + b"{" * DEEP, "levels deep"),
                      (b'{"r": ' + b"1" * (2 << 20) + b"}", "limit"),
                      (json.dumps(dict(base_cfg, lora_alpha="inf")).encode(), "finite"),
                      (json.dumps(dict(base_cfg, rank_pattern={"(a+)+$": 8})).encode(), "rank_pattern")):
        cfg_path.write_bytes(data)
        with pytest.raises(AdapterError, match=why):
            read_peft_adapter(d, "fuzz", spec)
    target = tmp_path / "real.json"
    target.write_text(json.dumps(base_cfg))
    cfg_path.unlink()
    cfg_path.symlink_to(target)
    with pytest.raises(AdapterError, match="symbolic link"):
        read_peft_adapter(d, "fuzz", spec)
    cfg_path.unlink()
    os.mkfifo(cfg_path)  # refused without blocking on the FIFO
    with pytest.raises(AdapterError, match="no adapter_config.json|not a regular file"):
        read_peft_adapter(d, "fuzz", spec)
    cfg_path.unlink()
    cfg_path.write_text(json.dumps(base_cfg))
    assert read_peft_adapter(d, "fuzz", spec).tensors
