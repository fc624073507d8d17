"""Compiled contract artifacts (ABI + bytecode) that Python reads, and the tool that exports them from forge.

What it does: loads `contracts/artifacts/<Name>.json` (committed), computes the hash of the Solidity sources and
compiler settings that produced them (so a test can tell when they are stale), and exports fresh artifacts from
forge's build output: `python -m openlora.attribution.artifacts export` after `forge build` in contracts/.
What it does not do: compile anything itself (forge does, through contracts/tools/solc-shim), or talk to a chain.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from openlora.attribution.errors import AttributionError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS_DIR = REPO_ROOT / "contracts"
# A source checkout reads contracts/artifacts/; an installed wheel carries the same files as openlora/_contracts/
# (pyproject.toml maps the folder there), beside this package.
ARTIFACTS_DIR = next((d for d in (CONTRACTS_DIR / "artifacts", REPO_ROOT / "_contracts") if d.is_dir()),
                     CONTRACTS_DIR / "artifacts")
NODE_MODULES = REPO_ROOT / "node_modules"

# The deployable contracts, in deployment order, with the source file each lives in.
CONTRACTS: dict[str, str] = {
    "OpenLoRAToken": "OpenLoRAToken.sol",
    "DatanetRegistry": "DatanetRegistry.sol",
    "AdapterRegistry": "AdapterRegistry.sol",
    "NodeRegistry": "NodeRegistry.sol",
    "Settlement": "Settlement.sol",
}


class ArtifactError(AttributionError):
    """An artifact is missing, malformed or cannot be exported."""


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed creation code
    deployed_bytecode: str  # 0x-prefixed runtime code
    source_hash: str


def _package_version(name: str) -> str:
    try:
        return json.loads((NODE_MODULES / name / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "missing"


def source_hash(contracts_dir: Path = CONTRACTS_DIR) -> str:
    """sha256 over the Solidity sources, foundry.toml and the versions of solc-js and OpenZeppelin used."""
    h = hashlib.sha256()
    files = sorted((contracts_dir / "src").rglob("*.sol")) + [contracts_dir / "foundry.toml"]
    for f in files:
        h.update(f.relative_to(contracts_dir).as_posix().encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    for pkg in ("solc", "@openzeppelin/contracts"):
        h.update(f"{pkg}@{_package_version(pkg)}\0".encode())
    return h.hexdigest()


@lru_cache(maxsize=None)
def load(name: str, artifacts_dir: Path = ARTIFACTS_DIR) -> Artifact:
    """The committed artifact of contract `name` (one of CONTRACTS)."""
    path = artifacts_dir / f"{name}.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Artifact(name=name, abi=raw["abi"], bytecode=raw["bytecode"],
                        deployed_bytecode=raw["deployedBytecode"], source_hash=raw["sourceHash"])
    except FileNotFoundError:
        raise ArtifactError(f"no artifact for {name} at {path}: run `contracts/tools/export-artifacts`") from None
    except (ValueError, KeyError) as e:
        raise ArtifactError(f"artifact {path} is malformed ({e}): regenerate it with `contracts/tools/export-artifacts`") from None


def artifacts_hash(artifacts_dir: Path = ARTIFACTS_DIR) -> str:
    """One hash over every deployable contract's creation code: a deployment records it to detect upgrades."""
    h = hashlib.sha256()
    for name in CONTRACTS:
        h.update(name.encode() + b"\0" + load(name, artifacts_dir).bytecode.encode() + b"\0")
    return h.hexdigest()


def read_forge_output(name: str, out_dir: Path) -> dict[str, Any]:
    """ABI and bytecode of `name` from forge's out/ directory, in the committed artifact's shape (no hash)."""
    path = out_dir / CONTRACTS[name] / f"{name}.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} not found: run `forge build` in {CONTRACTS_DIR}") from None
    return {"contractName": name, "abi": raw["abi"], "bytecode": raw["bytecode"]["object"],
            "deployedBytecode": raw["deployedBytecode"]["object"]}


def export(out_dir: Path = CONTRACTS_DIR / "out", artifacts_dir: Path = ARTIFACTS_DIR) -> list[Path]:
    """Write artifacts/<Name>.json for every deployable contract from a fresh forge build."""
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    digest = source_hash()
    written = []
    for name in CONTRACTS:
        art = read_forge_output(name, out_dir)
        art["sourceHash"] = digest
        path = artifacts_dir / f"{name}.json"
        path.write_text(json.dumps(art, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    load.cache_clear()
    return written


def main(argv: list[str]) -> int:
    if argv[:1] != ["export"]:
        print("usage: python -m attribution.artifacts export   (after `forge build` in contracts/)", file=sys.stderr)
        return 2
    try:
        for p in export():
            print(f"wrote {p.relative_to(REPO_ROOT)}")
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
