"""Fixtures: a real Anvil with the contracts deployed and seeded (tests/chain_fixtures.py)."""

from __future__ import annotations

from tests.chain_fixtures import accounts, anvil, deployment, w3  # noqa: F401  (pytest fixtures)
