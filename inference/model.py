"""The Llama-family decoder written for serving: flat token batches, paged KV cache, batched multi-LoRA.

What it does: one forward over the tokens of every scheduled sequence at once (prefill chunks and decode tokens
mixed), reading/writing K/V through block tables, adding each token's own adapter through `LoRALinear`; returns
logits only for the positions that are sampled. Supports Llama 2/3, Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm).
What it does not do: schedule, sample, or know about requests (see scheduler.py, sampler.py, runner.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from openlora.inference.lora import (FUSED_LINEARS, LoRABatch, LoRALinear, LoRAPool, can_pack_cpu, cpu_has_bf16_dot,
                                     pack_cpu_weight, packed_linear)
from openlora.inference.model_config import ModelSpec, rope_inv_freq
from openlora.inference.sizing import host_available_bytes

log = logging.getLogger(__name__)


@dataclass
class AttentionBatch:
    """Per-step attention metadata (see kernels/reference.py `paged_attention`)."""
    positions: torch.Tensor        # [T] int64
    slot_mapping: torch.Tensor     # [T] int64, cache slot of each new token
    cu_q_lens: torch.Tensor        # [B + 1] int32
    seq_lens: torch.Tensor         # [B] int32, context length after this step
    block_tables: torch.Tensor     # [B, max_blocks] int32
    decode: bool                   # every sequence has exactly one new token


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As HF's LlamaRMSNorm: normalise in float32, cast back, then scale."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Layer:
    def __init__(self, i: int, spec: ModelSpec, w: dict[str, torch.Tensor]):
        p = f"model.layers.{i}."
        self.i = i
        self.ln1 = w[p + "input_layernorm.weight"]
        self.ln2 = w[p + "post_attention_layernorm.weight"]
        self.q_norm = w.get(p + "self_attn.q_norm.weight")
        self.k_norm = w.get(p + "self_attn.k_norm.weight")
        self.linears: dict[str, LoRALinear] = {}
        for fused, modules in FUSED_LINEARS.items():
            parent = "self_attn" if fused in ("qkv", "o") else "mlp"
            weights = [w.pop(p + f"{parent}.{m}.weight") for m in modules]
            biases = [w.pop(p + f"{parent}.{m}.bias", None) for m in modules]
            weight = torch.cat(weights, 0) if len(weights) > 1 else weights[0]
            bias = None
            if any(b is not None for b in biases):
                bias = torch.cat([b if b is not None else torch.zeros(wt.shape[0], dtype=wt.dtype, device=wt.device)
                                  for b, wt in zip(biases, weights)])
            self.linears[fused] = LoRALinear(weight.contiguous(), bias, i, fused,
                                             tuple(wt.shape[0] for wt in weights))


class LlamaServingModel:
    def __init__(self, spec: ModelSpec, weights: dict[str, torch.Tensor], dtype: torch.dtype,
                 device: torch.device, backend, lora_sliced: bool = True):
        self.spec, self.dtype, self.device, self.backend = spec, dtype, device, backend
        w = dict(weights)
        self.embed = w.pop("model.embed_tokens.weight")
        self.norm = w.pop("model.norm.weight")
        self.lm_head = self.embed if spec.tie_word_embeddings else w.pop("lm_head.weight")
        self.layers = [Layer(i, spec, w) for i in range(spec.num_layers)]
        for layer in self.layers:
            for linear in layer.linears.values():
                linear.sliced = lora_sliced
        self.inv_freq = rope_inv_freq(spec).to(device)
        self.scale = spec.head_dim ** -0.5
        # CPU float32 under the native backend: every linear (and the LM head) in oneDNN's packed layout. A tied
        # LM head keeps the dense embedding for lookups, so it costs one more vocab x hidden copy. bfloat16 on a CPU
        # without bfloat16 dot products: the same, packed as float32 (`LoRALinear.pack_for_cpu`); the rest of the
        # forward (activations, KV cache, LoRA pool) stays bfloat16 in value: under the native backend the activations
        # between GEMMs are float32 tensors holding bfloat16 values (`carry_bf16`, see forward), else bfloat16 tensors.
        self.lm_head_packed = None
        self.carry_bf16 = True
        self.bf16_upcast = (dtype == torch.bfloat16 and device.type == "cpu" and backend.pack_cpu_linears
                            and not cpu_has_bf16_dot() and self._float32_copies_fit())
        if backend.pack_cpu_linears and can_pack_cpu(self.lm_head, self.bf16_upcast):
            for layer in self.layers:
                for linear in layer.linears.values():
                    linear.pack_for_cpu(self.bf16_upcast)
            self.lm_head_packed = pack_cpu_weight(self.lm_head.float())
            if self.lm_head is not self.embed:
                self.lm_head = None
        else:
            self.bf16_upcast = False

    def _float32_copies_fit(self) -> bool:
        """Whether float32 copies of the bf16 linears (and LM head) fit in half of the host memory available now; if
        not, the bf16 GEMMs stay (slow on this CPU, but an operator who chose bf16 to fit memory keeps that)."""
        numel = self.lm_head.numel() + sum(lin.weight.numel() for layer in self.layers
                                           for lin in layer.linears.values())
        need, avail = 4 * numel, host_available_bytes()
        if need <= avail // 2:
            return True
        log.warning(f"bfloat16 linears stay bfloat16 (emulated on this CPU, ~10x slower than float32): float32 "
                    f"copies would need {need / 2**30:.1f} GiB of the {avail / 2**30:.1f} GiB available")
        return False

    @property
    def linear_kernels(self) -> str:
        """What runs the base linears, for the start log and benchmarks."""
        if self.lm_head_packed is None:
            return f"torch F.linear in {str(self.dtype).removeprefix('torch.')}"
        if self.bf16_upcast:
            carried = ("; the activations between GEMMs are float32 tensors holding bfloat16 values, rounded by the "
                       "fused native ops" if self._carries_bf16(self.backend) else "")
            return ("oneDNN pre-packed float32 GEMMs over bfloat16 weights upcast once at load (this CPU has no "
                    f"bfloat16 dot-product instructions; outputs rounded to bfloat16{carried})")
        return "oneDNN pre-packed float32 GEMMs"

    def _carries_bf16(self, be) -> bool:
        """Whether the forward keeps bfloat16 activations in float32 tensors between the float32 GEMMs (upcast bf16
        linears, the native fused ops present; a q/k-norm model keeps bfloat16 tensors)."""
        return bool(self.carry_bf16 and self.bf16_upcast and be.fused is not None and self.layers[0].q_norm is None)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]         # [T, D/2] float32, as HF
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype)[:, None, :], emb.sin().to(self.dtype)[:, None, :]

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attn: AttentionBatch, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                lora: LoRABatch | None, pool: LoRAPool | None, logits_indices: torch.Tensor) -> torch.Tensor:
        """input_ids [T] -> logits [len(logits_indices), vocab] in float32."""
        spec, be = self.spec, self.backend
        T = input_ids.shape[0]
        H, Hkv, D = spec.num_heads, spec.num_kv_heads, spec.head_dim
        eps = spec.rms_norm_eps
        h = F.embedding(input_ids, self.embed)        # the residual stream: a fresh tensor, updated in place
        # bf16 carried in float32 (upcast bf16 linears under the native backend): the activations between the
        # float32 GEMMs stay float32 tensors holding bfloat16 values, rounded by the fused native ops where HF's bf16
        # forward rounds, so no conversion copy runs around each GEMM
        carry = self._carries_bf16(be) and h.dtype == torch.bfloat16
        if carry:
            h = h.float()
        fz = be.fused if be.fused is not None and h.dtype == torch.float32 else None

        def add_norm(delta: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
            """h += delta; the RMS norm of h (one fused pass under the native backend)."""
            if fz is not None:
                return fz.add_rms_norm(h, delta, weight, eps, round_bf16=carry)
            if delta is not None:
                h.add_(delta)
            return rms_norm(h, weight, eps)

        cos, sin = self._rope(attn.positions)
        if carry:
            cos, sin = cos.float(), sin.float()          # bf16 values, as HF multiplies by them
        delta = None
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches):
            x = add_norm(delta, layer.ln1)
            qkv = layer.linears["qkv"](x, lora, pool, be, carry)
            q = qkv[:, :spec.q_size].view(T, H, D)
            k = qkv[:, spec.q_size:spec.q_size + spec.kv_size].view(T, Hkv, D)
            v = qkv[:, spec.q_size + spec.kv_size:].view(T, Hkv, D)
            if layer.q_norm is not None:
                q = rms_norm(q, layer.q_norm, eps)
                k = rms_norm(k, layer.k_norm, eps)
            if fz is not None and layer.q_norm is None:
                fz.rope_(qkv, H + Hkv, D, cos, sin, carry)   # q and k heads are the first H + Hkv of each row
            else:
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
            be.store_kv(k, v, k_cache, v_cache, attn.slot_mapping)
            if attn.decode:
                o = torch.empty_like(q)
                be.paged_attention_decode(q, k_cache, v_cache, attn.block_tables, attn.seq_lens, self.scale, o)
            else:
                o = be.paged_attention(q, k_cache, v_cache, attn.cu_q_lens, attn.seq_lens, attn.block_tables,
                                       self.scale)
            o = o.reshape(T, H * D)
            if carry:
                fz.round_bf16_(o)                             # computed in float32, rounded as HF's bf16 output
            x = add_norm(layer.linears["o"](o, lora, pool, be, carry), layer.ln2)
            gu = layer.linears["gate_up"](x, lora, pool, be, carry)
            if fz is not None:
                act = fz.silu_mul(gu, carry)
            else:
                act = F.silu(gu[:, :spec.intermediate_size]) * gu[:, spec.intermediate_size:]
            delta = layer.linears["down"](act, lora, pool, be, carry)
        if delta is not None:
            h.add_(delta)
        h = h[logits_indices]
        if carry:
            h = h.to(self.dtype)                              # the last residual add, rounded as in bf16
        h = rms_norm(h, self.norm, spec.rms_norm_eps)
        if self.lm_head_packed is not None:
            logits = packed_linear(h.float(), self.lm_head_packed)
            if self.dtype == torch.float32:
                return logits
            return fz.round_bf16_(logits) if carry else logits.to(self.dtype).float()        # rounded as HF
        return F.linear(h, self.lm_head).float()
