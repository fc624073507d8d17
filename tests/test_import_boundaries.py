"""Import boundaries, beyond import-linter (which `make test` also runs): kernels import only torch, triton (flash_attn, optional, on CUDA) and
the standard library; the checks below read the source, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(package: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                parts = n.split(".")
                # the project's own packages are `openlora.<package>`: name them by the package
                root = parts[1] if parts[0] == "openlora" and len(parts) > 1 else parts[0]
                out.setdefault(root, set()).add(str(path.relative_to(ROOT)))
    return out


def test_kernels_import_only_torch_triton_stdlib():
    allowed = {"torch", "triton", "flash_attn", "kernels", "__future__"} | set(sys.stdlib_module_names)
    bad = {m: f for m, f in imported_roots("kernels").items() if m not in allowed}
    assert not bad, f"kernels/ imports {bad}"


def test_service_stack_stays_out_of_engine_and_torch_out_of_attribution():
    for pkg, forbidden in {"inference": {"aiohttp", "web3", "libp2p", "sqlalchemy", "node"},
                           "attribution": {"torch", "triton", "node", "inference", "kernels"},
                           "datanets": {"node"}, "devnet": {"node"}, "kernels": {"node"}}.items():
        bad = {m: f for m, f in imported_roots(pkg).items() if m in forbidden}
        assert not bad, f"{pkg}/ imports {bad}"


def test_no_module_in_node_is_over_600_lines():
    """A module past 600 lines holds two things (CONVENTIONS.md 11): node/ stays below that."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "node").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"split these modules: {long}"


def test_test_module_basenames_are_unique():
    """tests/ has no __init__.py files (pytest's default import mode puts each test's folder on sys.path), so two
    test modules with one basename stop the whole run at collection: found when a full run is the first to see it."""
    from collections import Counter
    from pathlib import Path
    root = Path(__file__).resolve().parent
    names = Counter(p.name for p in root.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
