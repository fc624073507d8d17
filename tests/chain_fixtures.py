"""Chain fixtures shared by the test packages that need a real Anvil (tests/devnet, tests/service): a fresh Anvil
on a free port per package session (killed at teardown), every contract deployed from the committed artifacts and
the demo data seeded through the same code `openlora-node devnet up` runs. Import the fixtures into a conftest."""

from __future__ import annotations

import pytest
from web3 import Web3

from openlora.devnet.chain import EphemeralAnvil
from openlora.devnet.deploy import deploy_all, dev_accounts
from openlora.devnet.seed import ROLES, seed


def deploy_seeded(w3: Web3, accounts):
    """Deploy every contract and seed the demo data; the deployment carries what seeding made in `extra`."""
    dep = deploy_all(w3, accounts[ROLES["deployer"]].address, accounts[ROLES["protocol"]].address)
    extra = seed(w3, dep)
    return type(dep)(**{**dep.__dict__, "extra": extra})


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
    return deploy_seeded(w3, accounts)
