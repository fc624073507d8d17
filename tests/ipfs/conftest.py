"""Fixtures for the content-addressing tests: the reference importer (npm ipfs-unixfs-importer, what helia uses)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "js" / "unixfs_import.mjs"


def reference_available() -> str | None:
    if shutil.which("node") is None:
        return "node (Node.js) is not installed"
    if not (REPO / "node_modules" / "ipfs-unixfs-importer").is_dir():
        return "node_modules/ipfs-unixfs-importer is missing: run `make install` (npm install)"
    return None


@pytest.fixture(scope="session")
def reference_cids():
    """reference_cids(paths, chunk=262144, max_children=174, car=None) -> [cid, ...] from the JS importer."""
    why = reference_available()
    if why:
        pytest.skip(f"reference importer unavailable: {why}")

    def run(paths, chunk: int = 262144, max_children: int = 174, car: Path | None = None) -> list[str]:
        args = ["node", str(SCRIPT), *map(str, paths), "--chunk", str(chunk), "--max-children", str(max_children)]
        if car is not None:
            args += ["--car", str(car)]
        out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=REPO, timeout=300).stdout
        return [json.loads(line)["cid"] for line in out.splitlines() if line.strip()]

    return run


@pytest.fixture(scope="session")
def tiny_adapter(tiny) -> Path:
    """A tiny PEFT adapter directory (adapter_config.json + adapter_model.safetensors) for a tiny llama."""
    return tiny.adapter(tiny.model(), rank=4)
