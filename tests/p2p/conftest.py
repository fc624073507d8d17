"""Fixtures for multi-node tests: real py-libp2p hosts on loopback, each in its own trio thread behind a bridge."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from eth_account import Account

from openlora.node.ipfs.adapters import AdapterStore
from openlora.node.p2p.host import P2PSettings
from openlora.node.p2p.service import P2PService


@pytest.fixture
def make_node(tmp_path):
    """make_node(name, **settings) -> a started P2PService with its own home; all are stopped at teardown."""
    started = []

    def make(name: str, account=None, block_server_factory=None, **settings) -> P2PService:
        home = tmp_path / name
        store = AdapterStore(home / "ipfs")
        kw = dict(heartbeat_interval_s=0.5, announce_interval_s=1.0, block_timeout_s=5.0, provider_lookup_s=3.0)
        kw.update(settings)
        server = block_server_factory(store) if block_server_factory else None
        svc = P2PService(home, store, account or Account.create(), P2PSettings(**kw), block_server=server)
        svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()


@pytest.fixture
def random_adapter(tmp_path) -> Path:
    """An adapter-shaped directory with random weights (for exchange tests that do not run the engine)."""
    d = tmp_path / "random-adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny", "r": 4, "target_modules": ["q_proj"]}')
    (d / "adapter_model.safetensors").write_bytes(os.urandom(2_000_000))
    return d


@pytest.fixture(scope="session")
def tiny_model_and_adapter(tiny):
    base = tiny.model()
    return base, tiny.adapter(base, rank=4, seed=3)
