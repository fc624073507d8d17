"""[datanets] limits in config.toml: `datanet contribute` refuses what the config refuses; options override."""

from __future__ import annotations

from openlora.node.config import set_config_values
from tests.datanets.test_chain import Cli, home  # noqa: F401  (home: a pytest fixture)


def test_config_limits_refuse_a_one_line_file_and_options_override(home, capsys, tmp_path):  # noqa: F811
    cli = Cli(home, capsys)
    dn = cli.json("create", "--name", "limits", key="curator0")["datanet_id"]
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "a single line of text, thirty-odd bytes long"}\n')
    set_config_values(home, "datanets", {"max_contribution_bytes": "16B"})
    code, _, err = cli("contribute", str(dn), str(one), key="contributors0")
    assert code == 1 and err.strip() == "error: one.jsonl: 17 bytes is over the 16-byte limit for one " \
                                        "contribution; split it"
    set_config_values(home, "datanets", {"max_contribution_bytes": "64MiB", "max_row_bytes": 20})
    code, _, err = cli("contribute", str(dn), str(one), key="contributors0")
    assert code == 1 and "exceeds the limit of 20 bytes" in err and err.count("\n") == 1
    set_config_values(home, "datanets", {"max_row_bytes": "1MiB", "max_contribution_bytes": 16})
    assert cli.json("contribute", str(dn), str(one), "--max-bytes", "4096", key="contributors0")["rows"] == 1
