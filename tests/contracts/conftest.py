"""Fixtures: a real Anvil on a free port (killed at teardown) with every contract deployed from the committed
artifacts and the demo data seeded (tests/chain_fixtures.py), for the Python side of the contracts."""

from __future__ import annotations

from tests.chain_fixtures import accounts, anvil, deployment, w3  # noqa: F401  (pytest fixtures)
