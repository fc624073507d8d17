"""Tiny random Llama-family checkpoints and PEFT adapters, generated locally with fixed seeds.

What it does: writes ordinary HF model directories (config.json, model.safetensors, a fast tokenizer that works
offline) for the architectures the engine serves (llama, llama3 rope scaling, mistral, qwen2, qwen3), and
ordinary PEFT adapter directories (adapter_config.json + adapter_model.safetensors) for them. The same seed gives
byte-identical weights. Tests and the demo use these; the engine's loading code reads them like any HF/PEFT dir.
What it does not do: download anything. Nothing here is needed to serve a real model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ARCHS = ("llama", "llama3", "mistral", "qwen2", "qwen3")

# A small fixed corpus for the tokenizer: a byte-level BPE trained on it is deterministic and covers any text.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Low-rank adapters let one base model serve many fine-tuned tasks at once.",
    "A contract settles receipts in batches and pays each contributor by pull.",
    "Hello world! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    "Legal: the party of the first part agrees to the terms herein.",
    "Medical: the patient presented with a mild fever and a cough.",
    "Finance: revenue grew twelve percent year over year.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "openlora node adapter datanet receipt attribution gossip block cache",
]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    arch: str = "llama"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vocab_size: int = 384
    max_position_embeddings: int = 1024
    seed: int = 0
    # Larger than HF's 0.02 so that random logits are peaked: greedy decoding then has no near-ties that a
    # different (but exact to 1e-6) summation order could flip.
    initializer_range: float = 0.25

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r}: allowed are {', '.join(ARCHS)}")


def build_tokenizer(out_dir: Path, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def _hf_config(spec: TinySpec, vocab_size: int, bos: int, eos: int):
    import transformers as tf

    common = dict(
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, vocab_size=vocab_size,
        max_position_embeddings=spec.max_position_embeddings, initializer_range=spec.initializer_range,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos,
    )
    if spec.arch == "llama":
        return tf.LlamaConfig(rope_theta=10000.0, **common)
    if spec.arch == "llama3":
        return tf.LlamaConfig(rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256}, **common)
    if spec.arch == "mistral":
        return tf.MistralConfig(rope_theta=10000.0, sliding_window=None, **common)
    if spec.arch == "qwen2":
        return tf.Qwen2Config(rope_theta=10000.0, use_sliding_window=False, **common)
    if spec.arch == "qwen3":
        return tf.Qwen3Config(rope_theta=10000.0, head_dim=spec.hidden_size // spec.num_heads * 2,
                              use_sliding_window=False, attention_bias=False, **common)
    raise AssertionError(spec.arch)  # unreachable: TinySpec validates arch


def build_tiny_model(out_dir: Path | str, spec: TinySpec | None = None) -> Path:
    """Write a tiny random HF checkpoint to `out_dir` (created) and return the path. Deterministic in `spec`."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = spec or TinySpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, spec.vocab_size)
    vocab = max(spec.vocab_size, len(tok))
    cfg = _hf_config(spec, vocab, tok.bos_token_id, tok.eos_token_id)
    cfg.name_or_path = f"openlora/tiny-{spec.arch}-s{spec.seed}"
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        # Norm weights are ones by default; perturb them so that a runner ignoring a norm is caught.
        gen = torch.Generator().manual_seed(spec.seed + 1)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out, safe_serialization=True)
    meta = {"generator": "devnet.tinymodels", "spec": spec.__dict__, "base_model_id": cfg.name_or_path}
    (out / "openlora_tiny.json").write_text(json.dumps(meta, indent=2))
    return out


ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build_tiny_adapter(out_dir: Path | str, base_dir: Path | str, *, rank: int = 8, alpha: float = 16.0,
                       targets: tuple[str, ...] = ("q_proj", "v_proj"), use_rslora: bool = False,
                       seed: int = 0, scale: float = 0.5) -> Path:
    """Write a PEFT LoRA adapter for the model in `base_dir`, with random (non-zero) A and B. Deterministic."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), use_rslora=use_rslora,
                     lora_dropout=0.0, bias="none", init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(scale * torch.randn(p.shape, generator=gen) / max(1, p.shape[-1]) ** 0.5)
    peft_model.save_pretrained(out, safe_serialization=True)
    # Name the base by its model id rather than a local path, as published adapters do.
    cfg_path = out / "adapter_config.json"
    acfg = json.loads(cfg_path.read_text())
    meta = Path(base_dir) / "openlora_tiny.json"
    acfg["base_model_name_or_path"] = (json.loads(meta.read_text())["base_model_id"] if meta.is_file()
                                       else str(base_dir))
    cfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True))
    return out


def write_lora_files(out_dir: Path | str, base_dir: Path | str, *, rank: int = 8, alpha: float = 16.0,
                     targets: tuple[str, ...] = ("q_proj", "v_proj"), seed: int = 0, scale: float = 0.5) -> Path:
    """Write a LoRA adapter in PEFT's on-disk format directly (no PEFT model built): fast enough for thousands.

    Same file layout and tensor names as `build_tiny_adapter` (tests check PEFT loads these files).
    """
    import torch
    from safetensors.torch import save_file

    base_cfg = json.loads((Path(base_dir) / "config.json").read_text())
    h, inter = base_cfg["hidden_size"], base_cfg["intermediate_size"]
    heads, kv = base_cfg["num_attention_heads"], base_cfg.get("num_key_value_heads") or base_cfg["num_attention_heads"]
    hd = base_cfg.get("head_dim") or h // heads
    shapes = {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    gen = torch.Generator().manual_seed(20_000 + seed)
    tensors = {}
    for layer in range(base_cfg["num_hidden_layers"]):
        for m in targets:
            parent = "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            fin, fout = shapes[m]
            key = f"base_model.model.model.layers.{layer}.{parent}.{m}"
            tensors[f"{key}.lora_A.weight"] = scale * torch.randn(rank, fin, generator=gen) / fin ** 0.5
            tensors[f"{key}.lora_B.weight"] = scale * torch.randn(fout, rank, generator=gen) / rank ** 0.5
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    meta = Path(base_dir) / "openlora_tiny.json"
    base_id = json.loads(meta.read_text())["base_model_id"] if meta.is_file() else str(base_dir)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
           "target_modules": sorted(targets), "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
           "base_model_name_or_path": base_id, "inference_mode": True}
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out
