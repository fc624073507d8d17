"""Read an ordinary HF model directory: config.json into a `ModelSpec`, safetensors (sharded or not) into tensors.

What it does: supports the Llama family the engine serves (Llama 2/3 incl. llama3/linear rope scaling, Mistral,
Qwen2 with qkv bias, Qwen3 with q/k norm); checks that every expected weight is present with the shape the config
implies, and names what is wrong otherwise.
What it does not do: build the model (inference/model.py), or read pickled checkpoints (never: safetensors only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from openlora.inference.errors import ModelLoadError
from openlora.safejson import loads as safe_loads

# Base model JSON files (the operator's choice, possibly symlinks into an HF cache): bounded all the same.
MAX_CONFIG_BYTES, MAX_INDEX_BYTES = 1 << 20, 64 << 20

SUPPORTED = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


@dataclass(frozen=True)
class RopeSpec:
    theta: float
    rope_type: str = "default"           # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelSpec:
    arch: str                            # llama | mistral | qwen2 | qwen3
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope: RopeSpec
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    model_id: str

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each LoRA-targetable projection."""
        h, i = self.hidden_size, self.intermediate_size
        return {"q_proj": (h, self.q_size), "k_proj": (h, self.kv_size), "v_proj": (h, self.kv_size),
                "o_proj": (self.q_size, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def _rope_spec(cfg: dict, path: Path) -> RopeSpec:
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if rope_type not in ("default", "linear", "llama3"):
        raise ModelLoadError(f"{path}: rope type {rope_type!r} is not supported (supported: default, linear, llama3)")
    return RopeSpec(
        theta=theta, rope_type=rope_type, factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(merged.get("original_max_position_embeddings", 8192)))


def _model_id(path: Path, cfg: dict) -> str:
    meta = path / "openlora_tiny.json"
    if meta.is_file():
        return safe_loads(meta.read_bytes(), max_bytes=MAX_CONFIG_BYTES)["base_model_id"]
    return cfg.get("_name_or_path") or path.name


def read_model_spec(path: Path) -> ModelSpec:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"{path}: no config.json; expected an HF model directory")
    try:
        cfg = safe_loads(cfg_path.read_bytes(), max_bytes=MAX_CONFIG_BYTES)
    except ValueError as e:
        raise ModelLoadError(f"{cfg_path}: not valid JSON: {e}") from None
    archs = cfg.get("architectures") or []
    arch = next((SUPPORTED[a] for a in archs if a in SUPPORTED), None)
    if arch is None:
        raise ModelLoadError(f"{path}: architecture {archs or cfg.get('model_type')!r} is not supported; "
                             f"supported: {', '.join(SUPPORTED)}")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ModelLoadError(f"{path}: hidden_act {act!r} is not supported (only silu)")
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        window = cfg.get("sliding_window")
        if arch in ("qwen2", "qwen3") and not cfg.get("use_sliding_window", False):
            window = None
        return ModelSpec(
            arch=arch, hidden_size=hidden, intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads), vocab_size=int(cfg["vocab_size"]),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope=_rope_spec(cfg, path),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", False)) or arch == "qwen2",
            o_bias=bool(cfg.get("attention_bias", False)) and arch != "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)), qk_norm=arch == "qwen3",
            sliding_window=int(window) if window else None,
            bos_token_id=cfg.get("bos_token_id"), eos_token_ids=eos_ids, model_id=_model_id(path, cfg))
    except KeyError as e:
        raise ModelLoadError(f"{cfg_path}: missing key {e.args[0]!r}") from None


def expected_weights(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor name the model needs, with its shape."""
    h, v = spec.hidden_size, spec.vocab_size
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not spec.tie_word_embeddings:
        out["lm_head.weight"] = (v, h)
    shapes = spec.module_shapes()
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            fin, fout = shapes[m]
            out[p + f"self_attn.{m}.weight"] = (fout, fin)
            if (m != "o_proj" and spec.qkv_bias) or (m == "o_proj" and spec.o_bias):
                out[p + f"self_attn.{m}.bias"] = (fout,)
        if spec.qk_norm:
            out[p + "self_attn.q_norm.weight"] = (spec.head_dim,)
            out[p + "self_attn.k_norm.weight"] = (spec.head_dim,)
        for m in ("gate_proj", "up_proj", "down_proj"):
            fin, fout = shapes[m]
            out[p + f"mlp.{m}.weight"] = (fout, fin)
            if spec.mlp_bias:
                out[p + f"mlp.{m}.bias"] = (fout,)
    return out


def load_weights(path: Path, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Load and check every expected tensor from model.safetensors or a sharded index."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = safe_loads(index.read_bytes(), max_bytes=MAX_INDEX_BYTES).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        found = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found {', '.join(found)}: pickled checkpoints are never loaded)" if found else ""
        raise ModelLoadError(f"{path}: no model.safetensors or model.safetensors.index.json{hint}")
    want = expected_weights(spec)
    tensors: dict[str, torch.Tensor] = {}
    for fname in files:
        try:
            with safe_open(str(path / fname), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if name in want:
                        tensors[name] = f.get_tensor(name)
        except (OSError, Exception) as e:  # safetensors raises its own error types for corrupt files
            if isinstance(e, ModelLoadError):
                raise
            raise ModelLoadError(f"{path / fname}: cannot read safetensors: {e}") from None
    missing = [n for n in want if n not in tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelLoadError(f"{path}: weights missing for the config ({spec.arch}): {', '.join(missing[:3])}{more}")
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape:
            raise ModelLoadError(f"{path}: weight {name} has shape {tuple(tensors[name].shape)}, "
                                 f"the config implies {shape}")
    return {n: t.to(device=device, dtype=dtype) for n, t in tensors.items()}


def rope_inv_freq(spec: ModelSpec) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] in float32, with the config's scaling applied (as HF computes them)."""
    r = spec.rope
    d = spec.head_dim
    inv = 1.0 / (r.theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    if r.rope_type == "linear":
        return inv / r.factor
    if r.rope_type == "llama3":
        old = r.original_max_position_embeddings
        low_wavelen = old / r.low_freq_factor
        high_wavelen = old / r.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / r.factor, inv)
        smooth = (old / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor)
        smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv
