"""Demo data for a fresh devnet: funded accounts, a Datanet with contributions, a node and a requester deposit.

What it does: `seed(w3, dep)` mints the devnet token to the demo accounts, creates the demo Datanet (curated by
account 7) with three contributions from accounts 4-6 (two accepted, one left pending), registers account 1 as a
demo node, and deposits for requester account 2 into its lane to that node. Returns what it created (stored in
the deployment's `extra`). Content is addressed by real CIDv1 (raw, sha2-256) of the demo texts.
What it does not do: register adapters (they need real adapter CIDs from the adapter store) or run a node.
"""

from __future__ import annotations

import json
from typing import Any

from web3 import Web3

from openlora.attribution.deployment import Deployment
from openlora.content.importer import add_bytes
from openlora.devnet.deploy import dev_accounts, send

TOKEN = 10**18  # the devnet token has 18 decimals
FUND_PER_ACCOUNT = 1_000_000 * TOKEN
REQUESTER_DEPOSIT = 10_000 * TOKEN

ROLES = {"deployer": 0, "node": 1, "requester": 2, "requester2": 3, "contributors": [4, 5, 6], "curator": 7,
         "author": 8, "protocol": 9}

DEMO_METADATA = {"name": "demo-datanet", "description": "Short texts for the local devnet demo.", "license": "CC0"}
DEMO_CONTRIBUTIONS = [
    "The quick brown fox jumps over the lazy dog.",
    "Low-rank adapters let one base model serve many fine-tuned tasks at once.",
    "A contract settles receipts in batches and pays each contributor by pull.",
]


def raw_cid(data: bytes) -> str:
    """The CID `ipfs add --cid-version=1 --raw-leaves` gives `data` (openlora.content: a raw CID below 256 KiB,
    a balanced UnixFS file above)."""
    return str(add_bytes(data).cid)


def seed(w3: Web3, dep: Deployment, progress: Any = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    accts = dev_accounts()
    addr = {i: a.address for i, a in enumerate(accts)}
    token = dep.contract(w3, "OpenLoRAToken")
    datanets = dep.contract(w3, "DatanetRegistry")
    nodes = dep.contract(w3, "NodeRegistry")
    settlement = dep.contract(w3, "Settlement")
    deployer = addr[ROLES["deployer"]]

    for i in range(1, len(accts)):
        send(w3, token.functions.mint(addr[i], FUND_PER_ACCOUNT), deployer, f"minting to account {i}")
    say(f"funded accounts 1-{len(accts) - 1} with {FUND_PER_ACCOUNT // TOKEN:,} oUSD each")

    curator = addr[ROLES["curator"]]
    meta_cid = raw_cid(json.dumps(DEMO_METADATA, sort_keys=True).encode())
    send(w3, datanets.functions.createDatanet(meta_cid), curator, "creating the demo Datanet")
    datanet_id = datanets.functions.datanetCount().call()
    contributions = []
    for who, text in zip(ROLES["contributors"], DEMO_CONTRIBUTIONS):
        data = text.encode()
        send(w3, datanets.functions.contribute(datanet_id, raw_cid(data), len(data)), addr[who],
             f"contribution from account {who}")
        cid_id = datanets.functions.getDatanet(datanet_id).call()[2]
        contributions.append({"id": cid_id, "contributor": addr[who], "cid": raw_cid(data), "size": len(data)})
    for c in contributions[:2]:
        send(w3, datanets.functions.accept(datanet_id, c["id"]), curator, f"accepting contribution {c['id']}")
        c["status"] = "accepted"
    contributions[2]["status"] = "pending"
    say(f"created Datanet {datanet_id} ({meta_cid}) with {len(contributions)} contributions (2 accepted)")

    node = addr[ROLES["node"]]
    send(w3, nodes.functions.register(node, "demo-peer", "http://127.0.0.1:8000", "demo", (10**12, 0)), node,
         "registering the demo node")
    requester = addr[ROLES["requester"]]
    send(w3, token.functions.approve(settlement.address, REQUESTER_DEPOSIT), requester, "approving the deposit")
    send(w3, settlement.functions.deposit(node, REQUESTER_DEPOSIT), requester, "depositing for the requester")
    say(f"registered demo node {node}; requester {requester} deposited {REQUESTER_DEPOSIT // TOKEN:,} oUSD to it")
    return {"datanet_id": datanet_id, "datanet_metadata_cid": meta_cid, "contributions": contributions,
            "node": node, "requester": requester, "accounts": {k: (addr[v] if isinstance(v, int) else
                                                                   [addr[i] for i in v]) for k, v in ROLES.items()},
            "block": w3.eth.block_number}


def fund_node_lane(w3: Web3, dep: Deployment, node: str, amount: int = REQUESTER_DEPOSIT,
                   progress: Any = None) -> tuple[str, bytes]:
    """Give `node` gas money and have the demo requester deposit `amount` into its lane to it (each once).

    Returns the demo requester's address and private key (Anvil's public test mnemonic: devnet only)."""
    say = progress or (lambda msg: None)
    accts = dev_accounts()
    if w3.eth.get_balance(node) < 10**18:          # the node pays gas for its settlement transactions
        tx = w3.eth.send_transaction({"from": accts[ROLES["deployer"]].address, "to": node, "value": 100 * 10**18})
        w3.eth.wait_for_transaction_receipt(tx, timeout=30)
        say(f"sent 100 ETH to node {node} for gas")
    acct = accts[ROLES["requester"]]
    settlement = dep.contract(w3, "Settlement")
    if settlement.functions.balanceOf(acct.address, node).call() > 0:
        say(f"demo requester {acct.address} already has a deposit to node {node}")
        return acct.address, acct.key
    token = dep.contract(w3, "OpenLoRAToken")
    send(w3, token.functions.approve(settlement.address, amount), acct.address, "approving the deposit")
    send(w3, settlement.functions.deposit(node, amount), acct.address, "depositing to the node")
    say(f"demo requester {acct.address} deposited {amount // TOKEN:,} oUSD to node {node}")
    return acct.address, acct.key
