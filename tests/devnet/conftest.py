"""Fixtures: a real Anvil on a free port (killed at teardown) with every contract deployed from the committed
artifacts and the demo data seeded, through the same code `openlora-node devnet up` runs."""

from __future__ import annotations

from tests.chain_fixtures import accounts, anvil, deployment, w3  # noqa: F401  (pytest fixtures)
