"""[attribution] in config.toml: the span parameters receipts are attributed with (and record in their evidence),
range-checked, overridable by OPENLORA_ATTRIBUTION_* like every other key."""

from __future__ import annotations

import pytest

from openlora.node.config import DEFAULT_CONFIG_TOML, parse_config
from openlora.node.errors import ConfigError


def test_defaults_overrides_and_bad_values(tmp_path):
    cfg = parse_config(DEFAULT_CONFIG_TOML, tmp_path, environ={})
    assert (cfg.attribution.min_span_tokens, cfg.attribution.max_span_occurrences) == (12, 16)
    from openlora.attribution.spans import SpanParams
    assert (SpanParams().min_len, SpanParams().max_occurrences) == (12, 16)   # the measured defaults
    text = DEFAULT_CONFIG_TOML.replace("min_span_tokens = 12", "min_span_tokens = 20")
    assert parse_config(text, tmp_path, environ={}).attribution.min_span_tokens == 20
    env = {"OPENLORA_ATTRIBUTION_MAX_SPAN_OCCURRENCES": "4"}
    assert parse_config(DEFAULT_CONFIG_TOML, tmp_path, environ=env).attribution.max_span_occurrences == 4
    for bad in ("min_span_tokens = 0", "min_span_tokens = -3", 'min_span_tokens = "x"', "index_threads = 0",
                "max_span_occurrences = 100000", "min_span_tokens = 1.5", "unknown_key = 1"):
        key = bad.split(" = ")[0]
        line = next((ln for ln in DEFAULT_CONFIG_TOML.splitlines() if ln.startswith(key + " =")), None)
        text = DEFAULT_CONFIG_TOML.replace(line, bad) if line else \
            DEFAULT_CONFIG_TOML.replace("[attribution]\n", f"[attribution]\n{bad}\n")
        with pytest.raises(ConfigError) as e:
            parse_config(text, tmp_path, environ={})
        assert "attribution" in str(e.value) and "\n" not in str(e.value)


def test_the_node_attributes_with_the_configured_parameters(tmp_path, tiny):
    """build_attributor passes the config's L and K to every request's attribution (and so into its evidence)."""
    from openlora.node.attribution_index import build_attributor

    class Chain:
        w3 = deployment = None
    text = DEFAULT_CONFIG_TOML.replace("min_span_tokens = 12", "min_span_tokens = 7") \
        .replace("max_span_occurrences = 16", "max_span_occurrences = 3")
    cfg = parse_config(text, tmp_path, environ={})
    a = build_attributor(cfg, Chain(), tiny.model("llama"), "0x" + "11" * 20)
    try:
        assert (a.min_len, a.max_occurrences) == (7, 3)
        assert a.indexes.tokenizer_id.startswith("sha256:") and a.indexes.root == tmp_path / "attribution" / "indexes"
        assert build_attributor(cfg, None, tiny.model("llama"), "0x" + "11" * 20) is None   # no chain: static
    finally:
        a.close()
