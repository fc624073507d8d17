"""Demo data for a fresh devnet: funded accounts, a real demo Datanet, a node and a requester deposit.

What it does: `seed(w3, dep)` mints the devnet token to the demo accounts; builds the demo Datanet through the same
functions the `openlora-node datanet` commands use (datanets.contribution and datanets.registry): curated by account
7, five contributions from accounts 4-6 (devnet/demo_texts.py: about 280 rows of notes on LoRA, content addressing,
Ethereum and attribution, written for the project), four accepted (one holding a near duplicate of an earlier row,
flagged and weightless), one rejected as spam, and version 1 published with weights computed from content. It then
registers account 1 as a demo node and deposits for requester account 2 into its lane to that node. Returns what
it created (stored in the deployment's `extra`). With `home`, the blocks go to `<home>/ipfs` (the version recorded as
a "datanet-version" root, so a node on that home serves and provides it, and `datanet verify` works at once) and the
review reasons to `<home>/datanets/reviews.json`; without, they are kept in memory (tests).
What it does not do: register adapters (they need real adapter CIDs from the adapter store) or run a node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from openlora.attribution.deployment import Deployment
from openlora.content.cid import as_cid
from openlora.content.errors import BlockNotFoundError
from openlora.content.importer import add_bytes
from openlora.devnet.deploy import dev_accounts, send

TOKEN = 10**18  # the devnet token has 18 decimals
FUND_PER_ACCOUNT = 1_000_000 * TOKEN
REQUESTER_DEPOSIT = 10_000 * TOKEN

ROLES = {"deployer": 0, "node": 1, "requester": 2, "requester2": 3, "contributors": [4, 5, 6], "curator": 7,
         "author": 8, "protocol": 9}

DEMO_METADATA = {"name": "demo-datanet", "description": "Short factual notes on LoRA, content addressing, Ethereum "
                 "and attribution, written for the OpenLoRA devnet demo.", "license": "CC0-1.0"}


def raw_cid(data: bytes) -> str:
    """The CID `ipfs add --cid-version=1 --raw-leaves` gives `data` (openlora.content: a raw CID below 256 KiB,
    a balanced UnixFS file above)."""
    return str(add_bytes(data).cid)


class MemoryBlocks:
    """A blockstore in memory (seeding without a node home); blocks come from our own importer."""

    def __init__(self) -> None:
        self.blocks: dict[str, bytes] = {}

    def put_trusted(self, cid: Any, data: bytes) -> None:
        self.blocks[str(cid)] = bytes(data)

    def has(self, cid: Any) -> bool:
        return str(cid) in self.blocks

    def get(self, cid: Any) -> bytes:
        try:
            return self.blocks[str(cid)]
        except KeyError:
            raise BlockNotFoundError(as_cid(cid), f"block {cid} is not in the seed's blocks") from None


def seed_datanet(w3: Web3, dep: Deployment, blocks: Any, progress: Any = None) -> dict[str, Any]:
    """The demo Datanet through datanets/ (see the module docstring); returns its part of `extra`."""
    from openlora.datanets import contribution as contrib
    from openlora.datanets.registry import Registry
    from openlora.devnet.demo_texts import CONTRIBUTIONS
    say = progress or (lambda msg: None)
    accts = dev_accounts()
    signer = {i: Account.from_key(a.key) for i, a in enumerate(accts)}
    reg = Registry(w3, dep)
    curator = signer[ROLES["curator"]]
    meta_cid = str(add_bytes(contrib.canonical_json(DEMO_METADATA), blocks.put_trusted).cid)
    datanet_id = reg.create(curator, meta_cid).value
    contributions = []
    for who, name, data, license_, accept, reason in CONTRIBUTIONS:
        account = signer[ROLES["contributors"][who]]
        p = contrib.prepare(data, name)
        cid = contrib.store(p, blocks, license_)
        cid_id = reg.contribute(account, datanet_id, cid, len(p.data)).value
        contributions.append({"id": cid_id, "contributor": account.address, "cid": cid, "size": len(p.data),
                              "file": name, "rows": len(p.rows), "accept": accept, "reason": reason})
    flagged = 0
    for c in contributions:
        if c["accept"]:
            flagged += sum("duplicate" in r for r in reg.assess(datanet_id, c["id"], blocks.get)["rows"])
        reg.review(curator, datanet_id, c["id"], c["accept"])
        c["status"] = "accepted" if c.pop("accept") else "rejected"
    sent, manifest_cid, m = reg.publish(curator, datanet_id, blocks)
    weights = {e["id"]: e["weight"] for e in m["contributions"]}
    for c in contributions:
        c["weight"] = weights.get(c["id"], 0)
    rows = sum(c["rows"] for c in contributions)
    say(f"created Datanet {datanet_id} ({meta_cid}) with {len(contributions)} contributions ({rows} rows) from "
        f"{len({c['contributor'] for c in contributions})} contributors: "
        f"{sum(c['status'] == 'accepted' for c in contributions)} accepted, "
        f"{sum(c['status'] == 'rejected' for c in contributions)} rejected, {flagged} duplicate row(s) flagged")
    say(f"published version {sent.value} of Datanet {datanet_id}: {manifest_cid}, total weight "
        f"{m['total_weight']:,} tokens ({m['tokenizer']})")
    return {"datanet_id": datanet_id, "datanet_metadata_cid": meta_cid, "contributions": contributions,
            "datanet_version": {"version": sent.value, "manifest_cid": manifest_cid,
                                "total_weight": m["total_weight"], "tokenizer": m["tokenizer"]},
            "registry": reg.c.address}


def _keep_in_home(home: Path, w3: Web3, out: dict[str, Any], blocks: Any) -> None:
    """Record the version as held and the review reasons, as `datanet publish` / `datanet review` do."""
    from openlora.fsutil import atomic_write
    from openlora.safejson import load_file
    v = out["datanet_version"]
    blocks.add_root(v["manifest_cid"], {"kind": "datanet-version", "datanet_id": out["datanet_id"],
                                        "version": v["version"], "chain_id": int(w3.eth.chain_id),
                                        "registry": out["registry"]})
    path = home / "datanets" / "reviews.json"
    reviews = load_file(path, max_bytes=64 << 20) if path.exists() else {}
    curator = dev_accounts()[ROLES["curator"]].address
    for c in out["contributions"]:   # the key node/commands/datanet.py reads: chain id, registry, Datanet, id
        reviews[f"{w3.eth.chain_id}:{out['registry']}:{out['datanet_id']}:{c['id']}"] = {
            "decision": c["status"], "reason": c["reason"], "by": curator, "tx": None, "at": None}
    atomic_write(path, json.dumps(reviews, indent=1, sort_keys=True) + "\n")


def seed(w3: Web3, dep: Deployment, progress: Any = None, home: Path | None = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    accts = dev_accounts()
    addr = {i: a.address for i, a in enumerate(accts)}
    token = dep.contract(w3, "OpenLoRAToken")
    nodes = dep.contract(w3, "NodeRegistry")
    settlement = dep.contract(w3, "Settlement")
    deployer = addr[ROLES["deployer"]]

    for i in range(1, len(accts)):
        send(w3, token.functions.mint(addr[i], FUND_PER_ACCOUNT), deployer, f"minting to account {i}")
    say(f"funded accounts 1-{len(accts) - 1} with {FUND_PER_ACCOUNT // TOKEN:,} oUSD each")

    if home is not None:
        from openlora.content.blockstore import Blockstore
        blocks: Any = Blockstore(Path(home) / "ipfs")
    else:
        blocks = MemoryBlocks()
    datanet = seed_datanet(w3, dep, blocks, progress=say)
    if home is not None:
        _keep_in_home(Path(home), w3, datanet, blocks)

    node = addr[ROLES["node"]]
    send(w3, nodes.functions.register(node, "demo-peer", "http://127.0.0.1:8000", "demo", (10**12, 0)), node,
         "registering the demo node")
    requester = addr[ROLES["requester"]]
    send(w3, token.functions.approve(settlement.address, REQUESTER_DEPOSIT), requester, "approving the deposit")
    send(w3, settlement.functions.deposit(node, REQUESTER_DEPOSIT), requester, "depositing for the requester")
    say(f"registered demo node {node}; requester {requester} deposited {REQUESTER_DEPOSIT // TOKEN:,} oUSD to it")
    return {**{k: v for k, v in datanet.items() if k != "registry"},
            "node": node, "requester": requester, "accounts": {k: (addr[v] if isinstance(v, int) else
                                                                   [addr[i] for i in v]) for k, v in ROLES.items()},
            "block": w3.eth.block_number}


def fund_node_lane(w3: Web3, dep: Deployment, node: str, amount: int = REQUESTER_DEPOSIT,
                   progress: Any = None, requester_role: str = "requester") -> tuple[str, bytes]:
    """Give `node` gas money and have a demo requester (`requester_role`: "requester" or "requester2") deposit
    `amount` into its lane to it (each once).

    Returns the demo requester's address and private key (Anvil's public test mnemonic: devnet only)."""
    if requester_role not in ("requester", "requester2"):
        raise ValueError(f"requester_role {requester_role!r}: 'requester' or 'requester2'")
    say = progress or (lambda msg: None)
    accts = dev_accounts()
    if w3.eth.get_balance(node) < 10**18:          # the node pays gas for its settlement transactions
        tx = w3.eth.send_transaction({"from": accts[ROLES["deployer"]].address, "to": node, "value": 100 * 10**18})
        w3.eth.wait_for_transaction_receipt(tx, timeout=30)
        say(f"sent 100 ETH to node {node} for gas")
    acct = accts[ROLES[requester_role]]
    settlement = dep.contract(w3, "Settlement")
    if settlement.functions.balanceOf(acct.address, node).call() > 0:
        say(f"demo requester {acct.address} already has a deposit to node {node}")
        return acct.address, acct.key
    token = dep.contract(w3, "OpenLoRAToken")
    send(w3, token.functions.approve(settlement.address, amount), acct.address, "approving the deposit")
    send(w3, settlement.functions.deposit(node, amount), acct.address, "depositing to the node")
    say(f"demo requester {acct.address} deposited {amount // TOKEN:,} oUSD to node {node}")
    return acct.address, acct.key
