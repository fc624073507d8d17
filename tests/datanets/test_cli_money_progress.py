"""The datanet CLI's money and progress output, on a real Anvil: amounts in the token's own symbol and decimals
(read from OpenLoRAToken, never hard-coded), progress bars on stderr for a contribution over 1 MiB / 1,000 rows and
for verifying such a version (stdout stays clean JSON)."""

from __future__ import annotations

import json

from openlora.node.commands.datanet import _Money
from tests.datanets.test_chain import Cli, acct, home  # noqa: F401  (home: a pytest fixture)


def test_money_uses_the_contracts_symbol_and_decimals(w3, deployment):
    token = deployment.contract(w3, "OpenLoRAToken")
    money = _Money(w3, deployment)
    assert (money.symbol, money.decimals) == (token.functions.symbol().call(), token.functions.decimals().call())
    money.symbol, money.decimals = "TKN", 6
    assert money(1_500_000) == "1.5 TKN" and money(0) == "0 TKN" and money(1) == "0.000001 TKN"
    assert money(12_345_678_000_000) == "12,345,678 TKN"
    assert money.json(7) == {"amount": "7", "decimals": 6, "symbol": "TKN", "display": "0.000007 TKN"}


def test_progress_bars_and_earnings(home, capsys, tmp_path, w3, deployment, accounts):  # noqa: F811
    cli = Cli(home, capsys)
    dn = cli.json("create", "--name", "big", key="curator0")["datanet_id"]
    rows = [f"Note {i}: " + " ".join(f"w{i}x{j}" for j in range(150)) for i in range(1_000)]
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    assert big.stat().st_size > 1 << 20

    code, out, err = cli("contribute", str(dn), str(big), "--json", key="contributors0")
    assert code == 0 and json.loads(out)["rows"] == 1_000          # stdout: the JSON only
    assert "checking big.jsonl" in err and "importing 1,000 rows" in err
    c = json.loads(out)["contribution_id"]
    cli.json("review", str(dn), str(c), "--accept", "--reason", "ok", key="curator0")
    cli.json("publish", str(dn), key="curator0")
    code, out, err = cli("verify", str(dn), "--json")
    assert code == 0 and json.loads(out)["rows"] == 1_000 and "verifying 1,000 rows" in err

    token = deployment.contract(w3, "OpenLoRAToken")
    symbol, decimals = token.functions.symbol().call(), token.functions.decimals().call()
    shown = cli.json("show", str(dn), "--earnings")
    [e] = shown["earnings"]
    assert e["contributor"] == acct(accounts, "contributors", 0).address and e["share_bps"] == 10_000
    assert e["earned"]["symbol"] == symbol and e["earned"]["decimals"] == decimals
    assert e["weight"] == shown["versions"][0]["total_weight"]
    code, out, _ = cli("show", str(dn), "--earnings")
    assert code == 0 and f"({symbol}, {decimals} decimals, read from the token contract)" in out
    assert f"weight {e['weight']:,} (100.00%), earned {e['earned']['display']}" in out
    assert e["earned"]["display"].endswith(f" {symbol}")
