"""Config: the default parses, every error names the key, the bad value and what is allowed; env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from openlora.node.config import DEFAULT_CONFIG_TOML, ConfigError, parse_config

HOME = Path("/tmp/openlora-test-home")


def parse(text: str, env: dict[str, str] | None = None):
    return parse_config(text, HOME, environ=env or {})


def replace(key_line: str, new_line: str) -> str:
    assert key_line in DEFAULT_CONFIG_TOML
    return DEFAULT_CONFIG_TOML.replace(key_line, new_line, 1)


def test_default_config_parses_with_documented_defaults():
    cfg = parse(DEFAULT_CONFIG_TOML)
    assert cfg.api.port == 8000 and cfg.model.path == "demo"
    assert cfg.adapters.device_pool_bytes == "auto" and cfg.engine.kv_cache_bytes == "auto"   # sized at start
    assert cfg.keystore_path == HOME / "keystore.json"
    assert cfg.database_url == f"sqlite:///{HOME / 'node.db'}"


@pytest.mark.parametrize("old,new,expect", [
    ('port = 8000                     # required', 'port = 70000', "api.port = 70000: must be between 1 and 65535"),
    ('dtype = "float32"', 'dtype = "fp8"', "model.dtype = 'fp8': allowed values are 'float32', 'bfloat16'"),
    ('kv_block_size = 16', 'kv_block_size = 12', "engine.kv_block_size = 12: must be a power of two"),
    ('device_pool_bytes = "auto"', 'device_pool_bytes = "lots"', "adapters.device_pool_bytes = 'lots': expected"),
    ('kv_cache_bytes = "auto"', 'kv_cache_bytes = -5', "engine.kv_cache_bytes = -5: expected \"auto\" or a byte"),
    ('max_num_seqs = 128', 'max_num_seqs = "128"', "engine.max_num_seqs = '128': expected an integer"),
    ('rpc_url = "http://127.0.0.1:8545"', 'rpc_url = "localhost:8545"', "chain.rpc_url = 'localhost:8545'"),
    ('[storage]', '[storage]\ncolour = "blue"', "storage.colour: unknown key; allowed keys in [storage] are"),
    ('[ipfs]', '[ipfss]', "[ipfss]: unknown section"),
])
def test_errors_name_key_value_and_allowed(old, new, expect):
    with pytest.raises(ConfigError) as e:
        parse(replace(old, new))
    assert expect in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_required_key_and_section():
    with pytest.raises(ConfigError, match=r"api\.port is missing: it is required in \[api\]"):
        parse(replace('port = 8000                     # required\n', ''))
    with pytest.raises(ConfigError, match="config_version is missing"):
        parse(DEFAULT_CONFIG_TOML.replace("config_version = 1\n", ""))
    with pytest.raises(ConfigError, match=r"\[model\] is missing"):
        parse('config_version = 1\n[node]\nkeystore = "k.json"\n[api]\nport = 1\n')


def test_malformed_toml_is_one_clear_line():
    with pytest.raises(ConfigError, match="is not valid TOML") as e:
        parse(DEFAULT_CONFIG_TOML + "\n[api\n")
    assert "\n" not in str(e.value)


def test_environment_overrides_keys_with_types():
    env = {"OPENLORA_API_PORT": "8123", "OPENLORA_ENGINE_ENABLE_PREFIX_CACHING": "false",
           "OPENLORA_ADAPTERS_HOST_CACHE_BYTES": "8GiB", "OPENLORA_P2P_BOOTSTRAP": "/ip4/1.2.3.4/tcp/1,/ip4/5.6.7.8/tcp/2",
           "OPENLORA_HOME": "/ignored", "OPENLORA_PASSWORD": "not a key"}
    cfg = parse(DEFAULT_CONFIG_TOML, env)
    assert cfg.api.port == 8123
    assert cfg.engine.enable_prefix_caching is False
    assert cfg.adapters.host_cache_bytes == 8 * 2**30
    assert cfg.p2p.bootstrap == ("/ip4/1.2.3.4/tcp/1", "/ip4/5.6.7.8/tcp/2")
    with pytest.raises(ConfigError, match="OPENLORA_API_PORTT: \\[api\\] has no key 'portt'"):
        parse(DEFAULT_CONFIG_TOML, {"OPENLORA_API_PORTT": "1"})
    with pytest.raises(ConfigError, match="api.port = 'eighty' \\(from the environment\\): expected an integer"):
        parse(DEFAULT_CONFIG_TOML, {"OPENLORA_API_PORT": "eighty"})


def test_config_is_frozen():
    cfg = parse(DEFAULT_CONFIG_TOML)
    with pytest.raises(AttributeError):
        cfg.api.port = 1  # type: ignore[misc]


def test_set_config_values_keeps_comments_and_refuses_an_invalid_config(tmp_path):
    from openlora.node.config import DEFAULT_CONFIG_TOML, load_config, set_config_values
    (tmp_path / "config.toml").write_text(DEFAULT_CONFIG_TOML)
    assert set_config_values(tmp_path, "chain", {"rpc_url": "http://127.0.0.1:9999", "chain_id": 31337}) == ["rpc_url"]
    text = (tmp_path / "config.toml").read_text()
    assert 'rpc_url = "http://127.0.0.1:9999"' in text and text.count("[chain]") == 1
    assert text.startswith("# openlora-node configuration") and "# this node's price per token" in text
    assert load_config(tmp_path, environ={}).chain.rpc_url == "http://127.0.0.1:9999"
    assert set_config_values(tmp_path, "chain", {"rpc_url": "http://127.0.0.1:9999"}) == []     # nothing to change
    with pytest.raises(ConfigError, match="chain.rpc_url"):
        set_config_values(tmp_path, "chain", {"rpc_url": "ftp://nope"})
    assert (tmp_path / "config.toml").read_text() == text                                        # nothing written


def test_pinned_adapters_are_registered_and_pinned(tiny):
    import asyncio

    from openlora.inference import LLM
    from openlora.inference.client import AsyncEngine
    from openlora.node.runner import pin_configured
    llm = LLM(tiny.model("llama"), dtype="float32", device="cpu")
    llm.load_adapter("law", tiny.adapter(tiny.model("llama"), rank=8, seed=3), identity="bafkreilaw")
    client = AsyncEngine(llm.engine)
    try:
        cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
        asyncio.run(pin_configured(client, (cid, "bafkreilaw")))    # one new, one known by its CID
        assert {i.name: (i.identity, i.pinned) for i in llm.engine.adapters.list()} == {
            cid: (cid, True), "law": ("bafkreilaw", True)}
    finally:
        client.shutdown()


def test_datanets_section_defaults_env_and_bad_values():
    cfg = parse(DEFAULT_CONFIG_TOML)
    d = cfg.datanets
    assert (d.max_contribution_bytes, d.max_rows, d.max_row_bytes) == (64 * 2**20, 1_000_000, 2**20)
    assert d.near_duplicate_threshold == 0.6 and d.near_duplicate_threshold_bps == 6000
    assert parse(DEFAULT_CONFIG_TOML.split("[datanets]")[0]).datanets == d       # the section is optional
    cfg = parse(replace('max_contribution_bytes = "64MiB"', 'max_contribution_bytes = "2 KiB"')
                .replace("near_duplicate_threshold = 0.6", "near_duplicate_threshold = 1"),
                {"OPENLORA_DATANETS_MAX_ROWS": "7", "OPENLORA_DATANETS_MAX_ROW_BYTES": "512"})
    assert (cfg.datanets.max_contribution_bytes, cfg.datanets.max_rows, cfg.datanets.max_row_bytes) == (2048, 7, 512)
    assert cfg.datanets.near_duplicate_threshold_bps == 10_000
    for old, new, expect in [
        ("max_rows = 1000000", "max_rows = 0", r"datanets.max_rows = 0: must be >= 1"),
        ("max_rows = 1000000", 'max_rows = "many"', r"datanets.max_rows = 'many': expected an integer"),
        ('max_row_bytes = "1MiB"', 'max_row_bytes = "1 XB"', r"datanets.max_row_bytes = '1 XB': expected a byte size"),
        ('max_contribution_bytes = "64MiB"', "max_contribution_bytes = 0",
         r"datanets.max_contribution_bytes = 0: must be >= 1"),
        ("near_duplicate_threshold = 0.6", "near_duplicate_threshold = 0",
         r"datanets.near_duplicate_threshold = 0.0: must be greater than 0 and at most 1"),
        ("near_duplicate_threshold = 0.6", "near_duplicate_threshold = 1.5",
         r"datanets.near_duplicate_threshold = 1.5: must be greater than 0 and at most 1"),
        ("near_duplicate_threshold = 0.6", "near_duplicate_threshold = nan", r"must be greater than 0"),
    ]:
        with pytest.raises(ConfigError, match=expect):
            parse(replace(old, new))
    with pytest.raises(ConfigError, match=r"datanets.max_rows = 'x' \(from the environment\): expected an integer"):
        parse(DEFAULT_CONFIG_TOML, {"OPENLORA_DATANETS_MAX_ROWS": "x"})


def test_engine_sizes_auto_or_bytes():
    """"auto" (the default) is sized by the engine at start; explicit sizes still work and are still checked."""
    cfg = parse(replace('host_cache_bytes = "auto"', 'host_cache_bytes = "1MiB"'))       # pool auto: no comparison
    assert cfg.adapters.host_cache_bytes == 2**20 and cfg.adapters.device_pool_bytes == "auto"
    cfg = parse(DEFAULT_CONFIG_TOML, {"OPENLORA_ENGINE_KV_CACHE_BYTES": "AUTO",
                                      "OPENLORA_ADAPTERS_DEVICE_POOL_BYTES": "2GiB"})
    assert cfg.engine.kv_cache_bytes == "auto" and cfg.adapters.device_pool_bytes == 2 * 2**30
    with pytest.raises(ConfigError, match="must be at least adapters.device_pool_bytes"):
        parse(replace('host_cache_bytes = "auto"', 'host_cache_bytes = "1MiB"'),
              {"OPENLORA_ADAPTERS_DEVICE_POOL_BYTES": "2GiB"})
