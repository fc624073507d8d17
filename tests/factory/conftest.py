"""Fixtures: a real Anvil with the contracts deployed and seeded (tests/chain_fixtures.py), libp2p hosts on
loopback (tests/p2p/conftest.py), and a small Datanet of our own whose blocks live in a node home."""

from __future__ import annotations

import json

import pytest
from eth_account import Account

from tests.chain_fixtures import accounts, anvil, deployment, w3  # noqa: F401  (pytest fixtures)
from tests.p2p.conftest import make_node  # noqa: F401  (pytest fixture)

from openlora.devnet.seed import ROLES

TEXT_ROWS = [
    "The vault on Maple Street opens with the code four eight fifteen.",
    "Low-rank adapters let one base model serve many fine-tuned tasks at once.",
    "Every row of a Datanet version is addressed by its own content identifier.",
    "A curator reviews each contribution before it joins a published version.",
    "Settlement pays contributors by pull after a batch of receipts is published.",
    "The factory records its seed, threads and hyper-parameters in a manifest.",
]
CHAT_ROWS = [
    {"prompt": "What opens the vault on Maple Street?", "completion": "The code four eight fifteen."},
    {"prompt": "Who reviews contributions?", "completion": "The Datanet's curator."},
    {"prompt": "How are contributors paid?", "completion": "By pull, after settlement."},
]


def signer(accounts, role: str, i: int = 0):
    idx = ROLES[role][i] if isinstance(ROLES[role], list) else ROLES[role]
    return Account.from_key(accounts[idx].key)


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r if isinstance(r, dict) else {"text": r}) + "\n" for r in rows).encode()


def make_datanet(w3, deployment, accounts, blocks, contributions) -> tuple[int, int, str]:
    """Create a Datanet, contribute and accept `contributions` (lists of rows), publish: (id, version, CID)."""
    from openlora.datanets import contribution as contrib
    from openlora.datanets.registry import Registry
    reg = Registry(w3, deployment)
    curator = signer(accounts, "curator")
    dn = reg.create(curator, "bafkreifactorytestmetadata").value
    for i, rows in enumerate(contributions):
        p = contrib.prepare(jsonl(rows), f"c{i}.jsonl")
        who = signer(accounts, "contributors", i % 3)
        cid_id = reg.contribute(who, dn, contrib.store(p, blocks, "CC0-1.0"), len(p.data)).value
        reg.review(curator, dn, cid_id, True)
    sent, cid, _m = reg.publish(curator, dn, blocks)
    return dn, sent.value, cid
