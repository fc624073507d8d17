"""Import names and the lock: the project's only top-level import name is `openlora`, no folder in the repository
root can shadow another distribution's module, transformers' hub-kernels integration imports from anywhere, the
wheel carries exactly the `openlora` namespace, and the environment is exactly requirements.lock."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import openlora

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "requirements.lock"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[_canonical(name)] = version
    return pins


def _run(code: str, cwd: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_openlora_is_our_only_top_level_name_and_no_one_elses():
    provided = metadata.packages_distributions()
    ours = sorted(name for name, dists in provided.items() if "openlora-node" in dists)
    assert ours == ["openlora"], f"openlora-node must install one top-level import name, not {ours}"
    # (a source checkout's *.egg-info may list the same distribution a second time)
    assert set(provided["openlora"]) == {"openlora-node"}, f"another distribution installs `openlora`: {provided}"


def test_no_repository_folder_shadows_an_installed_module():
    """A folder in the repository root with an __init__.py is a regular package for any process whose sys.path
    starts there (pytest, python -m, a REPL): it must not be named like another distribution's module."""
    provided = metadata.packages_distributions()
    shadowing = {p.name: provided[p.name] for p in ROOT.iterdir()
                 if (p / "__init__.py").is_file() and p.name in provided and p.name != "openlora"}
    assert not shadowing, f"these folders shadow installed modules from the repository root: {shadowing}"
    # the case that bit: Hugging Face's `kernels` (a transformers dependency) is installed, our folder is not a package
    assert "kernels" in provided, "Hugging Face's kernels is expected in the environment (transformers needs it)"
    assert not (ROOT / "kernels" / "__init__.py").exists()


@pytest.mark.parametrize("where", ["repo-root", "elsewhere"])
def test_hub_kernels_and_our_kernels_import_side_by_side(where, tmp_path):
    cwd = ROOT if where == "repo-root" else tmp_path
    proc = _run("import transformers.integrations.hub_kernels, kernels, transformers; "
                "from kernels import CUDAProperties; "
                "from openlora.kernels import ops, reference; import openlora.inference; "
                "transformers.LlamaConfig(); "
                "print(kernels.__file__); print(ops.__file__)", cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hf_file, ops_file = proc.stdout.split()
    assert "site-packages" in hf_file and Path(hf_file).name == "__init__.py"
    assert Path(ops_file).resolve() == ROOT / "kernels" / "ops.py"


def test_namespace_maps_every_folder_and_the_wheel_list_is_complete():
    setuptools_cfg = PYPROJECT["tool"]["setuptools"]
    package_dir = setuptools_cfg["package-dir"]
    for name in openlora.SUBPACKAGES:
        link = ROOT / "openlora" / name
        assert link.is_symlink() and link.resolve() == ROOT / name, f"openlora/{name} must link to ../{name}"
        assert package_dir[f"openlora.{name}"] == name
    # every folder holding Python code beneath a subpackage is listed, so the wheel cannot silently miss one
    expected = {"openlora", "openlora._contracts"}
    for name in openlora.SUBPACKAGES:
        for d in [ROOT / name, *(p for p in (ROOT / name).rglob("*") if p.is_dir())]:
            if any(d.glob("*.py")) and "__pycache__" not in d.parts:
                expected.add("openlora." + ".".join(d.relative_to(ROOT).parts))
    assert set(setuptools_cfg["packages"]) == expected


def test_lock_pins_everything_and_satisfies_pyproject():
    pins = _locked()
    project = PYPROJECT["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in ("dev", "postgres", "kernels"):
        requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
    for req in requirements:
        name = _canonical(req.name)
        assert name in pins, f"{req} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name]}, pyproject.toml wants {req}: run `make lock`"
    assert pins["torch"] == "2.13.0"
    assert "openlora-node" not in pins


def test_environment_is_exactly_the_lock():
    pins = _locked()
    installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {n: (v, installed.get(n)) for n, v in pins.items() if installed.get(n, "").split("+")[0] != v}
    assert not wrong, f"installed versions differ from requirements.lock (locked, installed): {wrong}"


@pytest.mark.slow
def test_wheel_installs_beside_hf_kernels_and_runs_from_elsewhere(tmp_path, tiny):
    """A non-editable install: the wheel holds only `openlora/`, HF's kernels stays intact, and the CLI and the
    README's offline-API snippet work from a directory outside the checkout."""
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(dist), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("openlora_node-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"openlora"}, tops
    assert "openlora/kernels/ops.py" in names and "openlora/_contracts/Settlement.json" in names
    assert "openlora/kernels/csrc/cpu_kernels.c" in names         # the native CPU kernels build from the wheel too
    assert not any(n.startswith("openlora/kernels/__init__") for n in names)

    # A fresh venv that sees this environment's third-party packages (through a .pth line: the editable install's
    # own .pth files are not processed there) but not the checkout; the wheel goes into it without dependencies.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(_run("import sysconfig; print(sysconfig.get_paths()['purelib'])", tmp_path, str(py)).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (site / "openlora" / "kernels" / "ops.py").is_file() and not (site / "kernels").exists()

    cli = subprocess.run([str(venv / "bin" / "openlora-node"), "--version"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0 and "0.1.0" in cli.stdout, cli.stderr
    model = tiny.model("llama", seed=0)
    snippet = f"""
import kernels, transformers.integrations.hub_kernels, openlora
assert openlora.__file__.startswith({str(site)!r}), openlora.__file__
from kernels import CUDAProperties
from openlora.inference import LLM, SamplingParams
from openlora.attribution import artifacts
assert artifacts.load("Settlement").abi
llm = LLM({str(model)!r}, dtype="float32", device="cpu")
outs = llm.generate(["prompt a", [1, 2, 3]], SamplingParams(max_tokens=4, temperature=0.0, logprobs=1))
assert len(outs) == 2 and all(len(o.token_ids) == 4 for o in outs)
from openlora.kernels import cpu_native
assert cpu_native._compiler() is None or llm.engine.backend.name == "native", cpu_native.unavailable_reason()
print("ok", kernels.__file__)
"""
    run = _run(snippet, tmp_path, str(py))
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]
