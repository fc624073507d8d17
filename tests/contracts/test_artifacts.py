"""The committed artifacts are loadable and were exported from the current sources (fast: no compiler)."""

from __future__ import annotations

from openlora.attribution import artifacts


def test_every_contract_has_an_artifact():
    for name in artifacts.CONTRACTS:
        art = artifacts.load(name)
        assert art.bytecode.startswith("0x") and len(art.bytecode) > 100
        assert art.deployed_bytecode.startswith("0x")
        assert any(item.get("type") == "function" for item in art.abi)


def test_artifacts_are_not_stale():
    current = artifacts.source_hash()
    stale = [n for n in artifacts.CONTRACTS if artifacts.load(n).source_hash != current]
    assert not stale, (f"contracts/artifacts/ {stale} were exported from other sources than contracts/src now: "
                       f"run `contracts/tools/export-artifacts` and commit contracts/artifacts/")


def test_settlement_abi_has_the_settlement_surface():
    names = {i["name"] for i in artifacts.load("Settlement").abi if i.get("type") == "function"}
    assert {"deposit", "depositWithPermit", "requestWithdrawal", "withdraw", "settleBatch", "claim", "claimMany",
            "verifyRequest", "voucherDigest", "requestDigest", "creditsRoot"} <= names
