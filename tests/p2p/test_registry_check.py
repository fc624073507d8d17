"""Announcements checked against the AdapterRegistry contract on a real Anvil chain (deployed from the committed
artifacts, seeded with the demo Datanet, as `openlora-node devnet up` does)."""

from __future__ import annotations

import pytest
from eth_account import Account
from web3 import Web3

from openlora.node.p2p import gossip
from openlora.node.p2p.gossip import GossipValidator
from openlora.node.p2p.registry import AdapterRegistryCheck

CID = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
OTHER = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@pytest.fixture(scope="module")
def chain():
    from openlora.devnet.chain import EphemeralAnvil
    from openlora.devnet.deploy import deploy_all, dev_accounts, send
    from openlora.devnet.seed import ROLES, seed
    with EphemeralAnvil() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        accts = dev_accounts()
        dep = deploy_all(w3, accts[ROLES["deployer"]].address, accts[ROLES["protocol"]].address)
        extra = seed(w3, dep)
        author = accts[ROLES["author"]]
        reg = dep.contract(w3, "AdapterRegistry")
        send(w3, reg.functions.register(CID, "openlora/tiny-llama-s0", 10**9, [extra["datanet_id"]], [10_000]),
             author.address, "registering a test adapter")
        yield w3, dep, Account.from_key(author.key)


def test_only_registered_announcements_by_their_author_pass(chain):
    w3, dep, author = chain
    check = AdapterRegistryCheck.from_deployment(w3, dep)
    v = GossipValidator(registry_check=check)
    assert v.check(gossip.announcement(author, CID, "openlora/tiny-llama-s0", 1))
    assert v.check(gossip.announcement(author, OTHER, "openlora/tiny-llama-s0", 1)) is None  # not registered
    impostor = Account.create()  # a valid signature, but not the registered author
    assert v.check(gossip.announcement(impostor, CID, "openlora/tiny-llama-s0", 1)) is None
    assert v.check(gossip.announcement(author, CID, "another/base", 1)) is None  # wrong base model
    assert v.dropped["not-registered"] == 3
    calls = check.chain_calls
    assert v.check(gossip.announcement(author, OTHER, "openlora/tiny-llama-s0", 1)) is None  # re-sent: cached
    assert check.chain_calls == calls
