"""Runs the Foundry suite (unit, fuzz, invariant, gas) through npm's forge with solc-js behind the shim, checks the
gas goal from forge's gas report, and that the committed artifacts match a fresh compile.

Fails (never skips) when forge is missing: `make test` installs it (`npm install`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from openlora.attribution import artifacts

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = REPO / "contracts"
FORGE = REPO / "node_modules" / ".bin" / "forge"
GAS_GOAL_PER_RECEIPT = 1000
RECEIPTS = 256


def _forge(*args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    if not FORGE.exists():
        pytest.fail(f"forge is not installed at {FORGE}: run `npm install` (make test does it)")
    env = {**os.environ, "NO_COLOR": "1", "FOUNDRY_DISABLE_NIGHTLY_WARNING": "1"}
    return subprocess.run([str(FORGE), *args], cwd=CONTRACTS, capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def forge_test() -> subprocess.CompletedProcess:
    return _forge("test")


def test_forge_suite_passes(forge_test):
    out = forge_test.stdout + forge_test.stderr
    assert forge_test.returncode == 0, out[-6000:]
    m = re.search(r"(\d+) tests passed, (\d+) failed", out)
    assert m, out[-3000:]
    passed, failed = int(m.group(1)), int(m.group(2))
    assert failed == 0 and passed >= 40, out[-3000:]
    for kind in ("testFuzz_split", "testFuzz_voucher", "invariant_noBatchSettlesTwice",
                 "invariant_tokenBalanceIsDepositsMinusWithdrawalsMinusClaims"):
        assert f"[PASS] {kind}" in out, f"{kind} did not run"


def test_gas_goal_settlement_256_receipts(forge_test):
    """Whole-transaction gas (forge's gas report runs each call as its own transaction) of settling a batch of
    256 receipts from 10 requesters to 50 recipients + the protocol."""
    res = _forge("test", "--match-contract", "SettlementGasTest", "--gas-report")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    row = re.search(r"\|\s*settleBatch\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", res.stdout)
    assert row, res.stdout[-4000:]
    worst = int(row.group(4))
    assert worst <= GAS_GOAL_PER_RECEIPT * RECEIPTS, f"settleBatch {worst} gas = {worst / RECEIPTS:.0f}/receipt"


def test_committed_artifacts_match_fresh_compile(forge_test):
    """The ABI and bytecode Python reads are exactly what the current sources compile to."""
    assert forge_test.returncode == 0
    stale = []
    for name in artifacts.CONTRACTS:
        fresh = artifacts.read_forge_output(name, CONTRACTS / "out")
        committed = json.loads((artifacts.ARTIFACTS_DIR / f"{name}.json").read_text())
        for key in ("abi", "bytecode", "deployedBytecode"):
            if fresh[key] != committed[key]:
                stale.append(f"{name}.{key}")
    assert not stale, (f"stale artifacts {stale}: run `contracts/tools/export-artifacts` and commit "
                       f"contracts/artifacts/")
