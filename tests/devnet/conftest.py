"""Fixtures: a real Anvil on a free port (killed at teardown) with every contract deployed from the committed
artifacts and the demo data seeded, through the same code `openlora-node devnet up` runs."""

from __future__ import annotations

import pytest
from web3 import Web3

from devnet.chain import EphemeralAnvil
from devnet.deploy import deploy_all, dev_accounts
from devnet.seed import ROLES, seed


@pytest.fixture(scope="session")
def anvil():
    with EphemeralAnvil() as a:
        yield a


@pytest.fixture(scope="session")
def w3(anvil) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))


@pytest.fixture(scope="session")
def accounts():
    return dev_accounts()


@pytest.fixture(scope="session")
def deployment(w3, accounts):
    dep = deploy_all(w3, accounts[ROLES["deployer"]].address, accounts[ROLES["protocol"]].address)
    extra = seed(w3, dep)
    return type(dep)(**{**dep.__dict__, "extra": extra})
