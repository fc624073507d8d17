"""Fixtures for the node service's storage and settlement: a real Anvil on a free port (killed at teardown) with
the contracts deployed and the demo data seeded by the same code `openlora-node devnet up` runs, plus helpers to
make funded requesters, vouchers and node-signed receipts; and the storage backends: `db_url` runs a test once on
SQLite and once on a real PostgreSQL server (one per session, see pg_server.py). Where that server cannot start,
the PostgreSQL cases skip with the reason (or fail, with OPENLORA_TEST_REQUIRE_POSTGRES=1)."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable

import pytest
from eth_account import Account
from web3 import Web3

from openlora.attribution import eip712
from openlora.attribution.receipts import Receipt, sign_receipt
from openlora.devnet.chain import free_port
from openlora.devnet.seed import ROLES
from tests.chain_fixtures import accounts, anvil, deployment, w3  # noqa: F401  (pytest fixtures)
from tests.service.pg_server import PgServer, PgUnavailable

TOKEN = 10**18
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the session (pgserver's binaries), stopped and deleted at the end."""
    try:
        server = PgServer.start()
    except PgUnavailable as e:
        if os.environ.get("OPENLORA_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required (OPENLORA_TEST_REQUIRE_POSTGRES=1) but unavailable: {e}")
        pytest.skip(f"PostgreSQL server unavailable, PostgreSQL storage cases not run: {e}")
    yield server
    server.stop()


def database_factory(backend: str, tmp_path, request) -> Callable[..., str]:
    """db(name="node") -> the URL of this test's database `name`, empty when first asked for: a SQLite file under
    tmp_path, or a new database on the session's PostgreSQL server."""
    if backend == "sqlite":
        return lambda name="node": f"sqlite:///{tmp_path / name}.db"
    server, made = request.getfixturevalue("postgres"), {}
    return lambda name="node": made.get(name) or made.setdefault(name, server.create_database())


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> Callable[..., str]:
    """Runs the test once per backend; db_url() (or db_url("other")) is the URL of that test's database."""
    return database_factory(request.param, tmp_path, request)


@pytest.fixture
def dead_w3() -> Web3:
    """A Web3 pointed at a port nobody listens on (no provider retries: fails fast)."""
    return Web3(Web3.HTTPProvider(f"http://127.0.0.1:{free_port()}", request_kwargs={"timeout": 2},
                                  exception_retry_configuration=None))


@pytest.fixture(scope="session")
def node_account(accounts):
    return Account.from_key(accounts[ROLES["node"]].key)


class Chain:
    """Helpers bound to the session's chain: fund requesters' lanes, sign vouchers, make node-signed receipts."""
    _ids = itertools.count(1)

    def __init__(self, w3, dep, accounts, node_account):
        self.w3, self.dep, self.accts, self.node = w3, dep, accounts, node_account
        self.settlement = dep.contract(w3, "Settlement")
        self.token = dep.contract(w3, "OpenLoRAToken")
        self.domain = eip712.Domain(w3.eth.chain_id, self.settlement.address)
        self.funder = accounts[ROLES["deployer"]].address

    def send(self, fn, sender):
        r = self.w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}), timeout=30)
        assert r.status == 1
        return r

    def requester(self, deposit: int = TOKEN):
        """A fresh requester with `deposit` in its lane to the node (funded by the deployer)."""
        acct = Account.create()
        self.send(self.token.functions.mint(self.funder, deposit), self.funder)
        self.send(self.token.functions.approve(self.settlement.address, deposit), self.funder)
        self.send(self.settlement.functions.depositFor(acct.address, self.node.address, deposit), self.funder)
        return acct

    def voucher(self, requester, cap: int) -> bytes:
        return eip712.sign(eip712.Voucher(requester.address, self.node.address, cap), self.domain, requester.key)

    def receipt(self, requester, price: int, attribution, adapter_cid=None, tokens=(5, 7)) -> Receipt:
        n = next(self._ids)
        req = eip712.Request(requester.address, self.node.address, eip712.adapter_id(adapter_cid or "base"),
                             eip712.prompt_hash(f"prompt {n}"), 64, price, n, 2_000_000_000)
        r = Receipt(request_id=f"req-{uuid.uuid4()}", request_digest=eip712.digest(req, self.domain),
                    requester=requester.address, node=self.node.address, adapter_cid=adapter_cid,
                    prompt_tokens=tokens[0], completion_tokens=tokens[1], price=price,
                    attribution=tuple(attribution), created_at=int(time.time()))
        return sign_receipt(r, self.node.key)


@pytest.fixture(scope="session")
def chain(w3, deployment, accounts, node_account) -> Chain:
    return Chain(w3, deployment, accounts, node_account)

