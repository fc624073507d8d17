"""The factory's parsers of untrusted input, attacked: factory-manifest.json read out of someone's adapter (size,
depth, encodings, types), the hyper-parameters it claims, and Datanet rows from blocks (not JSON, wrong shapes,
deep nesting). Every refusal is a FactoryInputError with one line; nothing else escapes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openlora.content.importer import add_bytes
from openlora.datanets.contribution import canonical_json
from openlora.datanets.manifest import MANIFEST_FORMAT
from openlora.devnet.seed import MemoryBlocks
from openlora.factory.api import reproduce
from openlora.factory.config import TrainConfig
from openlora.factory.errors import FactoryInputError
from openlora.factory.output import MAX_FACTORY_MANIFEST, SCHEMA, read_factory_manifest
from openlora.factory.rows import records_from_version
from tests.fuzz.fuzzing import any_values, fuzz

GOOD = {"schema": SCHEMA, "hyperparameters": TrainConfig().as_dict(), "base": {}, "environment": {}, "rows": {}}


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("data, msg", [
    (b"{" + b" " * MAX_FACTORY_MANIFEST + b"}", "bytes"),
    (b"[" * 100 + b"]" * 100, "nest"),
    (b'{"schema": "\xff\xfe"}', "UTF-8"),
    (b'{"schema": "\\ud800"}', "surrogate"),
    (b'{"x": NaN}', "NaN"),
    (b"", "not acceptable JSON"),
    (b"[]", "not a openlora.factory/1 factory manifest"),
    (json.dumps({"schema": "other/1"}).encode(), "not a openlora.factory/1 factory manifest"),
    (json.dumps({**GOOD, "hyperparameters": [1]}).encode(), "'hyperparameters' is missing or not an object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "base"}).encode(), "'base' is missing"),
])
def test_factory_manifest_refusals(data, msg):
    with pytest.raises(FactoryInputError) as e:
        read_factory_manifest(data, "adapter bafyX")
    assert msg.lower() in one_line(e).lower()


@fuzz(150)
@given(st.one_of(st.binary(max_size=300), any_values.map(lambda v: json.dumps(v, allow_nan=True).encode())))
def test_factory_manifest_fuzz_only_refuses_cleanly(data):
    try:
        m = read_factory_manifest(data, "fuzz")
    except FactoryInputError as e:
        assert "\n" not in str(e)
    else:
        assert m["schema"] == SCHEMA


@pytest.mark.parametrize("hp, msg", [
    ({**TrainConfig().as_dict(), "dropout": 0.1}, "unknown hyper-parameter(s): dropout"),
    ({**TrainConfig().as_dict(), "rank": "8"}, "rank must be an integer"),
    ({**TrainConfig().as_dict(), "lr": None}, "lr must be a finite number"),
    ({**TrainConfig().as_dict(), "targets": [1, 2]}, "targets must be a list of module names"),
    ({**TrainConfig().as_dict(), "threads": 10**9}, "threads must be 1..1024"),
    ([], "hyper-parameters must be an object"),
])
def test_claimed_hyperparameters_are_checked(hp, msg):
    with pytest.raises(FactoryInputError) as e:
        TrainConfig.from_dict(hp)
    assert msg in one_line(e)


@fuzz(150)
@given(any_values)
def test_claimed_hyperparameters_fuzz(hp):
    try:
        TrainConfig.from_dict(hp)
    except FactoryInputError as e:
        assert "\n" not in str(e)
    except TypeError as e:     # must not happen: every shape is a FactoryInputError
        raise AssertionError(f"TypeError escaped: {e}") from None


def test_reproduce_refuses_a_manifest_with_a_bad_recipe_before_training(tiny):
    from openlora.factory.output import base_identity
    m = {**GOOD, "base": base_identity(tiny.model()), "hyperparameters": {"rank": 0}}
    with pytest.raises(FactoryInputError) as e:
        reproduce(m, [], tiny.model())
    assert "rank must be 1..256, got 0" in one_line(e)


def version(blocks: MemoryBlocks, rows: list[bytes], contributions=None) -> str:
    """A version manifest naming `rows` (raw blocks, stored as they are) in one contribution."""
    cids = [str(add_bytes(r, blocks.put_trusted).cid) for r in rows]
    m = {"format": MANIFEST_FORMAT, "chain": {"chain_id": 1, "registry": "0x"}, "datanet_id": 1, "version": 1,
         "tokenizer": "words-v1", "dedup": {}, "total_weight": 0,
         "contributions": contributions if contributions is not None else
         [{"id": 1, "contributor": "0x", "cid": "bafy", "license": "CC0-1.0", "data_format": "jsonl", "weight": 0,
           "rows": [{"cid": c, "tokens": 1} for c in cids]}]}
    return str(add_bytes(canonical_json(m), blocks.put_trusted).cid)


def test_rows_from_a_version_in_order_without_duplicates():
    blocks = MemoryBlocks()
    rows = [canonical_json({"text": "b"}), canonical_json({"prompt": "p", "completion": "c"})]
    cids = [str(add_bytes(r, blocks.put_trusted).cid) for r in rows + [canonical_json({"text": "a"})]]
    contribs = [{"id": 2, "rows": [{"cid": cids[2], "tokens": 1}]},
                {"id": 1, "rows": [{"cid": cids[0], "tokens": 1}, {"cid": cids[1], "tokens": 1},
                                   {"cid": cids[0], "tokens": 1, "duplicate": "exact"}]}]
    _m, recs = records_from_version(version(blocks, [], contribs), blocks.get)
    assert [r.as_dict() for r in recs] == [{"text": "b"}, {"prompt": "p", "completion": "c"}, {"text": "a"}]
    assert [r.cid for r in recs] == [cids[0], cids[1], cids[2]]


@pytest.mark.parametrize("row, msg", [
    (b"not json", "not a JSON row"),
    (b"[1, 2]", "a row is a string"),
    (b'{"text": 5}', "\"text\" must be a string"),
    (b'{"text": "a", "more": "b"}', "a row is {\"text\"}"),
    (b'{"text": ' + b"[" * 50 + b"]" * 50 + b"}", "not a JSON row"),
    (b'{"text": "\xff"}', "not a JSON row"),
    (b'{"text": "   "}', "the row is empty"),
])
def test_hostile_rows_are_refused_in_one_line(row, msg):
    blocks = MemoryBlocks()
    with pytest.raises(FactoryInputError) as e:
        records_from_version(version(blocks, [row]), blocks.get)
    assert msg in one_line(e) and "contribution #1 row 0" in str(e.value)


@pytest.mark.parametrize("contribs, msg", [
    ("nope", "is malformed"),
    ([{"id": "x", "rows": []}], "is malformed"),
    ([{"id": 1, "rows": [{"nocid": 1}]}], "is malformed"),
    ([], "has no rows to train on"),
])
def test_malformed_versions_are_refused(contribs, msg):
    blocks = MemoryBlocks()
    with pytest.raises(FactoryInputError) as e:
        records_from_version(version(blocks, [], contribs), blocks.get)
    assert msg in one_line(e)


def test_a_row_missing_from_the_blockstore_is_one_line():
    blocks = MemoryBlocks()
    cid = version(blocks, [], [{"id": 1, "rows": [{"cid": str(add_bytes(b'{"text":"gone"}').cid)}]}])
    with pytest.raises(FactoryInputError) as e:
        records_from_version(cid, blocks.get)
    assert "cannot be read from the blockstore" in one_line(e)
